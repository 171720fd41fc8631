# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The fast default inference path: a 2D network applied slice by slice to whole 3D volumes.

:class:`BrainSliceInferer` is a drop-in replacement for MONAI's ``SliceInferer`` (same call, same
``(B, C, H, W, D)`` in, ``(B, out, H, W, D)`` logits out) that

- skips slices without brain: after the bundle's preprocessing (``NormalizeIntensityd(nonzero=True)`` leaves the
  background exactly 0, in-plane ``Resized`` keeps it 0) a slice with no brain is all zero; it gets the constant
  ``background_logit`` (sigmoid ~ 0, so its segmentation is empty) instead of a forward pass;
- batches the brain slices of the whole batch, ``sw_batch_size`` at a time;
- runs a faster, numerically equivalent version of the network, prepared once and reused while the weights stay the
  same (any change, e.g. ``CheckpointLoader`` loading ``model.pt`` or a training step, prepares it again):

  * on CPU: ONNX Runtime (whose graph optimiser fuses BN, uses blocked layouts and its own kernels) when
    ``onnxruntime`` is installed; the ONNX file is cached on disk keyed by a hash of the weights, so only the first
    run with new weights pays the export;
  * otherwise, and on CUDA: a copy of the network with BatchNorm folded into the preceding convolutions, in
    ``channels_last`` memory format, under ``torch.inference_mode`` (and bf16 autocast on CUDA, fp16 where bf16 is
    not supported);
  * on a CPU with native bf16 (AVX512-BF16, AMX), ``precision="auto"`` runs the torch network under bf16 autocast,
    about 1.9x faster than float32, **guarded**: after each call (a case) in bf16 it runs the :data:`GUARD_SLICES`
    brain slices where bf16 found the most foreground again in float32 and keeps the bf16 output only when the
    labels (probability 0.5) of every output channel agree with Dice >= :data:`GUARD_MIN_DICE`; otherwise the call
    is run again in float32, with a warning. ``precision="float32"`` always runs float32 (ONNX Runtime),
    ``"bfloat16"`` bf16 without the guard;

- checks the prepared network against the plain one, in float32 on a fixed random slice, when it prepares it,
  and falls back (ONNX Runtime -> torch -> the plain network) with a warning when the export fails or the outputs
  differ by more than ``atol + rtol * |plain|``. Float32, because the check is of the preparation (folding, export):
  bf16 rounds the two sides differently by more than a tolerance that still catches a wrong preparation, and the
  guard above already compares bf16 with float32 labels.

Nothing needs to be configured: ``backend="auto"`` is the fast path. ``backend="eager"`` gives the plain network
(with slice skipping and batching), for debugging. On a 2-core AMD EPYC (fp32, 224 x 224 slices) the eager network
takes ~165-210 ms per slice, the folded ``channels_last`` copy ~120-130 ms and ONNX Runtime ~95-110 ms
(see docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import convert_to_dst_type, ensure_tuple, optional_import
from torch import nn

from ..errors import ConfigurationError
from ..export import OnnxNetwork
from ..progress import progress as show_progress
from .backends import PRECISIONS, Predictor, autocast_dtype, build_onnx_network, prepare_network

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKGROUND_LOGIT",
    "GUARD_MIN_DICE",
    "GUARD_SLICES",
    "BrainSliceInferer",
    "brain_slice_mask",
    "label_agreement",
]

logger = logging.getLogger(__name__)

#: ``"auto"``: ONNX Runtime on CPU when available, else the prepared torch network; ``"onnxruntime"``, ``"torch"``:
#: that one (still falling back when it fails); ``"eager"``: the network as given.
BACKENDS = ("auto", "onnxruntime", "torch", "eager")
#: the backend name the log gives an exported ONNX model that the workflow runs (``configs/inference_onnx.json``)
EXPORTED_ONNX = "ONNX Runtime"
#: logit given to every voxel of a skipped (all-zero) slice: sigmoid(-20) ~ 2e-9, representable in fp16 and bf16
DEFAULT_BACKGROUND_LOGIT = -20.0
#: slices per forward pass on CPU: one per torch thread, at least this many. On a 2-core CPU batches of 1-2 slices
#: run fastest (a slice's activations stay in cache; larger batches are slower per slice) and keep ONNX Runtime's
#: memory arena small (batch 8 adds ~0.8 GB)
DEFAULT_CPU_BATCH = 2
#: slices per forward pass on CUDA: large batches keep the GPU busy
DEFAULT_CUDA_BATCH = 64
#: BatchNorm folding runs the network once to find its conv -> BN pairs; at 64 x 64 (AXUNet's least documented size)
#: that costs about 1/12 of a 224 x 224 slice
FOLD_EXAMPLE_SIZE = 64
#: the prepared network must match the plain one within ``atol + rtol * |plain|`` (float32, on a random slice)
VERIFY_ATOL = 1e-3
VERIFY_RTOL = 1e-3
#: seed of that random slice (standard normal, like the z-scored brain voxels the network sees)
VERIFY_SEED = 0
#: brain slices (those where bf16 found the most foreground) on which float32 must give bf16's labels (CPU, "auto")
GUARD_SLICES = 2
#: the least Dice, per output channel, between the bf16 and float32 labels on those slices (both empty: 1)
GUARD_MIN_DICE = 0.99


def label_agreement(low: torch.Tensor, full: torch.Tensor) -> list[float]:
    """Per-channel Dice between the labels (logit > 0, i.e. probability > 0.5) of two ``(N, C, H, W)`` logits;
    1 where both are empty."""
    a, b = (low > 0).transpose(0, 1).flatten(1), (full > 0).transpose(0, 1).flatten(1)
    both, total = (a & b).sum(1).double(), (a.sum(1) + b.sum(1)).double()
    return torch.where(total > 0, 2 * both / total.clamp(min=1), torch.ones_like(total)).tolist()


def brain_slice_mask(inputs: torch.Tensor, spatial_dim: int = 2) -> torch.Tensor:
    """Which slices hold any non-zero voxel in any channel.

    Args:
        inputs: ``(B, C, *spatial)`` volumes with 3 spatial dimensions.
        spatial_dim: the spatial dimension the slices are taken along (0, 1 or 2; 2 for axial slices of RAS data).

    Returns:
        a bool ``(B, S)`` tensor, ``S = inputs.shape[2 + spatial_dim]``.
    """
    moved = torch.movedim(torch.as_tensor(inputs), 2 + spatial_dim, -1)
    return moved.ne(0).flatten(1, -2).any(dim=1)


def _state_token(network: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer step, load_state_dict)."""
    tensors = list(network.parameters()) + list(network.buffers())
    return (
        network.training,
        torch.get_num_threads(),
        tuple((id(t), t._version, t.device.type, t.dtype) for t in tensors),
    )


class BrainSliceInferer(Inferer):
    """Slice-by-slice inference of a 2D network over whole volumes, skipping slices without brain, batching slices
    and running a faster equivalent network (see the module docstring). Same interface as MONAI ``SliceInferer``.

    Args:
        roi_size: in-plane size the network runs at; slices of another size are tiled by MONAI's sliding window
            (``overlap``, constant blending). ``None``: the slices' own size.
        sw_batch_size: slices per forward pass; ``None``: on CPU one per torch thread (at least 2), on CUDA 64.
        spatial_dim: spatial dimension the slices are taken along (0, 1, 2; the bundle uses 2, axial).
        skip_empty: give all-zero slices ``background_logit`` without running the network.
        background_logit: the logit of every voxel of a skipped slice.
        backend: one of :data:`BACKENDS`.
        precision: one of :data:`PRECISIONS` (``"auto"``: bf16 autocast on CUDA and, guarded, on CPUs with native
            bf16; float32 on other CPUs).
        cache_dir: folder of cached ONNX exports (``None``: :func:`default_cache_dir`; ``False``: none).
        overlap: sliding-window overlap, only used when slices are not ``roi_size``.
        atol: absolute tolerance of the check of the prepared network against the plain one.
        rtol: relative tolerance of that check.
        progress: show the progress over slice batches (a bar on a terminal, log lines otherwise).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int | None = None,
        spatial_dim: int = 2,
        skip_empty: bool = True,
        background_logit: float = DEFAULT_BACKGROUND_LOGIT,
        backend: str = "auto",
        precision: str = "auto",
        cache_dir: str | os.PathLike | bool | None = None,
        overlap: float = 0.25,
        atol: float = VERIFY_ATOL,
        rtol: float = VERIFY_RTOL,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigurationError(f"inference_backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2, got {spatial_dim}")
        self.roi_size = None if roi_size is None else tuple(int(s) for s in ensure_tuple(roi_size))
        if self.roi_size is not None and len(self.roi_size) != 2:
            raise ValueError(f"roi_size must be 2D, got {roi_size}")
        self.sw_batch_size = sw_batch_size
        self.spatial_dim = spatial_dim
        self.skip_empty = skip_empty
        self.background_logit = float(background_logit)
        self.backend = backend
        self.precision = precision
        self.cache_dir = cache_dir
        self.overlap = overlap
        self.atol, self.rtol = atol, rtol
        self.progress = progress
        self._network_ref: weakref.ref | None = None
        self._token: tuple | None = None
        self._predictor: Predictor | None = None
        #: name of the backend the last call ran (``"onnxruntime"``, ``"torch"`` or ``"eager"``)
        self.active_backend: str | None = None
        #: the autocast dtype the last call ran (``None``: float32)
        self.active_dtype: torch.dtype | None = None

    # ---------------------------------------------------------------------------------------- preparation
    def _candidates(self, network: nn.Module, device: torch.device, dtype: torch.dtype | None) -> tuple[list[str], str]:
        """The backends to try, in order, and why those (for the log)."""
        if isinstance(network, OnnxNetwork):  # configs/inference_onnx.json: the exported model runs as it is
            return [EXPORTED_ONNX], f"the exported model {network.path}"
        if self.backend == "eager" or network.training:  # BN folding and export assume eval mode
            return ["eager"], "backend 'eager'" if self.backend == "eager" else "the network is in training mode"
        names, why = ["torch"] if self.backend == "torch" else ["onnxruntime", "torch"], f"backend {self.backend!r}"
        reasons = [
            f"device {device.type}" if device.type != "cpu" else "",
            "autocast to a lower precision (the ONNX export is float32)" if dtype is not None else "",
            "weights not on the CPU" if any(t.device.type != "cpu" for t in network.state_dict().values()) else "",
            "onnxruntime not installed" if not optional_import("onnxruntime")[1] else "",
        ]
        if "onnxruntime" in names and any(reasons):
            names.remove("onnxruntime")
            why += ", no ONNX Runtime: " + ", ".join(r for r in reasons if r)
        return names + ["eager"], why

    def _build(self, name: str, network: nn.Module, example: torch.Tensor, dtype: torch.dtype | None) -> Predictor:
        if name == EXPORTED_ONNX:
            return Predictor(name, network)
        if name == "onnxruntime":
            session = build_onnx_network(network, example, cache_dir=self.cache_dir)
            return Predictor(name, session)
        if name == "torch":
            return Predictor(
                name,
                prepare_network(network, example=example[..., :FOLD_EXAMPLE_SIZE, :FOLD_EXAMPLE_SIZE]),
                channels_last=True,
                dtype=dtype,
            )
        return Predictor(name, network, dtype=dtype)

    def _predictor_for(self, network: nn.Module, example: torch.Tensor) -> Predictor:
        """The prepared network for ``network``'s current weights and ``example``'s (C, H, W), built when needed."""
        token = (_state_token(network), tuple(example.shape[1:]), example.device)
        cached = self._network_ref() if self._network_ref is not None else None
        if cached is network and token == self._token and self._predictor is not None:
            return self._predictor
        self._predictor = None
        # once: it warns when the CPU lacks bf16; an ONNX model runs in its own float32
        dtype = None if isinstance(network, OnnxNetwork) else autocast_dtype(example.device, self.precision)
        names, why = self._candidates(network, example.device, dtype)
        for name in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._predictor = self._build(name, network, example, dtype)
                break
            except Exception as err:  # an export or session failure must never stop inference
                logger.warning("inference backend %s unavailable (%s: %s); falling back", name, type(err).__name__, err)
        precision = str(dtype).replace("torch.", "") + " autocast" if dtype is not None else "float32"
        logger.info("inference backend: %s, %s on %s (%s)", self._predictor.name, precision, example.device, why)
        if self._predictor.name not in ("eager", EXPORTED_ONNX):
            self._predictor = self._checked(network, self._predictor, example)
        self._network_ref, self._token = weakref.ref(network), token
        return self._predictor

    def _checked(self, network: nn.Module, predictor: Predictor, example: torch.Tensor) -> Predictor:
        """``predictor``, or the plain network when their float32 outputs on a random slice of ``example``'s shape
        differ by more than ``atol + rtol * |plain|``."""
        generator = torch.Generator().manual_seed(VERIFY_SEED)
        probe = torch.randn(example.shape, generator=generator).to(example.device)
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,  # TF32 convolutions (PyTorch's CUDA default) round both sides differently
        ):
            got = predictor.with_dtype(None)(probe)
            reference = Predictor("eager", network)(probe)
        error = (got.to(reference.device) - reference).abs()
        if bool(torch.isfinite(got).all()) and bool((error <= self.atol + self.rtol * reference.abs()).all()):
            logger.info(
                "inference backend %s matches the plain network (float32, max |difference| %.2g)",
                predictor.name,
                float(error.max()),
            )
            return predictor
        logger.warning(
            "inference backend %s differs from the plain network by up to %.3g; using the plain network",
            predictor.name,
            float(error.max()),
        )
        return Predictor("eager", network, dtype=predictor.dtype)

    def _guarded(
        self, predictor: Predictor, volumes: torch.Tensor, index: torch.Tensor, output: torch.Tensor, chunk: int
    ) -> tuple[Predictor, torch.Tensor]:
        """Keep a bf16 ``output`` (CPU, ``precision="auto"``) only when float32 gives the same labels on the
        :data:`GUARD_SLICES` brain slices where bf16 found the most foreground; otherwise run the volumes again in
        float32. Returns the predictor that made the output, and the output."""
        if predictor.dtype is None or self.precision != "auto" or volumes.device.type != "cpu":
            return predictor, output
        foreground = (output[index[:, 0], :, :, :, index[:, 1]] > 0).flatten(1).sum(1)
        picked = index[torch.argsort(foreground, descending=True, stable=True)[:GUARD_SLICES]]
        b, s = picked.unbind(1)
        full = predictor.with_dtype(None)
        dice = label_agreement(output[b, :, :, :, s], self._run_slices(full, volumes[b, :, :, :, s].float()))
        agreement = ", ".join(f"{d:.4f}" for d in dice)
        if min(dice) >= GUARD_MIN_DICE:
            logger.info(
                "bfloat16 labels agree with float32 on %d check slices (Dice per channel %s)", len(b), agreement
            )
            return predictor, output
        logger.warning(
            "bfloat16 labels differ from float32 on %d check slices (Dice per channel %s < %s): running float32",
            len(b),
            agreement,
            GUARD_MIN_DICE,
        )
        return full, self._run_volumes(full, volumes, index, chunk)

    def _run_volumes(
        self, predictor: Predictor, volumes: torch.Tensor, index: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        """``predictor`` on the ``index`` slices of ``volumes``, ``chunk`` at a time: ``(B, out, h, w, S)`` logits,
        the background logit elsewhere."""
        batch, _, height, width, depth = volumes.shape
        starts = show_progress(
            range(0, len(index), chunk), desc="slices", unit="batch", leave=False, enabled=self.progress
        )
        output: torch.Tensor | None = None
        for start in starts:
            b, s = index[start : start + chunk].unbind(1)
            y = self._run_slices(predictor, volumes[b, :, :, :, s].float())  # (n, C, h, w) slices in
            if output is None:
                output = torch.full(
                    (batch, y.shape[1], height, width, depth), self.background_logit, device=volumes.device
                )
            output[b, :, :, :, s] = y.to(output.device)
        return output

    # ---------------------------------------------------------------------------------------- inference
    def _run_slices(self, predictor: Predictor, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` slices -> ``(N, out, h, w)`` logits, tiling when the slices are not ``roi_size``."""
        if self.roi_size is None or tuple(x.shape[-2:]) == self.roi_size:
            return predictor(x)
        with torch.inference_mode():  # the window buffers are updated in place, like the predictor's outputs
            return sliding_window_inference(x, self.roi_size, x.shape[0], predictor, overlap=self.overlap)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """
        Args:
            inputs: ``(B, C, H, W, D)`` volumes (a MetaTensor keeps its metadata in the output).
            network: the 2D network ``(N, C, h, w) -> (N, out, h, w)``; an ``nn.Module`` gets the fast path, any
                other callable is run as given.
            args: not supported (MONAI's inferer signature); must be empty.
            kwargs: not supported; must be empty.

        Returns:
            ``(B, out, H, W, D)`` float32 logits on the device of ``inputs``.
        """
        if args or kwargs:
            raise ValueError("BrainSliceInferer passes no extra arguments to the network")
        if inputs.ndim != 5:
            raise ValueError(f"inputs must be (B, C, H, W, D), got shape {tuple(inputs.shape)}")
        data = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        volumes = torch.movedim(data, 2 + self.spatial_dim, -1)  # (B, C, h, w, S)
        batch, _, height, width, depth = volumes.shape
        if self.skip_empty:
            index = brain_slice_mask(volumes, spatial_dim=2).nonzero()
        else:
            index = torch.cartesian_prod(torch.arange(batch), torch.arange(depth)).reshape(-1, 2)
        index = index.to(volumes.device)
        chunk = self.sw_batch_size or (
            DEFAULT_CUDA_BATCH if volumes.device.type == "cuda" else max(DEFAULT_CPU_BATCH, torch.get_num_threads())
        )
        output: torch.Tensor | None = None
        predictor = None
        if len(index):
            if isinstance(network, nn.Module):
                run_size = self.roi_size or (height, width)  # slices are run (or tiled) at this size
                predictor = self._predictor_for(
                    network, volumes.new_zeros((1, volumes.shape[1], *run_size), dtype=torch.float32)
                )
            else:
                predictor = Predictor("eager", network, dtype=autocast_dtype(volumes.device, self.precision))
            output = self._run_volumes(predictor, volumes, index, chunk)
            predictor, output = self._guarded(predictor, volumes, index, output, chunk)
        if output is None:  # no brain anywhere: run the network once to learn the number of outputs
            out = Predictor("eager", network)(volumes[:1, :, :, :, 0].float())
            output = torch.full(
                (batch, out.shape[1], height, width, depth), self.background_logit, device=volumes.device
            )
        if predictor is not None:
            self.active_backend, self.active_dtype = predictor.name, predictor.dtype
        output = torch.movedim(output, -1, 2 + self.spatial_dim)
        if isinstance(inputs, torch.Tensor) and hasattr(inputs, "meta"):
            output, *_ = convert_to_dst_type(output, inputs, dtype=torch.float32)
        return output
