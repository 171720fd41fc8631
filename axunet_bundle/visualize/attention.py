# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""What AXUNet's attention looks at: PAM and CAM activity per attention level on one slice, captured with forward
hooks on the network's :class:`~axunet_bundle.networks.attention.DualAttention` modules."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from torch import nn

from ..data.labels import REGIONS
from ..networks.attention import DualAttention
from ..networks.axunet import ALL_LEVELS
from .figures import (
    ANNOTATION_FONT_SIZE,
    MASK_THRESHOLD,
    PathLike,
    display_plane,
    draw_panel,
    grey_window,
    new_figure,
    save_png,
    to_numpy,
)

__all__ = [
    "ATTENTION_COLUMN_INCHES",
    "ATTENTION_ROW_INCHES",
    "ATTENTION_TITLE_INCHES",
    "AttentionActivity",
    "attention_activity",
    "attention_maps",
]

ATTENTION_COLUMN_INCHES = 3.5  # image plus colour bar
ATTENTION_ROW_INCHES = 3.0
ATTENTION_TITLE_INCHES = 0.5
_ACTIVITY_MAP = "inferno"
_ATTENTION_COLUMNS = 3  # input, PAM, CAM
_UNIFORM_RELATIVE_RANGE = 1e-5  # well above float32 round-off (~1e-7), well below real structure
_TINY = 1e-30
_COLORBAR_FRACTION = 0.046  # makes a colour bar as tall as a square image next to it
_COLORBAR_PAD = 0.02


@dataclass(frozen=True)
class AttentionActivity:
    """
    Activity of one :class:`~axunet_bundle.networks.attention.DualAttention` block for one input slice.

    Args:
        name: the block's module name, e.g. ``attention.0``.
        level: a readable name: ``level 1`` ... ``level 4`` for AXUNet's skip levels (fine to coarse), else `name`.
        feature_shape: ``(C, h, w)`` of the block's input feature map.
        pam: per-pixel L2 norm over channels of ``pam.attend(x)``, resized to the slice size; ``None`` without PAM.
        cam: the same for ``cam.attend(x)``; ``None`` without CAM.
        pam_gamma: the PAM's learnt ``gamma`` (how much of its map the block adds), ``None`` without PAM.
        cam_gamma: the CAM's ``gamma``, ``None`` without CAM.
    """

    name: str
    level: str
    feature_shape: tuple[int, ...]
    pam: np.ndarray | None
    cam: np.ndarray | None
    pam_gamma: float | None
    cam_gamma: float | None


def _level_name(module_name: str) -> str:
    """``attention.0`` (AXUNet's ModuleList of skip levels, possibly wrapped) -> ``level 1``."""
    match = re.search(r"(?:^|\.)attention\.(\d+)$", module_name)
    if match and int(match[1]) < len(ALL_LEVELS):
        return f"level {ALL_LEVELS[int(match[1])]}"
    return module_name


def _activity(branch: nn.Module | None, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray | None:
    """Per-pixel L2 norm over channels of the branch's attended map (before gamma), resized to `size`."""
    if branch is None:
        return None
    norm = torch.linalg.vector_norm(branch.attend(features).float(), dim=1, keepdim=True)  # (B, 1, h, w)
    return F.interpolate(norm, size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


def _check_slice(image_slice: NdarrayOrTensor) -> torch.Tensor:
    data = torch.as_tensor(to_numpy(image_slice, "image_slice"), dtype=torch.float32)
    if data.ndim != 3:
        raise ValueError(f"image_slice must be 3D (channels, x, y), got shape {tuple(data.shape)}")
    return data


def _run_attention(network: nn.Module, data: torch.Tensor) -> tuple[list[AttentionActivity], torch.Tensor]:
    """Run one ``(C, H, W)`` slice with hooks on the DualAttention blocks: their activities and the logits."""
    blocks = [(name, m) for name, m in network.named_modules() if isinstance(m, DualAttention)]
    if not blocks:
        raise ValueError("the network has no DualAttention blocks (e.g. an AXUNet built with attention_levels=())")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    features: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            features[name] = inputs[0].detach()

        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in blocks]
    was_training = network.training
    size = (int(data.shape[1]), int(data.shape[2]))
    try:
        network.eval()
        with torch.no_grad():
            logits = network(data[None].to(device))
            activities = [
                AttentionActivity(
                    name=name,
                    level=_level_name(name),
                    feature_shape=tuple(features[name].shape[1:]),
                    pam=_activity(block.pam, features[name], size),
                    cam=_activity(block.cam, features[name], size),
                    pam_gamma=None if block.pam is None else float(block.pam.gamma.item()),
                    cam_gamma=None if block.cam is None else float(block.cam.gamma.item()),
                )
                for name, block in blocks
                if name in features  # a block the forward pass did not use has nothing to show
            ]
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return activities, logits


def attention_activity(network: nn.Module, image_slice: NdarrayOrTensor) -> list[AttentionActivity]:
    """
    PAM and CAM activity of every DualAttention block of `network` for one slice, as :func:`attention_maps` draws.

    Args:
        network: an AXUNet (or any module holding ``DualAttention`` blocks); run in eval mode without gradients, its
            training mode is restored after.
        image_slice: ``(C, H, W)`` slice, preprocessed as for the network.

    Returns:
        one :class:`AttentionActivity` per block, in module order (AXUNet: fine to coarse).

    Raises:
        ValueError: for a slice that is not 3D or a network without ``DualAttention`` blocks.
    """
    return _run_attention(network, _check_slice(image_slice))[0]


def _activity_limits(activity: np.ndarray) -> tuple[float, float, bool]:
    """Colour limits of an activity map; a map whose relative range is at float round-off level is shown flat."""
    low, high = float(activity.min()), float(activity.max())
    scale = max(abs(low), abs(high), _TINY)
    if high - low > _UNIFORM_RELATIVE_RANGE * scale:
        return low, high, False
    centre, half = (low + high) / 2, _UNIFORM_RELATIVE_RANGE * scale / 2
    return centre - half, centre + half, True


def attention_maps(
    network: nn.Module,
    image_slice: NdarrayOrTensor,
    output_png: PathLike,
    modality_names: Sequence[str] | None = None,
    channel: int = 0,
    show_prediction: bool = False,
    radiological: bool = True,
    title: str | None = None,
) -> Path:
    """
    Show where AXUNet's attention blocks are active for one input slice.

    The slice runs through `network` in eval mode without gradients while forward hooks on every
    :class:`~axunet_bundle.networks.attention.DualAttention` capture its input feature map ``x`` (see
    :func:`attention_activity`). One row per block (AXUNet's skip levels, fine to coarse), three columns:

    (a) the input channel `channel`, with the network's thresholded prediction outlined (dashed) if `show_prediction`;
    (b) PAM activity: the per-pixel L2 norm over channels of the position-attention map ``O = pam.attend(x)``;
    (c) CAM activity: the same for the channel-attention map ``A x = cam.attend(x)``.

    The maps are taken before the learnt ``gamma`` scaling, so they are meaningful for an untrained network too
    (where ``gamma = 0`` and the blocks do not change the output); the titles give the ``gamma`` values, i.e. how much
    of the map each block adds to its input. Maps are bilinearly resized from the feature-map size to the slice size
    and drawn with their own colour bar; a map that is constant up to float round-off is drawn flat and marked
    "uniform" (an untrained PAM averages over all pixels and is nearly so). The figure is
    ``3 * ATTENTION_COLUMN_INCHES`` wide and ``n_blocks * ATTENTION_ROW_INCHES + ATTENTION_TITLE_INCHES`` high, at
    :data:`FIGURE_DPI`.

    Args:
        network: an AXUNet (or any module holding ``DualAttention`` blocks); its training mode is restored after.
        image_slice: ``(C, x, y)`` axial slice, preprocessed as for the network (same channels and normalisation).
        output_png: where to write the PNG.
        modality_names: a name per channel, for the titles.
        channel: the input channel shown in column (a).
        show_prediction: outline the prediction (sigmoid >= 0.5 per WT/TC/ET channel) in column (a); off by default
            because an untrained network's prediction is noise.
        radiological: orientation of the slice as in :func:`overlay_case`; ``x`` is assumed to point to the patient's
            right and ``y`` anterior (RAS, as the bundle's preprocessing gives).
        title: figure title.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: for a slice that is not 3D, a bad `channel` or `modality_names`, or a network without
            ``DualAttention`` blocks.
    """
    data = _check_slice(image_slice)
    names = [f"channel {i}" for i in range(data.shape[0])] if modality_names is None else list(modality_names)
    if len(names) != data.shape[0]:
        raise ValueError(f"{len(names)} modality names for a slice with {data.shape[0]} channel(s)")
    if not 0 <= channel < data.shape[0]:
        raise ValueError(f"channel must be in [0, {data.shape[0]}), got {channel}")
    activities, logits = _run_attention(network, data)

    prediction = None
    if show_prediction and logits.shape[1] == len(REGIONS):
        masks = (torch.sigmoid(logits[0].float()) >= MASK_THRESHOLD).cpu().numpy()
        prediction = np.stack([display_plane(m, radiological) for m in masks])
    image = display_plane(data[channel].numpy(), radiological)
    window = grey_window(image)

    fig = new_figure(
        _ATTENTION_COLUMNS * ATTENTION_COLUMN_INCHES,
        len(activities) * ATTENTION_ROW_INCHES + ATTENTION_TITLE_INCHES,
        layout="constrained",
    )
    axes = fig.subplots(len(activities), _ATTENTION_COLUMNS, squeeze=False)
    for act, (ax_image, ax_pam, ax_cam) in zip(activities, axes):
        draw_panel(ax_image, image, None, prediction, window, aspect="equal")
        shape = "x".join(str(n) for n in act.feature_shape[1:])
        ax_image.set_title(
            f"{act.level} ({act.feature_shape[0]} ch, {shape}): {names[channel]}", fontsize=ANNOTATION_FONT_SIZE
        )
        for ax, activity, gamma, label in (
            (ax_pam, act.pam, act.pam_gamma, "PAM"),
            (ax_cam, act.cam, act.cam_gamma, "CAM"),
        ):
            ax.set_axis_off()
            if activity is None:
                ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
                continue
            low, high, uniform = _activity_limits(activity)
            shown = ax.imshow(display_plane(activity, radiological), cmap=_ACTIVITY_MAP, vmin=low, vmax=high)
            colorbar = fig.colorbar(shown, ax=ax, fraction=_COLORBAR_FRACTION, pad=_COLORBAR_PAD)
            colorbar.formatter.set_useOffset(False)
            ax.set_title(
                f"{label} ||attend(x)|| (gamma {gamma:.3g}){', uniform' if uniform else ''}",
                fontsize=ANNOTATION_FONT_SIZE,
            )
    fig.suptitle(title or "Attention activity per pixel, before gamma")
    return save_png(fig, output_png)
