# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Self-attention blocks of AXUNet: position attention (PAM), channel attention (CAM) and their combination.

The design follows MANet (Li et al., IEEE TGRS 2021, arXiv 2009.02130), whose PAM replaces the softmax of
DANet's position attention by a softplus kernel so that its cost grows linearly with the number of pixels.
Every block returns ``x + gamma * attended(x)`` with ``gamma`` initialised to 0: at initialisation each block is
the identity and a pretrained encoder's features pass through unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigurationError

__all__ = ["PositionAttention", "ChannelAttention", "DualAttention", "PAM_KERNELS", "FUSED_CAM_MIN_CHANNELS_PER_PIXEL"]

#: PAM kernels: ``softplus`` is MANet's linear-cost kernel attention, ``softmax`` DANet's quadratic dot product.
PAM_KERNELS = ("softplus", "softmax")
#: MANet/DANet project queries and keys to ``in_channels // 8`` channels.
DEFAULT_QK_REDUCTION = 8
#: Keeps the softplus normaliser away from zero (MANet's value).
DEFAULT_EPS = 1e-6
#: CAM runs PyTorch's fused attention (``scaled_dot_product_attention``: flash attention on the CPU, which streams
#: the ``C x C`` weights in blocks instead of holding them) on maps with at least this many channels per pixel; on
#: smaller ones the weights fit in cache and two batched products are as fast or faster. Both give the same output.
#: Measured on a 2-core AMD EPYC, fused ÷ batched products on 2 maps, float32 | bf16 autocast (channels_last):
#: C = 2048, N = 49 (AXUNet's bottleneck at 224 x 224) 0.25 | 0.60; C = 2048, N = 100: 0.33 | 0.87; C = 1024,
#: N = 64: 0.79 | 1.31; C = 728, N = 196: 1.07 | 1.72. The whole network: float32 training 2.12 against 1.87
#: slices/s at 224² (batch 8) and twice as fast at 64² (the demo: 8-10 s per epoch against 16-19 s), float32
#: inference 127 against 146 ms per slice, bf16 inference unchanged (63 ms).
FUSED_CAM_MIN_CHANNELS_PER_PIXEL = 20


class _GatedAttention(nn.Module):
    """``x + gamma * attend(x)`` with a learnt scalar ``gamma`` starting at 0; subclasses define ``attend``."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``gamma * attend(x)``: what the module adds to its input."""
        return self.gamma * self.attend(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class PositionAttention(_GatedAttention):
    """Position attention module (PAM): every pixel attends to every other pixel of the map.

    With ``Q, K = conv1x1(x)`` (``in_channels // qk_reduction`` channels), ``V = conv1x1(x)`` (``in_channels``
    channels) and ``phi = softplus``, the ``softplus`` kernel computes for pixel ``n``::

        O_n = sum_j phi(q_n) . phi(k_j) v_j / (phi(q_n) . sum_j phi(k_j) + eps)

    by first summing ``sum_j phi(k_j) v_j^T`` (a small matrix), so time and memory are linear in the number of
    pixels ``N``. The ``softmax`` kernel is DANet's ``O_n = sum_j softmax_j(q_n . k_j) v_j``, which builds the
    ``N x N`` attention map (quadratic); it is kept for comparison.

    Args:
        in_channels: number of channels ``C`` of the input map.
        kernel: ``"softplus"`` (linear cost) or ``"softmax"`` (quadratic cost).
        qk_reduction: queries and keys have ``max(1, C // qk_reduction)`` channels.
        eps: added to the softplus normaliser.
    """

    def __init__(
        self,
        in_channels: int,
        kernel: str = "softplus",
        qk_reduction: int = DEFAULT_QK_REDUCTION,
        eps: float = DEFAULT_EPS,
    ) -> None:
        super().__init__()
        if kernel not in PAM_KERNELS:
            raise ConfigurationError(f"pam_kernel must be one of {PAM_KERNELS}, got {kernel!r}")
        qk_channels = max(1, in_channels // qk_reduction)
        self.kernel = kernel
        self.eps = eps
        self.query = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
        self.key = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
        self.value = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, m, N)``, keys ``(B, m, N)`` and values ``(B, C, N)``; softplus-mapped for that kernel."""
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)
        if self.kernel == "softplus":
            q, k = F.softplus(q), F.softplus(k)
        return q, k, v

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attended map ``O`` (before ``gamma`` and the residual), shape of ``x``."""
        q, k, v = self._projections(x)
        if self.kernel == "softplus":
            key_value = torch.bmm(k, v.transpose(1, 2))  # (B, m, C): sum_j phi(k_j) v_j^T
            numerator = torch.bmm(q.transpose(1, 2), key_value)  # (B, N, C)
            normaliser = torch.bmm(q.transpose(1, 2), k.sum(dim=2, keepdim=True)) + self.eps  # (B, N, 1)
            out = (numerator / normaliser).transpose(1, 2)
        else:
            weights = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, N, N)
            out = torch.bmm(v, weights.transpose(1, 2))
        return out.reshape(x.shape)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The implied ``(B, N, N)`` weights ``w[n, j]`` of pixel ``j`` for query pixel ``n`` (quadratic memory).

        For inspection and pictures only: ``attend`` never builds this matrix for the softplus kernel.
        """
        q, k, _ = self._projections(x)
        scores = torch.bmm(q.transpose(1, 2), k)
        if self.kernel == "softplus":
            return scores / (scores.sum(dim=-1, keepdim=True) + self.eps)
        return torch.softmax(scores, dim=-1)


class ChannelAttention(_GatedAttention):
    """Channel attention module (CAM) of DANet: every channel attends to every other channel.

    With ``X`` the input reshaped to ``(C, N)``, ``E = X X^T``, ``A = softmax(max_l E[:, l] - E)`` row-wise and
    the output ``x + gamma * (A X)``. There are no projections; ``gamma`` is the only parameter. On maps with many
    channels per pixel (AXUNet's 2048-channel bottleneck) ``A X`` comes from PyTorch's fused attention, which never
    builds ``A`` (:data:`FUSED_CAM_MIN_CHANNELS_PER_PIXEL`).
    """

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, C, C)`` channel attention weights (rows sum to 1)."""
        features = x.flatten(2)
        energy = torch.bmm(features, features.transpose(1, 2))
        energy = energy.amax(dim=-1, keepdim=True) - energy
        return torch.softmax(energy, dim=-1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attended map ``A X`` (before ``gamma`` and the residual), shape of ``x``."""
        features = x.flatten(2)
        channels, pixels = features.shape[1:]
        if channels >= FUSED_CAM_MIN_CHANNELS_PER_PIXEL * pixels:
            # softmax(-E) = softmax(max E - E): a softmax ignores a shift of its row. The kernel is slow on strided
            # rows (a channels_last map, as the prepared inference network has, flattens to one): 3.5x in float32.
            features = features.contiguous()
            return F.scaled_dot_product_attention(-features, features, features, scale=1.0).reshape(x.shape)
        return torch.bmm(self.attention_weights(x), features).reshape(x.shape)


class DualAttention(nn.Module):
    """PAM and CAM applied in parallel to the same map (MANet's ``PAM_CAM_Layer``).

    MANet returns ``PAM(x) + CAM(x) = 2x + ...``; here both residuals are added to a single ``x``
    (``x + gamma_p O_p + gamma_c O_c``), so the block is exactly the identity at initialisation.

    Args:
        in_channels: number of channels of the input map.
        use_pam: include position attention.
        use_cam: include channel attention.
        pam_kernel: ``"softplus"`` or ``"softmax"``, see :class:`PositionAttention`.
        qk_reduction: PAM query/key channel reduction.
    """

    def __init__(
        self,
        in_channels: int,
        use_pam: bool = True,
        use_cam: bool = True,
        pam_kernel: str = "softplus",
        qk_reduction: int = DEFAULT_QK_REDUCTION,
    ) -> None:
        super().__init__()
        if not (use_pam or use_cam):
            raise ValueError("DualAttention needs PAM, CAM or both; leave the level out to have no attention.")
        self.pam = PositionAttention(in_channels, kernel=pam_kernel, qk_reduction=qk_reduction) if use_pam else None
        self.cam = ChannelAttention() if use_cam else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.pam is not None:
            out = out + self.pam.residual(x)
        if self.cam is not None:
            out = out + self.cam.residual(x)
        return out
