# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The network as ONNX: its export (MONAI's ``convert_to_onnx``, the batch dimension dynamic) and the exported model
run by ONNX Runtime wherever the bundle expects the network. The command line's TorchScript export and its checks are
:mod:`axunet_bundle.cli.exports`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.networks.utils import convert_to_onnx
from torch import nn

from .errors import ConfigurationError

__all__ = ["MissingExtraError", "OnnxModelMissingError", "require_onnx", "export_onnx", "OnnxNetwork", "ONNX_OPSET"]

#: An opset that onnxruntime and the legacy TorchScript-based exporter both support well.
ONNX_OPSET = 17
#: largest relative and absolute difference from the eager network that ``export_onnx`` accepts
ONNX_TOLERANCE = 1e-4
#: onnxruntime's ``log_severity_level`` for errors only (0 verbose ... 4 fatal)
ONNXRUNTIME_ERRORS_ONLY = 3
#: the packages ONNX export and inference need: the package's extra "export"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


class MissingExtraError(ConfigurationError, ImportError):
    """An optional package the asked-for step needs is not installed."""


def require_onnx(packages: tuple[str, ...] = ONNX_PACKAGES) -> None:
    """Check that ``packages`` can be imported, before any work.

    Raises:
        MissingExtraError: one line naming the missing packages and the extra that installs them.
    """
    import importlib.util

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"ONNX needs {', '.join(missing)}, not installed: pip install 'axunet_bundle[export]' "
            "(or, from a checkout, pip install -e '.[export]')"
        )


def export_onnx(net: nn.Module, example: torch.Tensor, path: str | os.PathLike, verify: bool = True) -> Path:
    """Export ``net`` to ONNX at ``path`` with input ``image`` and output ``pred`` (dynamic batch), by MONAI's
    ``convert_to_onnx``; with ``verify`` it runs the file in onnxruntime and raises ``AssertionError`` when it differs
    from the eager network on ``example`` by more than :data:`ONNX_TOLERANCE` (relative and absolute). The inferer
    exports without ``verify``: it checks the first slice itself, and MONAI's check re-seeds the global generators.

    Raises:
        MissingExtraError: onnx (or, to verify, onnxruntime) is not installed.
    """
    require_onnx(ONNX_PACKAGES if verify else ("onnx",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_to_onnx(
            net.eval(),
            [example],
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
            opset_version=ONNX_OPSET,
            filename=os.fspath(path),
            verify=verify,
            device=example.device,
            use_ort=True,
            rtol=ONNX_TOLERANCE,
            atol=ONNX_TOLERANCE,
            dynamo=False,  # the TorchScript-based exporter handles timm's feature hooks
        )
    return Path(path)


class OnnxModelMissingError(ConfigurationError, FileNotFoundError):
    """The ONNX file to run does not exist."""


class OnnxNetwork(nn.Module):
    """
    An exported ONNX model run by onnxruntime, usable wherever the bundle expects the network (MONAI inferers and
    engines call it like a module): ``configs/inference_onnx.json`` runs the inference workflow on it, and the
    default inference path (:class:`axunet_bundle.inferers.BrainSliceInferer`) runs its cached exports with it.

    Args:
        path: the ``.onnx`` file (from ``python -m axunet_bundle export``), exported at the slice size it will see.
        providers: onnxruntime execution providers, in order of preference.
        threads: intra-op threads (``None``: torch's thread count, so both paths run under the same settings).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> None:
        super().__init__()
        require_onnx(("onnxruntime",))
        import onnxruntime  # optional dependency (extra "export")

        path = Path(path)
        if not path.is_file():
            raise OnnxModelMissingError(f"no ONNX model at {path}: write it with `axunet export` (or give --onnx_path)")
        self.path = path
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1  # one graph branch at a time: the intra-op threads already fill the cores
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = ONNXRUNTIME_ERRORS_ONLY
        self.session = onnxruntime.InferenceSession(os.fspath(path), options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = x.as_tensor() if hasattr(x, "as_tensor") else x  # MONAI's MetaTensor: the plain tensor
        array = np.ascontiguousarray(data.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(x.device)
