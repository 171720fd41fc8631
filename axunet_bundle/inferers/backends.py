# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The faster, numerically equivalent ways of running a 2D network that
:class:`~axunet_bundle.inferers.BrainSliceInferer` prepares once per set of weights: ONNX Runtime on CPU (the
export cached on disk, keyed by a hash of the weights), or a copy of the network with BatchNorm folded into the
convolutions in ``channels_last`` format (with bf16/fp16 autocast on CUDA).

The BatchNorm folding finds each convolution -> BatchNorm pair by running an example through the network once;
``tests/test_fast_inference.py`` checks that every BatchNorm of AXUNet is folded.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..atomic import atomic_path
from ..export import ONNX_OPSET, OnnxNetwork, export_onnx

__all__ = [
    "PRECISIONS",
    "Predictor",
    "autocast_dtype",
    "build_onnx_network",
    "default_cache_dir",
    "fuse_batchnorm",
    "prepare_network",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

#: ``"auto"``: bf16 autocast on CUDA (fp16 where bf16 is not supported) and on CPUs with native bf16 (AVX512-BF16,
#: AMX; about 1.9x faster than float32 there), float32 on other CPUs; on CPU the inferer keeps bf16 for a volume only
#: where its labels agree with float32's on check slices (:class:`~axunet_bundle.inferers.BrainSliceInferer`).
#: ``"float32"``: float32 everywhere; ``"bfloat16"``: bf16 autocast wherever it is native, unchecked.
PRECISIONS = ("auto", "float32", "bfloat16")
#: environment variable naming the folder of cached ONNX exports; ``~/.cache/axunet_bundle/onnx`` otherwise
CACHE_ENV = "AXUNET_BUNDLE_CACHE"
#: at most this many cached exports are kept (oldest removed first): training changes the weights every epoch
MAX_CACHED_EXPORTS = 4
ONNX_SUFFIX = ".onnx"
_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and not (bn._forward_hooks or bn._forward_pre_hooks or conv._forward_hooks)  # hooks would see other values
        and conv.out_channels == bn.num_features
    )


def fuse_batchnorm(module: nn.Module, example: torch.Tensor) -> int:
    """Fold eval-mode ``BatchNorm2d`` layers into the convolution whose output they normalise, in place.

    The pairs are found by running ``example`` through ``module`` once: a BN is folded when its input is the very
    tensor a ``Conv2d``/``ConvTranspose2d`` returned and no other module reads that tensor, so no knowledge of the
    modules' classes is needed (timm's Xception, MONAI's ``Convolution`` + ``ADN``). The preparation check of
    :class:`~axunet_bundle.inferers.BrainSliceInferer` catches a conv output that plain code (``x + y``) also reads.
    Each folded BN becomes ``Identity``.

    Args:
        module: a network in eval mode (BNs in training mode are left alone).
        example: an input of ``module``, e.g. ``(1, C, H, W)`` zeros; its values do not matter.

    Returns:
        the number of BatchNorm layers folded.
    """
    names = {m: name for name, m in module.named_modules()}
    conv_outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensors stay alive: ids stay unique
    readers: dict[int, list[nn.Module]] = {}

    def wrote(conv: nn.Module, args: tuple, out: torch.Tensor) -> None:
        conv_outputs[id(out)] = conv, out

    def read(reader: nn.Module, args: tuple) -> None:
        for arg in args:
            if id(arg) in conv_outputs and conv_outputs[id(arg)][1] is arg and not list(reader.children()):
                readers.setdefault(id(arg), []).append(reader)

    handles = [m.register_forward_pre_hook(read) for m in module.modules()]
    handles += [m.register_forward_hook(wrote) for m in module.modules() if isinstance(m, _CONV_TYPES)]
    modes = {m: m.training for m in module.modules()}
    try:
        with torch.no_grad():
            module.eval()(example)  # eval: the run must not update running statistics
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.train(training)
    fused = 0
    for key, (conv, _) in conv_outputs.items():
        bn = readers.get(key, [None])
        if len(bn) == 1 and _fusable(conv, bn[0]):
            folded = fuse_conv_bn_eval(conv, bn[0], transpose=isinstance(conv, nn.ConvTranspose2d))
            conv.weight, conv.bias = folded.weight, folded.bias
            module.set_submodule(names[bn[0]], nn.Identity())
            fused += 1
    return fused


def prepare_network(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``network`` for inference: eval mode, no gradients, BatchNorm folded into convolutions
    (:func:`fuse_batchnorm`) and ``channels_last`` memory format.

    Feed it ``channels_last`` inputs (``x.contiguous(memory_format=torch.channels_last)``) for full speed; it gives
    the same outputs as ``network.eval()`` up to float rounding.

    Args:
        network: the network, with its weights loaded (BN folding freezes the current weights).
        example: an input of ``network`` on its device, e.g. ``(1, C, H, W)`` zeros (see :func:`fuse_batchnorm`).
    """
    prepared = copy.deepcopy(network).eval().requires_grad_(False)
    logger.debug("folded %d BatchNorm layers into convolutions", fuse_batchnorm(prepared, example))
    return prepared.to(memory_format=torch.channels_last)


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
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # the raw bytes
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
                export_onnx(network, example, partial, verify=False)
            _prune_cache(folder)
            return OnnxNetwork(path, threads=threads)
        except OSError as err:
            logger.info("cannot cache the ONNX export in %s (%s); using a temporary file", folder, err)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(network, example, Path(tmp) / f"model{ONNX_SUFFIX}", verify=False)
        return OnnxNetwork(path, threads=threads)  # the session holds the model: the file can go


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
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if _cpu_bf16_supported():
            return torch.bfloat16
        if precision == "bfloat16":
            logger.warning("this CPU has no native bfloat16 (AVX512-BF16/AMX): running float32")
    return None


class Predictor:
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

    def with_dtype(self, dtype: torch.dtype | None) -> Predictor:
        """The same network under another autocast dtype (``None``: float32)."""
        return Predictor(self.name, self.fn, channels_last=self.channels_last, dtype=dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.dtype
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.fn(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.float()
