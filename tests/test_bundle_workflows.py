"""The bundle's inference, evaluation and multi-process training workflows, run through MONAI's bundle runner."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, CONFIGS, TINY_ROI, TINY_SHAPE, raises_user_error
from monai.bundle import ConfigParser, ConfigWorkflow
from official_brats import assert_same_numbers, official_scores

from axunet_bundle import AXUNet
from axunet_bundle.cli.workflows import PICTURES_CONFIGS
from axunet_bundle.data.cases import find_cases
from axunet_bundle.data.labels import label_values, labels_to_regions
from axunet_bundle.errors import DatasetError, LeftOutCasesError
from axunet_bundle.evaluation import ReportExistsError
from axunet_bundle.evaluation.challenge import challenge_columns
from axunet_bundle.evaluation.metrics import HD95_EMPTY_PENALTY, compute_brats_dice, compute_brats_hd95
from axunet_bundle.synthetic import write_synthetic_dataset

INFERENCE = [str(CONFIGS / "inference.json")]
EVALUATION = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
#: a 1x1 convolution stands in for AXUNet where the predictions must be known exactly
CONSTANT_NET = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1}
CONSTANT_LOGIT = 10.0


def save_untrained_axunet(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), path)
    return path


def save_constant_net(path: Path, logit: float) -> Path:
    """Weights of :data:`CONSTANT_NET` that predict ``logit`` everywhere: all regions (> 0) or none (< 0)."""
    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.constant_(conv.bias, logit)
    torch.save(conv.state_dict(), path)
    return path


def workflow(config_files: list[str], **overrides) -> ConfigWorkflow:
    settings = dict(roi_size=TINY_ROI, num_workers=0, sw_batch_size=4)
    settings.update(overrides)
    wf = ConfigWorkflow(
        workflow_type="infer",
        config_file=config_files,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **settings,
    )
    wf.initialize()
    assert wf.check_properties() == []
    return wf


def dataset_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its content and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_inference_writes_one_label_map_per_case_on_the_input_grid(tiny_dataset, tmp_path):
    out = tmp_path / "pred"
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    inputs_before = dataset_state(tiny_dataset)
    wf = workflow(INFERENCE, dataset_dir=str(tiny_dataset), output_dir=str(out), ckpt_path=str(ckpt))
    wf.run()
    wf.finalize()
    assert dataset_state(tiny_dataset) == inputs_before  # inputs are never modified (nor files added beside them)

    cases = find_cases(tiny_dataset)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([*(f"{case.case_id}_seg.nii.gz" for case in cases), "volumes.csv"])
    allowed = set(label_values("brats2021")) | {0}
    for case in cases:
        reference = nib.load(case.images["t1ce"])
        seg = nib.load(out / f"{case.case_id}_seg.nii.gz")
        assert seg.shape == reference.shape
        np.testing.assert_allclose(seg.affine, reference.affine, atol=1e-5)
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= allowed


def test_inference_skips_finished_cases_unless_asked_to_overwrite(tiny_dataset, tmp_path):
    out = tmp_path / "pred"
    ckpt = save_constant_net(tmp_path / "model.pt", CONSTANT_LOGIT)
    settings = dict(dataset_dir=str(tiny_dataset), output_dir=str(out), ckpt_path=str(ckpt), network_def=CONSTANT_NET)
    workflow(INFERENCE, **settings).run()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    os.remove(out / sorted(first)[0])

    rerun = workflow(INFERENCE, **settings)
    assert [item["case_id"] for item in rerun.parser.get_parsed_content("cases").items] == [
        sorted(first)[0][: -len("_seg.nii.gz")]
    ]
    rerun.run()
    again = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    assert set(again) == set(first)
    assert all(again[name] == first[name] for name in sorted(first)[1:])  # finished cases untouched

    assert len(workflow(INFERENCE, overwrite=True, **settings).parser.get_parsed_content("cases").items) == len(first)


def test_inference_follows_the_2023_convention_by_one_override(tiny_dataset, tmp_path):
    out = tmp_path / "pred"
    ckpt = save_constant_net(tmp_path / "model.pt", CONSTANT_LOGIT)  # every brain voxel predicted ET
    wf = workflow(
        INFERENCE,
        dataset_dir=str(tiny_dataset),
        output_dir=str(out),
        ckpt_path=str(ckpt),
        network_def=CONSTANT_NET,
        label_convention="brats2023",
    )
    wf.run()
    values = np.unique(np.asarray(nib.load(next(out.glob("*_seg.nii.gz"))).dataobj))
    assert values.tolist() == [0, 3]  # ET is 3 in BraTS 2023 (4 in 2021); 0 outside the brain's bounding box


def test_inference_chain_mirrors_the_training_volume_chain():
    """inference.json must stand alone (MONAI Label reads it by itself), so its image chain is a copy: keep it equal."""
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    infer = ConfigParser()
    infer.read_config(str(CONFIGS / "inference.json"))

    def image_steps(transforms):
        steps = []
        for t in transforms:
            keys = t["keys"] if isinstance(t["keys"], list) else [t["keys"]]
            if "image" not in keys:
                continue
            args = {k: v for k, v in t.items() if k not in ("keys", "allow_missing_keys", "mode", "_target_")}
            mode = t.get("mode")
            if isinstance(mode, list):
                mode = mode[keys.index("image")]
            steps.append((t["_target_"], mode, json.dumps(args, sort_keys=True)))
        return steps

    assert image_steps(infer["preprocessing"]["transforms"]) == image_steps(train["volume_transforms"])
    assert infer["label_convention"] == train["label_convention"]
    for key in ("modalities", "roi_size"):  # without the weights' model_settings.json: the training's defaults
        assert infer[key]["_target_"] == "axunet_bundle.settings.trained_setting" and infer[key]["name"] == key
        assert infer[key]["default"] == train[key]


def read_report(out: Path) -> tuple[dict[str, dict[str, float]], dict]:
    with open(out / "metrics.csv", newline="") as f:
        rows = {row.pop("case_id"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(f)}
    return rows, json.loads((out / "summary.json").read_text())


def test_evaluation_scores_equal_a_direct_computation_and_brats_evaluation(tiny_dataset, tmp_path):
    out = tmp_path / "eval"
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    workflow(EVALUATION, dataset_dir=str(tiny_dataset), output_dir=str(out), ckpt_path=str(ckpt)).run()
    rows, summary = read_report(out)
    # the bundle's evaluation draws nothing (the zoo bundle carries no drawing code); the command line adds pictures
    assert not (out / "dice_boxplot.png").exists() and not (out / "overlays").exists()

    cases = find_cases(tiny_dataset)
    assert sorted(rows) == sorted(case.case_id for case in cases)
    for case in cases:
        label = labels_to_regions(torch.as_tensor(np.asarray(nib.load(case.label).dataobj))[None])[None]
        seg = np.asarray(nib.load(out / f"{case.case_id}_seg.nii.gz").dataobj)
        pred = labels_to_regions(torch.as_tensor(seg)[None])[None]
        dice = compute_brats_dice(pred, label)[0]
        hd95 = compute_brats_hd95(pred, label)[0]
        for c, region in enumerate(("wt", "tc", "et")):
            assert rows[case.case_id][f"legacy_dice_{region}"] == pytest.approx(float(dice[c]), abs=1e-5)
            assert rows[case.case_id][f"legacy_hd95_{region}"] == pytest.approx(float(hd95[c]), abs=1e-3)
    # the challenge metrics: brats-evaluation's own command and parser on the same files
    pairs = [(case.case_id, out / f"{case.case_id}_seg.nii.gz", case.label) for case in cases]
    theirs = official_scores(pairs, "brats2021", tmp_path / "official")
    for case in cases:
        assert_same_numbers(rows[case.case_id], theirs[case.case_id], challenge_columns())
    wt = [row["legacy_dice_wt"] for row in rows.values()]
    assert summary["n_cases"] == len(cases)
    assert summary["legacy_dice"]["WT"]["mean"] == pytest.approx(np.mean(wt))
    assert summary["legacy_dice"]["WT"]["median"] == pytest.approx(np.median(wt))
    assert summary["legacy_dice"]["WT"]["std"] == pytest.approx(np.std(wt))

    # the command line's pictures (axunet evaluate): a box plot and one overlay per case, from the same report
    report = (out / "metrics.csv").read_bytes()
    pictures = EVALUATION + [str(PICTURES_CONFIGS["evaluating"])]
    workflow(pictures, dataset_dir=str(tiny_dataset), output_dir=str(out), ckpt_path=str(ckpt), overwrite=True).run()
    assert (out / "metrics.csv").read_bytes() == report
    for png in [out / "dice_boxplot.png"] + [out / "overlays" / f"{case.case_id}_overlay.png" for case in cases]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # an earlier evaluation's results are not overwritten unless asked, and nothing is evaluated before refusing
    before = (out / "metrics.csv").read_bytes()
    with raises_user_error(ReportExistsError, match="metrics.csv exists.*--overwrite True"):
        workflow(EVALUATION, dataset_dir=str(tiny_dataset), output_dir=str(out), ckpt_path=str(ckpt)).run()
    assert (out / "metrics.csv").read_bytes() == before


def test_evaluation_applies_the_brats_empty_region_conventions(tiny_dataset, tmp_path):
    """A model that predicts nothing: Dice 0 / HD95 373.13 where the reference has the region, 1 / 0 where not."""
    data = tmp_path / "data"
    case = find_cases(tiny_dataset)[0]
    (data / case.case_id).mkdir(parents=True)
    for path in [*case.images.values(), case.label]:
        (data / case.case_id / Path(path).name).symlink_to(path)
    seg = nib.load(case.label)
    no_et = np.asarray(seg.dataobj).copy()
    no_et[no_et == 4] = 1  # enhancing tumour relabelled necrosis: the reference has no ET
    (data / case.case_id / Path(case.label).name).unlink()
    nib.save(nib.Nifti1Image(no_et, seg.affine, seg.header), data / case.case_id / Path(case.label).name)

    out = tmp_path / "eval"
    ckpt = save_constant_net(tmp_path / "model.pt", -CONSTANT_LOGIT)
    workflow(
        EVALUATION, dataset_dir=str(data), output_dir=str(out), ckpt_path=str(ckpt), network_def=CONSTANT_NET
    ).run()
    rows, _ = read_report(out)
    scores = rows[case.case_id]
    assert scores["legacy_dice_wt"] == 0.0 and scores["legacy_hd95_wt"] == pytest.approx(HD95_EMPTY_PENALTY, abs=1e-3)
    assert scores["legacy_dice_tc"] == 0.0 and scores["legacy_hd95_tc"] == pytest.approx(HD95_EMPTY_PENALTY, abs=1e-3)
    assert scores["legacy_dice_et"] == 1.0 and scores["legacy_hd95_et"] == 0.0


def test_two_process_gloo_training_finishes_on_both_ranks(tiny_dataset, tmp_path):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json on CPU (gloo): both ranks finish, rank 0 saves a
    checkpoint with every rank's random states, and ``--resume True`` continues on both ranks."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--dataset_dir",
        str(tiny_dataset),
        "--bundle_root",
        str(tmp_path),
        "--roi_size",
        str(TINY_ROI),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch_size",
        "4",
        "--slices_per_volume",
        "2",
        "--pretrained",
        "False",
        "--num_workers",
        "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2  # one per rank
    AXUNet().load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    (checkpoint,) = (tmp_path / "models").glob("checkpoint_*.pt")
    ranks = torch.load(checkpoint, weights_only=True)["random_states"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each rank's own streams
    # resume on both ranks for a second epoch
    resumed = subprocess.run(
        command + ["--epochs", "2", "--resume", "True"],
        cwd=BUNDLE_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert log.count("Restored all variables from") == 2  # the checkpoint, on each rank
    assert log.count("SupervisedTrainer - INFO - Epoch[2] Complete") == 2  # both ranks continue at epoch 2 ...
    assert "SupervisedTrainer - INFO - Epoch[1] Complete" not in log  # ... without repeating epoch 1
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2


def _break_cases(root: Path) -> dict[str, str]:
    """Damage one generated case per kind of problem; return case id -> the words its report line must hold."""
    cases = {case.case_id: case for case in find_cases(root)}
    ids = sorted(cases)
    expected = {}

    def image(case_id: str, modality: str) -> Path:
        return Path(cases[case_id].images[modality])

    os.remove(image(ids[1], "t2"))
    expected[ids[1]] = "missing t2"
    data = image(ids[2], "flair").read_bytes()
    image(ids[2], "flair").write_bytes(data[: len(data) // 2])
    expected[ids[2]] = "flair"
    nifti = nib.load(image(ids[3], "t1ce"))
    voxels = np.asarray(nifti.dataobj).astype(np.float32)
    voxels[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels, nifti.affine), image(ids[3], "t1ce"))
    expected[ids[3]] = "NaN"
    image(ids[4], "t2").write_text("not a NIfTI file")
    expected[ids[4]] = "t2"
    flair = nib.load(image(ids[5], "flair"))
    nib.save(nib.Nifti1Image(np.zeros(flair.shape, np.float32), flair.affine), image(ids[5], "flair"))
    expected[ids[5]] = "all zero"
    t2 = nib.load(image(ids[6], "t2"))
    far = t2.affine.copy()
    far[0, 3] += 1000.0  # another grid, with no space in common with the t1ce's: nothing to resample
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj)[:, :, :-1], far), image(ids[6], "t2"))
    expected[ids[6]] = "does not overlap"
    t1ce = nib.load(image(ids[7], "t1ce"))
    nib.save(nib.Nifti1Image(np.stack([np.asarray(t1ce.dataobj)] * 2, -1), t1ce.affine), image(ids[7], "t1ce"))
    expected[ids[7]] = "4D image"
    return expected


def run_expecting_left_out_cases(configs: list[str], data: Path, out: Path, tmp_path: Path) -> None:
    """Run a workflow with the constant network over ``data``: it must process the good cases and end with exit
    status 1 for the bad ones."""
    ckpt = save_constant_net(tmp_path / "model.pt", CONSTANT_LOGIT)
    wf = workflow(configs, dataset_dir=str(data), output_dir=str(out), ckpt_path=str(ckpt), network_def=CONSTANT_NET)
    wf.run()
    with raises_user_error(LeftOutCasesError, match="case\\(s\\) were not processed"):
        wf.finalize()  # the configs report left-out cases in finalize


def test_inference_over_many_cases_reports_bad_ones_and_segments_the_good(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic_dataset(data, n=9, seed=3, shape=TINY_SHAPE, progress=False)
    expected = _break_cases(data)
    good = sorted({case.case_id for case in find_cases(data)} - set(expected))
    out = tmp_path / "pred"
    run_expecting_left_out_cases(INFERENCE, data, out, tmp_path)
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == [f"{case_id}_seg.nii.gz" for case_id in good]
    log = capsys.readouterr().out  # the bundle's logging.conf logs to stdout
    summary = log[log.index(f"{len(expected)} case(s) were not processed") :]
    for case_id, words in expected.items():
        lines = [line for line in summary.splitlines() if case_id in line]
        assert lines and any(words in line for line in lines), (case_id, words, summary)


def test_evaluation_leaves_out_a_case_with_labels_outside_the_convention(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic_dataset(data, n=3, seed=4, shape=TINY_SHAPE, progress=False)
    bad, *good = sorted(find_cases(data), key=lambda case: case.case_id)
    label = nib.load(bad.label)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 3  # a BraTS 2023 value in a BraTS 2021 dataset
    nib.save(nib.Nifti1Image(values, label.affine), bad.label)
    out = tmp_path / "eval"
    run_expecting_left_out_cases(EVALUATION, data, out, tmp_path)
    rows, _ = read_report(out)
    assert sorted(rows) == [case.case_id for case in good]
    log = capsys.readouterr().out
    assert f"{bad.case_id}: {Path(bad.label).name}: label values 3 outside the brats2021 labels" in log


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_inference_on_a_missing_or_empty_folder_ends_with_one_line(tmp_path, state):
    folder = tmp_path / "data"
    if state == "empty":
        folder.mkdir()
    reason = "does not exist" if state == "missing" else "no BraTS cases found"
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    with raises_user_error(DatasetError, match=reason):
        workflow(INFERENCE, dataset_dir=str(folder), output_dir=str(tmp_path / "out"), ckpt_path=str(ckpt)).run()
    assert not (tmp_path / "out").exists()


def test_inference_runs_the_exported_onnx_model(tiny_dataset, tmp_path):
    """inference_onnx.json: the same workflow on the ONNX export (onnxruntime) gives the eager model's label maps."""
    from axunet_bundle.export import export_onnx

    torch.manual_seed(0)
    net = AXUNet().eval()
    logits = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.zeros_(logits.bias)  # p ~ 0.5 instead of the tumour prior: label maps that are not empty
    torch.save(net.state_dict(), tmp_path / "model.pt")
    export_onnx(net, torch.zeros(1, 3, *TINY_ROI), tmp_path / "model.onnx")
    settings = dict(dataset_dir=str(tiny_dataset), ckpt_path=str(tmp_path / "model.pt"))
    workflow(INFERENCE, output_dir=str(tmp_path / "eager"), precision="float32", **settings).run()
    onnx = [*INFERENCE, str(CONFIGS / "inference_onnx.json")]
    workflow(onnx, output_dir=str(tmp_path / "onnx"), onnx_path=str(tmp_path / "model.onnx"), **settings).run()
    for eager in sorted((tmp_path / "eager").glob("*_seg.nii.gz")):
        a = np.asarray(nib.load(eager).dataobj)
        b = np.asarray(nib.load(tmp_path / "onnx" / eager.name).dataobj)
        assert len(np.unique(a)) > 1
        assert np.mean(a != b) < 1e-3  # equal up to voxels whose probability sits at the threshold


def test_monai_bundle_run_ends_a_users_mistake_with_one_line(tmp_path):
    """``python -m monai.bundle run`` has the command line's error boundary (installed by the configs' initialize):
    a missing dataset folder is one line on stderr and exit status 2, no traceback."""
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--config_file", INFERENCE[0], "--dataset_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path)]
    command += ["--ckpt_path", str(ckpt)]
    result = subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: dataset directory {tmp_path / 'nope'} does not exist"


def test_the_inference_config_builds_the_network_the_weights_were_trained_as(tmp_path):
    """Weights of an AXUNet with PAM only, their model_settings.json beside them (as training writes it): the
    bundle's own network_def (what the zoo bundle, MONAI Label and monai.bundle.load build) is that network without
    an option, and an override that contradicts it is one line."""
    from axunet_bundle.settings import network_record

    torch.manual_seed(0)
    trained = AXUNet(attention="pam")
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    settings = {"roi_size": TINY_ROI, "modalities": ["t1ce", "t2", "flair"], "network": network_record(trained)}
    (tmp_path / "model_settings.json").write_text(json.dumps(settings))

    parser = ConfigParser()
    parser.read_config(INFERENCE[0])
    parser.update({"ckpt_path": str(tmp_path / "model.pt")})
    network = parser.get_parsed_content("network_def")
    assert network.init_args == trained.init_args
    network.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # strict: every tensor fits
    assert parser.get_parsed_content("roi_size") == TINY_ROI

    parser.update({"network_def#attention": "cam"})
    with raises_user_error(match=r"network_def#attention 'cam' contradicts the weights' attention 'pam'"):
        parser.get_parsed_content("network_def", lazy=False)
    parser.update({"network_def#attention": "pam", "network_def#atention": "pam"})
    with raises_user_error(match=r"network_def#atention: AXUNet has no argument 'atention'; did you mean .*#attention"):
        parser.get_parsed_content("network_def", lazy=False)
