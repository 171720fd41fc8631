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
  * ``precision="bfloat16"`` (opt-in) runs bf16 autocast on CPUs with native bf16 too: about 1.9x faster than
    float32 on an AVX512-BF16 CPU, with logits that differ by up to ~1% of their range;

- checks the prepared network against the plain one on the first brain slice it sees and falls back
  (ONNX Runtime -> torch -> the plain network) with a warning when the export fails or the outputs differ by more
  than ``atol + rtol * |plain|``.

Nothing needs to be configured: ``backend="auto"`` is the fast path. ``backend="eager"`` gives the plain network
(with slice skipping and batching), for debugging. On a 2-core AMD EPYC (fp32, 224 x 224 slices) the eager network
takes ~165-210 ms per slice, the folded ``channels_last`` copy ~120-130 ms and ONNX Runtime ~95-110 ms
(see docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import convert_to_dst_type, ensure_tuple, optional_import
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .atomic import atomic_path
from .export import ONNX_OPSET, OnnxNetwork, export_onnx
from .progress import progress as show_progress

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "autocast_dtype",
    "DEFAULT_BACKGROUND_LOGIT",
    "BrainSliceInferer",
    "brain_slice_mask",
    "default_cache_dir",
    "fuse_batchnorm",
    "prepare_network",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

#: ``"auto"``: ONNX Runtime on CPU when available, else the prepared torch network; ``"onnxruntime"``, ``"torch"``:
#: that one (still falling back when it fails); ``"eager"``: the network as given.
BACKENDS = ("auto", "onnxruntime", "torch", "eager")
#: logit given to every voxel of a skipped (all-zero) slice: sigmoid(-20) ~ 2e-9, representable in fp16 and bf16
DEFAULT_BACKGROUND_LOGIT = -20.0
#: slices per forward pass on CPU: one per torch thread, at least this many. On a 2-core CPU batches of 1-2 slices
#: run fastest (a slice's activations stay in cache; larger batches are slower per slice) and keep ONNX Runtime's
#: memory arena small (batch 8 adds ~0.8 GB)
DEFAULT_CPU_BATCH = 2
#: slices per forward pass on CUDA: large batches keep the GPU busy
DEFAULT_CUDA_BATCH = 64
#: ``"auto"``: float32 on CPU, bf16 autocast on CUDA (fp16 where bf16 is not supported); ``"float32"``: float32
#: everywhere; ``"bfloat16"``: bf16 autocast everywhere. On a CPU with native bf16 (AVX512-BF16, AMX) that runs the
#: torch backend about 1.9x faster than float32, with logits that differ by up to ~1% of their range: opt-in only.
PRECISIONS = ("auto", "float32", "bfloat16")
#: the prepared network must match the plain one within ``atol + rtol * |plain|`` on the first brain slice
VERIFY_ATOL = 1e-3
VERIFY_RTOL = 1e-3
#: under bf16/fp16 autocast (CUDA) both sides of that check round differently; the tolerances are scaled by this
LOW_PRECISION_TOLERANCE_SCALE = 50.0
#: environment variable naming the folder of cached ONNX exports; ``~/.cache/axunet_bundle/onnx`` otherwise
CACHE_ENV = "AXUNET_BUNDLE_CACHE"
#: at most this many cached exports are kept (oldest removed first): training changes the weights every epoch
MAX_CACHED_EXPORTS = 4
HASH_CHUNK = 1 << 24
ONNX_SUFFIX = ".onnx"
#: modules whose children run one after the other in registration order (outputs flow only to the next child)
_SEQUENTIAL_TYPES: tuple[type, ...] = (nn.Sequential,)
#: timm modules with (conv attribute, batch-norm attribute) pairs applied back to back in their ``forward``
_ATTRIBUTE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "Xception": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv4", "bn4")),
    "Block": (("skip", "skipbn"),),
}
#: timm modules whose output is the output of one of their convolutions (``SeparableConv2d``: depthwise, pointwise)
_LAST_CONV: dict[str, str] = {"SeparableConv2d": "pointwise"}
_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


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


def _is_timm(module: nn.Module, name: str) -> bool:
    return type(module).__name__ == name and type(module).__module__.startswith("timm.")


def _last_conv(module: nn.Module) -> nn.Module | None:
    """The convolution whose output is ``module``'s output, when that is known from the module's structure."""
    if isinstance(module, _CONV_TYPES):
        return module
    if isinstance(module, _SEQUENTIAL_TYPES) and len(module) > 0:
        return _last_conv(module[-1])
    for name, attribute in _LAST_CONV.items():
        if _is_timm(module, name):
            return _last_conv(getattr(module, attribute))
    return None


def _first_batchnorm(module: nn.Module) -> tuple[nn.Module, str, nn.BatchNorm2d] | None:
    """(parent, attribute, BN) when ``module`` is, or is a Sequential that starts with, an eval-mode BatchNorm2d."""
    if isinstance(module, _SEQUENTIAL_TYPES) and len(module) > 0:
        first_name = next(iter(module._modules))
        if isinstance(module[0], nn.BatchNorm2d):
            return module, first_name, module[0]
        return _first_batchnorm(module[0])
    return None


def _fusable(conv: nn.Module | None, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONV_TYPES)
        and isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and not (bn._forward_hooks or bn._forward_pre_hooks or conv._forward_hooks)  # hooks would see other values
        and conv.out_channels == bn.num_features
    )


def _fuse_into(conv: nn.Module, parent: nn.Module, name: str) -> None:
    bn = getattr(parent, name)
    fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
    conv.weight, conv.bias = fused.weight, fused.bias
    setattr(parent, name, nn.Identity())


def fuse_batchnorm(module: nn.Module) -> int:
    """Fold eval-mode ``BatchNorm2d`` layers into the convolution whose output they normalise, in place.

    Only pairs whose data flow is certain from the structure are fused: a convolution (or a module known to end
    with one) directly followed by a BN in an ``nn.Sequential`` (MONAI ``Convolution`` + ``ADN`` included), and
    timm Xception's ``convN``/``bnN`` and ``skip``/``skipbn`` attribute pairs. Each fused BN becomes ``Identity``.

    Args:
        module: a network in eval mode (BNs in training mode are left alone).

    Returns:
        the number of BatchNorm layers folded.
    """
    fused = 0
    for parent in list(module.modules()):
        if isinstance(parent, _SEQUENTIAL_TYPES):
            children = list(parent._modules.items())
            for (_, first), (second_name, second) in zip(children, children[1:]):
                found = (parent, second_name, second) if isinstance(second, nn.BatchNorm2d) else None
                found = found or _first_batchnorm(second)
                conv = _last_conv(first)
                if found is not None and _fusable(conv, found[2]):
                    _fuse_into(conv, found[0], found[1])
                    fused += 1
        for class_name, pairs in _ATTRIBUTE_PAIRS.items():
            if _is_timm(parent, class_name):
                for conv_name, bn_name in pairs:
                    conv = _last_conv(getattr(parent, conv_name, None) or nn.Identity())
                    if _fusable(conv, getattr(parent, bn_name, None)):
                        _fuse_into(conv, parent, bn_name)
                        fused += 1
    return fused


def prepare_network(
    network: nn.Module, channels_last: bool = True, fuse_bn: bool = True, inplace: bool = False
) -> nn.Module:
    """A copy of ``network`` for inference: eval mode, no gradients, BatchNorm folded into convolutions
    (:func:`fuse_batchnorm`) and ``channels_last`` memory format.

    Feed it ``channels_last`` inputs (``x.contiguous(memory_format=torch.channels_last)``) for full speed; it gives
    the same outputs as ``network.eval()`` up to float rounding.

    Args:
        network: the network, with its weights loaded (BN folding freezes the current weights).
        channels_last: convert parameters to ``torch.channels_last``.
        fuse_bn: fold BatchNorm layers into convolutions.
        inplace: modify ``network`` itself instead of a deep copy (it then no longer trains correctly).
    """
    prepared = network if inplace else copy.deepcopy(network)
    prepared.eval().requires_grad_(False)
    if fuse_bn:
        count = fuse_batchnorm(prepared)
        logger.debug("folded %d BatchNorm layers into convolutions", count)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


def weights_fingerprint(network: nn.Module, extra: Sequence[Any] = ()) -> str:
    """SHA-256 of the network's class, structure, parameters and buffers (names, dtypes, shapes, values).

    Args:
        network: the network.
        extra: more values to hash (e.g. the input shape and versions an export depends on).
    """
    hasher = hashlib.sha256()
    hasher.update(f"{type(network).__module__}.{type(network).__qualname__}\n{network!r}\n{list(extra)!r}".encode())
    for name, tensor in network.state_dict().items():
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        data = tensor.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        flat = data.numpy().reshape(-1).view(np.uint8) if data.numel() else np.zeros(0, np.uint8)
        for start in range(0, flat.size, HASH_CHUNK):
            hasher.update(flat[start : start + HASH_CHUNK])
    return hasher.hexdigest()


def default_cache_dir() -> Path:
    """Folder of cached ONNX exports: ``$AXUNET_BUNDLE_CACHE``, else ``$XDG_CACHE_HOME/axunet_bundle/onnx``, else
    ``~/.cache/axunet_bundle/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "axunet_bundle" / "onnx"


def _prune_cache(folder: Path, keep: int = MAX_CACHED_EXPORTS) -> None:
    files = sorted(folder.glob(f"*{ONNX_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def build_onnx_network(
    network: nn.Module,
    example: torch.Tensor,
    cache_dir: str | os.PathLike | bool | None = None,
    threads: int | None = None,
) -> OnnxNetwork:
    """Export ``network`` (eval mode) to ONNX at the shape of ``example`` (dynamic batch) and open it with ONNX
    Runtime; reuse a cached export of the same weights and input shape when there is one.

    Args:
        network: the network, on CPU, in eval mode.
        example: a ``(N, C, H, W)`` input; the export has its C, H and W.
        cache_dir: folder of cached exports (``None``: :func:`default_cache_dir`; ``False``: export to a temporary
            file every time). An unwritable folder also means a temporary file.
        threads: ONNX Runtime intra-op threads (default: torch's).
    """
    example = example[:1].detach().to("cpu", torch.float32).contiguous()
    if cache_dir is not False:
        folder = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        key = weights_fingerprint(network, extra=(tuple(example.shape[1:]), torch.__version__, ONNX_OPSET))
        path = folder / f"{type(network).__name__.lower()}-{key[:32]}{ONNX_SUFFIX}"
        if path.is_file():
            try:
                os.utime(path)  # most recently used: pruned last
                return OnnxNetwork(path, threads=threads)
            except Exception as err:  # a truncated or foreign file: export again
                logger.warning("cached ONNX export %s unusable (%s); exporting again", path, err)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as partial:  # concurrent runs never read a half-written file
                export_onnx(network, example, partial)
            _prune_cache(folder)
            return OnnxNetwork(path, threads=threads)
        except OSError as err:
            logger.info("cannot cache the ONNX export in %s (%s); using a temporary file", folder, err)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(network, example, Path(tmp) / f"model{ONNX_SUFFIX}")
        return OnnxNetwork(path, threads=threads)  # the session holds the model: the file can go


def _on_cpu(network: nn.Module) -> bool:
    tensors = list(network.parameters()) + list(network.buffers())
    return all(t.device.type == "cpu" for t in tensors)


def _state_token(network: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer step, load_state_dict)."""
    tensors = list(network.parameters()) + list(network.buffers())
    return (
        network.training,
        torch.get_num_threads(),
        tuple((id(t), t._version, t.device.type, t.dtype) for t in tensors),
    )


def _cpu_bf16_supported() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # an op missing from this build
        return False


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype the inferer uses on ``device`` for ``precision`` (``None``: float32, no autocast).

    Args:
        device: where the network runs.
        precision: one of :data:`PRECISIONS`.
    """
    device = torch.device(device)
    if precision == "float32" or (device.type == "cpu" and precision == "auto"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and precision == "bfloat16":
        if _cpu_bf16_supported():
            return torch.bfloat16
        logger.warning("this CPU has no native bfloat16 (AVX512-BF16/AMX): running float32")
    return None


class _Predictor:
    """A prepared network as a ``(N, C, H, W) -> (N, out, H, W)`` float32 callable, with its backend's name."""

    def __init__(
        self,
        name: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        channels_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.channels_last = channels_last
        self.dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.dtype
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.fn(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.float()


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
        precision: one of :data:`PRECISIONS` (``"auto"``: float32 on CPU, bf16 autocast on CUDA).
        cache_dir: folder of cached ONNX exports (``None``: :func:`default_cache_dir`; ``False``: none).
        overlap: sliding-window overlap, only used when slices are not ``roi_size``.
        atol: absolute tolerance of the first-use check of the prepared network against the plain one.
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
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
        self._predictor: _Predictor | None = None
        self._pending_check = False
        #: name of the backend the last call ran (``"onnxruntime"``, ``"torch"`` or ``"eager"``)
        self.active_backend: str | None = None

    # ---------------------------------------------------------------------------------------- preparation
    def _candidates(self, network: nn.Module, device: torch.device, dtype: torch.dtype | None) -> list[str]:
        if self.backend == "eager" or network.training:  # BN folding and export assume eval mode
            return ["eager"]
        order = {"auto": ["onnxruntime", "torch"], "onnxruntime": ["onnxruntime", "torch"], "torch": ["torch"]}
        names = order[self.backend]
        low_precision = dtype is not None  # the ONNX export runs float32
        if device.type != "cpu" or low_precision or not _on_cpu(network) or not optional_import("onnxruntime")[1]:
            names = [n for n in names if n != "onnxruntime"]
        return names + ["eager"]

    def _build(self, name: str, network: nn.Module, example: torch.Tensor, dtype: torch.dtype | None) -> _Predictor:
        if name == "onnxruntime":
            session = build_onnx_network(network, example, cache_dir=self.cache_dir)
            return _Predictor(name, session)
        if name == "torch":
            return _Predictor(name, prepare_network(network), channels_last=True, dtype=dtype)
        return _Predictor(name, network, dtype=dtype)

    def _predictor_for(self, network: nn.Module, example: torch.Tensor) -> _Predictor:
        """The prepared network for ``network``'s current weights and ``example``'s (C, H, W), built when needed."""
        token = (_state_token(network), tuple(example.shape[1:]), example.device)
        cached = self._network_ref() if self._network_ref is not None else None
        if cached is network and token == self._token and self._predictor is not None:
            return self._predictor
        self._predictor, self._pending_check = None, False
        dtype = autocast_dtype(example.device, self.precision)  # once: it warns when the CPU lacks bf16
        for name in self._candidates(network, example.device, dtype):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._predictor = self._build(name, network, example, dtype)
                break
            except Exception as err:  # an export or session failure must never stop inference
                logger.warning("inference backend %s unavailable (%s: %s); falling back", name, type(err).__name__, err)
        self._pending_check = self._predictor.name != "eager"
        self._network_ref, self._token = weakref.ref(network), token
        return self._predictor

    def _checked(self, network: nn.Module, predictor: _Predictor, x: torch.Tensor) -> tuple[_Predictor, torch.Tensor]:
        """Run ``predictor`` on ``x``; on first use also check its first slice against the plain network."""
        out = self._run_slices(predictor, x)
        if not self._pending_check:
            return predictor, out
        self._pending_check = False
        reference = self._run_slices(_Predictor("eager", network, dtype=predictor.dtype), x[:1])  # same autocast
        got = out[:1].to(reference.device)
        error = (got - reference).abs()
        scale = LOW_PRECISION_TOLERANCE_SCALE if predictor.dtype is not None else 1.0
        bound = scale * (self.atol + self.rtol * reference.abs())
        ok = bool(torch.isfinite(got).all()) and bool((error <= bound).all())
        if ok:
            return predictor, out
        logger.warning(
            "inference backend %s differs from the plain network by up to %.3g; using the plain network",
            predictor.name,
            float(error.max()),
        )
        self._predictor = _Predictor("eager", network, dtype=predictor.dtype)
        return self._predictor, self._run_slices(self._predictor, x)

    # ---------------------------------------------------------------------------------------- inference
    def _run_slices(self, predictor: _Predictor, x: torch.Tensor) -> torch.Tensor:
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
        starts = show_progress(
            range(0, len(index), chunk), desc="slices", unit="batch", leave=False, enabled=self.progress
        )
        output: torch.Tensor | None = None
        predictor = None
        for start in starts:
            b, s = index[start : start + chunk].unbind(1)
            x = volumes[b, :, :, :, s].float()  # (n, C, h, w)
            if predictor is None:
                if isinstance(network, nn.Module):
                    run_size = self.roi_size or (height, width)  # slices are run (or tiled) at this size
                    predictor = self._predictor_for(network, x[:1].new_zeros((1, x.shape[1], *run_size)))
                else:
                    predictor = _Predictor("eager", network, dtype=autocast_dtype(x.device, self.precision))
            if self._pending_check and isinstance(network, nn.Module):
                predictor, y = self._checked(network, predictor, x)
            else:
                y = self._run_slices(predictor, x)
            if output is None:
                output = torch.full(
                    (batch, y.shape[1], height, width, depth), self.background_logit, device=volumes.device
                )
            output[b, :, :, :, s] = y.to(output.device)
        if output is None:  # no brain anywhere: run the network once to learn the number of outputs
            probe = volumes[:1, :, :, :, 0].float()
            with torch.inference_mode():
                out = network(probe)
            out = out[0] if isinstance(out, (list, tuple)) else out
            output = torch.full(
                (batch, out.shape[1], height, width, depth), self.background_logit, device=volumes.device
            )
        self.active_backend = predictor.name if predictor is not None else self.active_backend
        output = torch.movedim(output, -1, 2 + self.spatial_dim)
        if isinstance(inputs, torch.Tensor) and hasattr(inputs, "meta"):
            output, *_ = convert_to_dst_type(output, inputs, dtype=torch.float32)
        return output
