# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The fast default inference path gives the plain path's outputs; the benchmark runs (smoke test, no timings).

The plain path is MONAI ``SliceInferer`` on the eager network in eval mode. The fast path
(:class:`~axunet_bundle.inferers.BrainSliceInferer`) must give, on every slice that holds brain, the same logits
within ``TOLERANCE`` (relative to the largest plain logit; ONNX Runtime and folded BatchNorm round differently from
eager torch) and therefore the same thresholded masks wherever the plain logit is not within that tolerance of the
threshold; every all-zero (no-brain) slice gets the constant background logit, i.e. an empty segmentation.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_ROI
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import Compose

from axunet_bundle import AXUNet
from axunet_bundle.comparison.networks import NETWORKS
from axunet_bundle.data.cases import find_cases
from axunet_bundle.inferers import BrainSliceInferer, autocast_dtype, backends, brain_slice_mask, prepare_network
from axunet_bundle.inferers.backends import fuse_batchnorm, weights_fingerprint
from axunet_bundle.inferers.slices import DEFAULT_BACKGROUND_LOGIT, GUARD_MIN_DICE, label_agreement
from axunet_bundle.networks import ChannelAttention, PositionAttention
from scripts.benchmark import BEGIN_MARKER, END_MARKER, BenchmarkSettings, run_benchmark, write_markdown

#: fast logits must match plain ones within this fraction of the largest plain logit
TOLERANCE = 1e-3
#: the opt-in bfloat16 precision: logits within this fraction of the largest float32 logit
BF16_TOLERANCE = 0.05
SIZE = 64
DEPTH = 6
EMPTY_SLICE = 2
BACKENDS = ["eager", "torch", "onnxruntime", "auto"]
has_onnxruntime = importlib.util.find_spec("onnxruntime") is not None
#: the backend each ``backend=`` setting runs on this machine (CPU)
EXPECTED_BACKEND = {"eager": "eager", "torch": "torch", "onnxruntime": "onnxruntime", "auto": "onnxruntime"}
if not has_onnxruntime:
    EXPECTED_BACKEND.update(onnxruntime="torch", auto="torch")


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and attention gammas, so folding BN and the attention paths both matter."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
        if isinstance(module, (PositionAttention, ChannelAttention)):
            module.gamma.data.fill_(0.5)
    return net


@pytest.fixture(scope="module")
def net() -> AXUNet:
    torch.manual_seed(0)
    return randomise(AXUNet().eval())


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def volume() -> MetaTensor:
    """(1, 3, 64, 64, 6) with exactly-zero background around a 'brain' and one all-zero slice."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, SIZE, SIZE, DEPTH, generator=generator)
    x[:, :, :8] = 0  # background margin inside brain slices: these are run, not skipped
    x[..., EMPTY_SLICE] = 0
    affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    return MetaTensor(x, affine=affine)


def plain(net: torch.nn.Module, volume: torch.Tensor, roi=(SIZE, SIZE)) -> torch.Tensor:
    with torch.no_grad():
        return SliceInferer(roi_size=list(roi), spatial_dim=2, sw_batch_size=4)(volume, net)


def assert_same_segmentation(fast: torch.Tensor, reference: torch.Tensor, brain: list[int]) -> None:
    scale = float(reference.abs().max())
    tolerance = TOLERANCE * scale
    difference = (fast[..., brain] - reference[..., brain]).abs().max().item()
    assert difference <= tolerance, f"logits differ by {difference:.3g} > {tolerance:.3g}"
    decided = reference[..., brain].abs() > tolerance
    assert torch.equal((fast[..., brain] > 0)[decided], (reference[..., brain] > 0)[decided])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_path_equals_plain_path(net, volume, onnx_cache, backend, caplog):
    inferer = BrainSliceInferer(
        roi_size=(SIZE, SIZE), sw_batch_size=2, backend=backend, precision="float32", cache_dir=onnx_cache
    )
    with caplog.at_level(logging.INFO, logger="axunet_bundle.inferers"):
        fast = inferer(volume, net)
    assert inferer.active_backend == EXPECTED_BACKEND[backend]
    # the log says which backend ran, at which precision, and why; a prepared one was checked against the plain one
    assert f"inference backend: {EXPECTED_BACKEND[backend]}, float32 on cpu (backend '{backend}')" in caplog.text
    if backend != "eager":
        assert f"inference backend {EXPECTED_BACKEND[backend]} matches the plain network" in caplog.text
    reference = plain(net, volume)
    assert fast.shape == reference.shape == (1, 3, SIZE, SIZE, DEPTH)
    brain = [d for d in range(DEPTH) if d != EMPTY_SLICE]
    assert_same_segmentation(fast, reference, brain)
    # the skipped slice: the background logit everywhere, so an empty segmentation
    assert torch.all(fast[..., EMPTY_SLICE] == DEFAULT_BACKGROUND_LOGIT)
    assert not (torch.sigmoid(fast[..., EMPTY_SLICE]) > 0.5).any()
    # a MetaTensor in gives a MetaTensor out with the input's metadata, like SliceInferer
    assert isinstance(fast, MetaTensor) and torch.equal(fast.affine, volume.affine)
    # the output is an ordinary tensor: in-place post-processing works outside inference mode
    fast += 1


def test_second_call_reuses_prepared_network_and_new_weights_are_picked_up(volume, onnx_cache):
    torch.manual_seed(3)
    model = randomise(AXUNet().eval(), seed=3)
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE), backend="torch", precision="float32")  # same for every backend
    first = inferer(volume, model)
    predictor = inferer._predictor
    assert torch.equal(inferer(volume, model), first)
    assert inferer._predictor is predictor  # prepared once
    # as CheckpointLoader does: load other weights into the same module
    torch.manual_seed(4)
    other = randomise(AXUNet().eval(), seed=4)
    model.load_state_dict(other.state_dict())
    again = inferer(volume, model)
    assert inferer._predictor is not predictor
    brain = [d for d in range(DEPTH) if d != EMPTY_SLICE]
    assert_same_segmentation(again, plain(other, volume), brain)


@pytest.mark.skipif(autocast_dtype("cpu", "bfloat16") is None, reason="this CPU has no native bfloat16")
def test_opt_in_bfloat16_stays_close_to_float32(net, volume):
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE), precision="bfloat16")
    fast = inferer(volume, net)
    assert inferer.active_backend == "torch"  # the ONNX export is float32
    reference = plain(net, volume)
    brain = [d for d in range(DEPTH) if d != EMPTY_SLICE]
    difference = (fast[..., brain] - reference[..., brain]).abs().max()
    assert difference <= BF16_TOLERANCE * reference.abs().max()
    assert torch.all(fast[..., EMPTY_SLICE] == DEFAULT_BACKGROUND_LOGIT)


def test_rejects_unknown_settings():
    with pytest.raises(ValueError, match="precision"):
        BrainSliceInferer(precision="float16")
    with pytest.raises(ValueError, match="backend"):
        BrainSliceInferer(backend="tensorrt")


def test_tiles_slices_larger_than_the_roi_like_slice_inferer(net, onnx_cache):
    x = torch.randn(1, 3, 80, 72, 3)
    fast = BrainSliceInferer(roi_size=(SIZE, SIZE), precision="float32", cache_dir=onnx_cache)(x, net)
    reference = plain(net, x, roi=(SIZE, SIZE))
    assert_same_segmentation(fast, reference, [0, 1, 2])


def test_no_brain_at_all_gives_background(net):
    out = BrainSliceInferer(roi_size=(SIZE, SIZE), backend="eager")(torch.zeros(2, 3, SIZE, SIZE, 3), net)
    assert out.shape == (2, 3, SIZE, SIZE, 3)
    assert torch.all(out == DEFAULT_BACKGROUND_LOGIT)


def test_training_mode_network_runs_as_given(volume):
    model = AXUNet().train()
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE))
    inferer(volume, model)
    assert inferer.active_backend == "eager" and model.training


def test_failing_backend_falls_back(net, volume, monkeypatch, caplog):
    import axunet_bundle.inferers.slices as inference

    def broken(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(inference, "build_onnx_network", broken)
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE), backend="onnxruntime", precision="float32")
    with caplog.at_level(logging.INFO):
        fast = inferer(volume, net)
    assert inferer.active_backend == "torch"
    assert "falling back" in caplog.text
    assert "inference backend: torch, float32 on cpu (backend 'onnxruntime')" in caplog.text
    assert_same_segmentation(fast, plain(net, volume), [0, 1, 3, 4, 5])


def test_wrong_prepared_network_is_caught_by_the_preparation_check(net, volume, monkeypatch, caplog):
    import axunet_bundle.inferers.slices as inference

    def wrong(network, **kwargs):
        prepared = prepare_network(network, **kwargs)
        prepared.head[-1].conv.bias.data += 1.0  # a preparation bug: outputs shifted
        return prepared

    monkeypatch.setattr(inference, "prepare_network", wrong)
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE), backend="torch", precision="float32")
    with caplog.at_level(logging.WARNING):
        fast = inferer(volume, net)
    assert inferer.active_backend == "eager"
    assert "differs from the plain network" in caplog.text
    assert_same_segmentation(fast, plain(net, volume), [0, 1, 3, 4, 5])


def test_prepare_network_folds_every_batchnorm_and_leaves_the_original_alone(net):
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepared = prepare_network(net, torch.zeros(1, 3, SIZE, SIZE))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == batchnorms
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = net(x)
        out = prepared(x.contiguous(memory_format=torch.channels_last))
    assert (out - reference).abs().max() <= TOLERANCE * reference.abs().max()


def test_fuse_batchnorm_skips_training_mode_layers():
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    example = torch.zeros(1, 3, 8, 8)
    assert fuse_batchnorm(block, example) == 0
    assert block.training and int(block[1].num_batches_tracked) == 0  # the search ran in eval mode
    assert fuse_batchnorm(block.eval(), example) == 1 and isinstance(block[1], torch.nn.Identity)


class _ConvReadTwice(torch.nn.Module):
    """A convolution whose output a BN and another module both read: folding the BN would change the other's input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.other = torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + self.other(y)


def test_fuse_batchnorm_leaves_a_convolution_whose_output_is_also_read_elsewhere():
    block = _ConvReadTwice().eval()
    assert fuse_batchnorm(block, torch.zeros(1, 3, 4, 4)) == 0 and isinstance(block.bn, torch.nn.BatchNorm2d)


def test_weights_fingerprint_follows_weights(net):
    other = AXUNet().eval()
    assert weights_fingerprint(net) == weights_fingerprint(net)
    assert weights_fingerprint(net) != weights_fingerprint(other)
    assert weights_fingerprint(net, extra=(64,)) != weights_fingerprint(net, extra=(96,))


def test_brain_slice_mask():
    x = torch.zeros(2, 3, 4, 4, 5)
    x[0, 1, 2, 2, 3] = -0.5
    x[1, 0, 0, 0, 0] = 1.0
    mask = brain_slice_mask(x)
    assert mask.tolist() == [[False, False, False, True, False], [True, False, False, False, False]]
    assert brain_slice_mask(x, spatial_dim=0).shape == (2, 4)


def test_bundle_chain_keeps_no_brain_slices_exactly_zero(tiny_dataset, tmp_path, net, onnx_cache):
    """After the bundle's volume_transforms an empty slice is all zero, so the inferer skips exactly it."""
    case = find_cases(tiny_dataset)[0]
    folder = tmp_path / case.case_id
    shutil.copytree(case.directory, folder)
    modified = find_cases(tmp_path)[0]
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser.update({"roi_size": TINY_ROI})
    modalities = parser.get_parsed_content("modalities")
    files = modified.image_files(modalities)
    # an axial slice inside the brain's extent without brain (e.g. a gap): zero it in every modality
    data0 = nib.load(files[0])
    depth = data0.shape[2]
    brain = [z for z in range(depth) if np.asarray(data0.dataobj[:, :, z]).any()]
    gap = brain[len(brain) // 2]
    for file in files:
        image = nib.load(file)
        array = np.asarray(image.dataobj).copy()
        array[:, :, gap] = 0
        nib.save(nib.Nifti1Image(array, image.affine, image.header), file)
    chain = Compose(parser.get_parsed_content("volume_transforms"))
    image = chain({"image": files})["image"][None]
    mask = brain_slice_mask(image)[0]
    empty = (~mask).nonzero().flatten().tolist()
    assert len(empty) == 1  # only the gap: the crop removed the rest
    assert float(image[..., empty[0]].abs().max()) == 0.0
    fast = BrainSliceInferer(roi_size=TINY_ROI, precision="float32", cache_dir=onnx_cache)(image, net)
    assert torch.all(fast[..., empty[0]] == DEFAULT_BACKGROUND_LOGIT)
    kept = [d for d in range(image.shape[-1]) if d != empty[0]]
    assert_same_segmentation(fast, plain(net, image, roi=TINY_ROI), kept)


def test_write_markdown_keeps_text_outside_the_markers(tmp_path):
    path = tmp_path / "b.md"
    write_markdown(path, "first\n")
    text = path.read_text()
    assert text.startswith("# Benchmarks") and "first" in text
    path.write_text(text + "\nHand-written notes.\n")
    write_markdown(path, "second\n")
    text = path.read_text()
    assert "second" in text and "first" not in text and "Hand-written notes." in text
    assert text.count(BEGIN_MARKER) == text.count(END_MARKER) == 1


def test_benchmark_quick_smoke(tmp_path, capfd):
    """Tiny sizes, every measurement once; checks the table's rows, never the numbers."""
    output = tmp_path / "benchmarks.md"
    settings = BenchmarkSettings.quick(networks=True)
    text = run_benchmark(settings, output=output, command="benchmark --quick", workdir=tmp_path)
    log = capfd.readouterr().err
    for model in ("axunet", "segresnet"):  # progress of the timed cases, one line each off a terminal
        assert re.search(rf"\[benchmark\] {model} cases: {settings.cases}/{settings.cases} case .*ETA", log), log
    assert output.read_text().count(BEGIN_MARKER) == 1
    # the CPU model and the path AXUNet's default takes on it, printed as the run starts
    assert re.search(
        r"\[benchmark\] CPU: .+, \d+ logical cores, (no )?native bfloat16: AXUNet's default runs", log
    ), log
    for expected in (
        "benchmark --quick",
        "- CPU:",
        "- threads:",
        "torch ",
        "- device: cpu",
        "| whole case 64×64×16",
        "AXUNet ÷ SegResNet",
        "| … inference (s)",
        "| model GFLOP per case",
        "| achieved GFLOP/s during inference",
        "| achieved ÷ matmul FLOP/s",
        "| peak resident memory",
        "| AXUNet training slices/s (forward + backward, batch 2)",
        "| data loader slices/s",
        "loader ÷ training",
        "| PAM softplus 8²",
        "| PAM softplus 32²",
        "| PAM softmax 32²",
        "| network | parameters (M) | GFLOP per 64×64 slice",
        *(f"| {name} | " for name in NETWORKS),
    ):
        assert expected in text, expected


def test_label_agreement_is_dice_per_channel():
    low, full = torch.full((2, 3, 4, 4), -1.0), torch.full((2, 3, 4, 4), -1.0)
    low[:, 1, :2], full[:, 1, :1] = 1.0, 1.0  # channel 1: 16 and 8 positive pixels, 8 shared
    full[0, 2, 0, 0] = 1.0  # channel 2: empty against one pixel
    assert label_agreement(low, full) == [1.0, pytest.approx(2 * 8 / 24), 0.0]


@pytest.fixture
def native_bf16(monkeypatch):
    """bf16 autocast as on a CPU with native bf16 (autocast runs on any CPU, more slowly without it)."""
    monkeypatch.setattr(backends, "_cpu_bf16_supported", lambda: True)


def test_auto_precision_keeps_bfloat16_where_its_labels_agree(native_bf16, net, volume, caplog):
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE))
    with caplog.at_level(logging.INFO, logger="axunet_bundle.inferers"):
        fast = inferer(volume, net)
    assert (inferer.active_backend, inferer.active_dtype) == ("torch", torch.bfloat16)
    assert "inference backend: torch, bfloat16 autocast on cpu" in caplog.text
    agreement = re.search(
        r"bfloat16 labels agree with float32 on 2 check slices \(Dice per channel (.*)\)", caplog.text
    )
    assert agreement and min(float(d) for d in agreement.group(1).split(", ")) >= GUARD_MIN_DICE
    reference = plain(net, volume)
    brain = [d for d in range(DEPTH) if d != EMPTY_SLICE]
    assert (fast[..., brain] - reference[..., brain]).abs().max() <= BF16_TOLERANCE * reference.abs().max()


def test_auto_precision_runs_float32_where_bfloat16_labels_differ(native_bf16, net, volume, monkeypatch, caplog):
    import axunet_bundle.inferers.slices as inference

    monkeypatch.setattr(inference, "GUARD_MIN_DICE", 1.5)  # no agreement is enough: the guard must refuse bf16
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE))
    with caplog.at_level(logging.INFO, logger="axunet_bundle.inferers"):
        fast = inferer(volume, net)
    assert inferer.active_dtype is None
    assert "bfloat16 labels differ from float32 on 2 check slices" in caplog.text and "running float32" in caplog.text
    assert_same_segmentation(fast, plain(net, volume), [d for d in range(DEPTH) if d != EMPTY_SLICE])


class CoarseOutput(torch.nn.Module):
    """conv -> BN, then ``+ 1000 - 1000``: in bf16 (steps of 4-8 near 1000) the outputs of the folded and the plain
    conv -> BN, a few bf16 units apart, end up a whole step apart; in float32 the two agree."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.bn = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3)
        randomise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) * 40 + 1000 - 1000


def test_bfloat16_rounding_does_not_make_the_preparation_check_refuse_the_fast_network(native_bf16, volume, caplog):
    net = CoarseOutput().eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # what a bf16 check would compare
        x = volume[..., 0].as_tensor()
        bf16_gap = (prepare_network(net, example=x)(x).float() - net(x).float()).abs().max()
    assert bf16_gap >= 4  # a whole bf16 step near 1000, far over the check's tolerance
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE), backend="torch", precision="bfloat16")
    with caplog.at_level(logging.INFO, logger="axunet_bundle.inferers"):
        inferer(volume, net)
    assert (inferer.active_backend, inferer.active_dtype) == ("torch", torch.bfloat16)
    assert "inference backend torch matches the plain network (float32" in caplog.text


def test_auto_precision_is_float32_on_cpus_without_native_bfloat16(net, volume, onnx_cache, monkeypatch):
    monkeypatch.setattr(backends, "_cpu_bf16_supported", lambda: False)
    inferer = BrainSliceInferer(roi_size=(SIZE, SIZE), cache_dir=onnx_cache)
    inferer(volume, net)
    assert (inferer.active_backend, inferer.active_dtype) == (EXPECTED_BACKEND["auto"], None)
