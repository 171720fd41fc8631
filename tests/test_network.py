"""AXUNet network: shapes, attention maths, gradients, parameter count, weights loading, export."""

from __future__ import annotations

import re
import urllib.error

import pytest
import timm
import torch
import torch.nn.functional as F

from axunet_bundle import AXUNet
from axunet_bundle.cli.exports import max_abs_diff_onnx
from axunet_bundle.comparison.networks import NETWORKS, build_network
from axunet_bundle.errors import ConfigurationError
from axunet_bundle.export import export_onnx
from axunet_bundle.networks import (
    ChannelAttention,
    DualAttention,
    PositionAttention,
    PretrainedWeightsError,
    TimmEncoder,
)
from axunet_bundle.networks.attention import FUSED_CAM_MIN_CHANNELS_PER_PIXEL

SIZES = (224, 240, 256, 160, 96)
EXPORT_TOLERANCE = 1e-4


def set_gammas(net: torch.nn.Module, value: float) -> None:
    """Give every attention gamma a non-zero value so the attention paths take part in the output."""
    for module in net.modules():
        if isinstance(module, (PositionAttention, ChannelAttention)):
            module.gamma.data.fill_(value)


@pytest.fixture(scope="module")
def net() -> AXUNet:
    torch.manual_seed(0)
    model = AXUNet().eval()
    set_gammas(model, 0.5)
    return model


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch", (1, 4))
def test_output_has_input_size_and_three_logits(net, size, batch):
    with torch.no_grad():
        out = net(torch.randn(batch, 3, size, size))
    assert out.shape == (batch, 3, size, size)
    assert torch.isfinite(out).all()


def test_non_square_input():
    with torch.no_grad():
        out = AXUNet().eval()(torch.randn(1, 3, 128, 164))
    assert out.shape == (1, 3, 128, 164)


def test_four_channel_input():
    model = AXUNet(in_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, 96, 96))
    assert out.shape == (2, 3, 96, 96)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = AXUNet().train()
    set_gammas(model, 0.1)  # with gamma = 0 the attention projections' gradients are exactly 0
    out = model(torch.randn(2, 3, 64, 64))
    F.binary_cross_entropy_with_logits(out, torch.rand_like(out).round()).backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_gammas_start_at_zero_and_attention_blocks_are_identity():
    model = AXUNet()
    gammas = [m.gamma for m in model.modules() if isinstance(m, (PositionAttention, ChannelAttention))]
    assert len(gammas) == 8  # PAM + CAM on four levels
    assert all(g.item() == 0.0 for g in gammas)
    x = torch.randn(2, 32, 9, 11)
    for block in (
        PositionAttention(32),
        PositionAttention(32, kernel="softmax"),
        ChannelAttention(),
        DualAttention(32),
    ):
        with torch.no_grad():
            assert torch.equal(block(x), x)


def direct_pam(module: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    """The PAM formula computed pixel pair by pixel pair (O(N^2)), independently of the module's algebra."""
    q = module.query(x).flatten(2)[0].T  # (N, m)
    k = module.key(x).flatten(2)[0].T
    v = module.value(x).flatten(2)[0].T  # (N, C)
    out = torch.zeros_like(v)
    for n in range(q.shape[0]):
        if module.kernel == "softplus":
            scores = (F.softplus(q[n])[None, :] * F.softplus(k)).sum(dim=1)  # phi(q_n) . phi(k_j) for every j
            out[n] = (scores[:, None] * v).sum(dim=0) / (scores.sum() + module.eps)
        else:
            out[n] = (torch.softmax((q[n][None, :] * k).sum(dim=1), dim=0)[:, None] * v).sum(dim=0)
    return out.T.reshape(x.shape)


@pytest.mark.parametrize("kernel", ("softplus", "softmax"))
def test_pam_matches_direct_quadratic_computation(kernel):
    torch.manual_seed(1)
    module = PositionAttention(16, kernel=kernel)
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(module.attend(x), direct_pam(module, x), rtol=1e-5, atol=1e-5)
        module.gamma.fill_(0.7)
        torch.testing.assert_close(module(x), x + 0.7 * direct_pam(module, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ("softplus", "softmax"))
def test_pam_weights_are_non_negative_and_sum_to_one(kernel):
    torch.manual_seed(2)
    module = PositionAttention(16, kernel=kernel)
    with torch.no_grad():
        weights = module.attention_weights(torch.randn(3, 16, 6, 6))
    assert weights.shape == (3, 36, 36)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 36), rtol=1e-5, atol=1e-5)


# (B, C, H, W): few channels per pixel (batched products) and many (the fused attention kernel), see
# FUSED_CAM_MIN_CHANNELS_PER_PIXEL
CAM_SHAPES = ((2, 6, 4, 5), (2, 4 * FUSED_CAM_MIN_CHANNELS_PER_PIXEL, 2, 2))


def danet_cam(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DANet's channel attention written out: weights ``softmax(max E - E)`` and the attended map ``A X``."""
    features = x.flatten(2)
    energy = features @ features.transpose(1, 2)
    weights = torch.softmax(energy.max(dim=-1, keepdim=True).values - energy, dim=-1)
    return weights, (weights @ features).reshape(x.shape)


@pytest.mark.parametrize("shape", CAM_SHAPES)
def test_cam_matches_danet_formula(shape):
    torch.manual_seed(3)
    module = ChannelAttention()
    x = torch.randn(shape)
    expected_weights, expected_attended = danet_cam(x)
    with torch.no_grad():
        module.gamma.fill_(0.3)
        torch.testing.assert_close(module.attention_weights(x), expected_weights)
        torch.testing.assert_close(module(x), x + 0.3 * expected_attended)


@pytest.mark.parametrize("shape", CAM_SHAPES)
def test_cam_gradients_match_danet_formula(shape):
    """Training differentiates whichever path CAM takes: both must give the formula's gradients."""
    torch.manual_seed(5)
    x = torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn(shape, dtype=torch.float64)
    x_module, x_formula = x.clone().requires_grad_(), x.clone().requires_grad_()
    module = ChannelAttention().double()
    module.gamma.data.fill_(0.3)
    (module(x_module) * upstream).sum().backward()
    (x_formula + 0.3 * danet_cam(x_formula)[1]).mul(upstream).sum().backward()
    torch.testing.assert_close(x_module.grad, x_formula.grad)
    torch.testing.assert_close(module.gamma.grad, (danet_cam(x)[1] * upstream).sum().reshape(1))


def test_dual_attention_adds_both_residuals_once():
    torch.manual_seed(4)
    block = DualAttention(16)
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        block.pam.gamma.fill_(0.4)
        block.cam.gamma.fill_(0.2)
        torch.testing.assert_close(block(x), block.pam(x) + block.cam(x) - x)


def test_parameter_count_is_the_documented_one():
    model = AXUNet()
    counts = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in ("encoder", "attention", "decoder", "head")
    }
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(counts.values())
    documented = re.search(r"([\d.]+) M in all, of which the Xception\s+encoder ([\d.]+) M", AXUNet.__doc__)
    assert documented is not None
    assert round(total / 1e6, 2) == float(documented.group(1))
    assert round(counts["encoder"] / 1e6, 2) == float(documented.group(2)) == 20.81  # timm legacy_xception, no fc


def test_ablation_switches_build_what_they_say():
    def blocks(model):
        return [type(m).__name__ for m in model.attention]

    assert blocks(AXUNet(attention_levels=(2, 4))) == ["Identity", "DualAttention", "Identity", "DualAttention"]
    assert blocks(NETWORKS["xception_unet"]()) == ["Identity"] * 4
    pam_only = AXUNet(attention="pam", pam_kernel="softmax")
    assert all(m.cam is None and m.pam.kernel == "softmax" for m in pam_only.attention)
    assert all(m.pam is None and m.cam is not None for m in AXUNet(attention="cam").attention)
    with pytest.raises(ConfigurationError, match="attention_levels"):
        AXUNet(attention_levels=(0, 5))
    with pytest.raises(ConfigurationError, match="attention must be one of"):
        AXUNet(attention="gates")
    with pytest.raises(ConfigurationError, match="pam_kernel must be one of"):
        AXUNet(pam_kernel="relu")
    with pytest.raises(ConfigurationError, match="unknown network"):
        build_network("segformer")


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_baselines_map_slices_to_three_logits(name):
    model = build_network(name, in_channels=3, out_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 3, 96, 96)


def timm_weights(encoder: TimmEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm's classification-model key names (what ``pretrained_path`` reads)."""
    reference = set(timm.create_model(encoder.backbone, pretrained=False, num_classes=0).state_dict())
    return {
        k.removeprefix("body.") if k.removeprefix("body.") in reference else k: v
        for k, v in encoder.body.state_dict().items()
    }


def test_pretrained_path_round_trip(tmp_path, net):
    weights = tmp_path / "legacy_xception.pth"
    torch.save(timm_weights(net.encoder), weights)
    fresh = AXUNet(pretrained_path=weights).eval()
    fresh.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("encoder.")}, strict=False)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(net.encoder(x), fresh.encoder(x)):
            assert torch.equal(a, b)
        assert torch.equal(net(x), fresh(x))


def test_pretrained_path_adapts_the_stem_to_four_channels(tmp_path, net):
    weights = tmp_path / "legacy_xception.pth"
    torch.save(timm_weights(net.encoder), weights)
    model = AXUNet(in_channels=4, pretrained_path=weights)
    stem = model.encoder.body.state_dict()["body.conv1.weight"]
    assert stem.shape[1] == 4
    # timm repeats the RGB filters over the new channels, rescaled to keep the activation's size
    torch.testing.assert_close(stem[:, 3], net.encoder.body.state_dict()["body.conv1.weight"][:, 0] * 3 / 4)


def test_wrong_weights_file_gives_a_clear_error(tmp_path):
    resnet_like = tmp_path / "resnet.pth"
    torch.save(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, resnet_like
    )
    with pytest.raises(PretrainedWeightsError, match=r"does not hold timm 'legacy_xception' weights \(missing: "):
        AXUNet(pretrained_path=resnet_like)
    with pytest.raises(PretrainedWeightsError, match="not found"):
        AXUNet(pretrained_path=tmp_path / "nowhere.pth")
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("these are not weights")
    with pytest.raises(PretrainedWeightsError, match="cannot read"):
        AXUNet(pretrained_path=not_weights)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading weights",))


def test_weights_file_carrying_code_is_refused(tmp_path, capsys):
    crafted = tmp_path / "crafted.pth"
    torch.save({"conv1.weight": _Payload()}, crafted)
    with pytest.raises(PretrainedWeightsError, match="cannot read"):
        AXUNet(pretrained_path=crafted)
    assert "code ran" not in capsys.readouterr().out


def test_imagenet_download_failure_says_how_to_continue(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsError, match="--pretrained_path FILE.*--pretrained False"):
        AXUNet(pretrained=True)


def test_pretrained_takes_a_bool_only():
    """The network takes typed arguments: the string a command line passes for ``--pretrained false`` is refused in
    one line (it would otherwise be truthy), not parsed."""
    with pytest.raises(ConfigurationError, match="pretrained must be True or False, got 'false'"):
        AXUNet(pretrained="false")


def test_onnx_export_matches_eager(tmp_path, net):
    x = torch.randn(2, 3, 96, 96)
    path = export_onnx(net, x, tmp_path / "model.onnx")
    assert max_abs_diff_onnx(net, path, x) <= EXPORT_TOLERANCE
    assert max_abs_diff_onnx(net, path, torch.randn(1, 3, 96, 96)) <= EXPORT_TOLERANCE  # dynamic batch


def test_untrained_network_starts_from_the_tumour_prior():
    """The logits' bias starts at logit(PRIOR_PROBABILITY), so an untrained AXUNet predicts almost no tumour."""
    from axunet_bundle.networks.decoder import PRIOR_PROBABILITY

    torch.manual_seed(0)
    net = AXUNet().eval()
    with torch.no_grad():
        probabilities = torch.sigmoid(net(torch.zeros(1, 3, 64, 64)))
    assert float(probabilities.mean()) == pytest.approx(PRIOR_PROBABILITY, rel=0.5)
