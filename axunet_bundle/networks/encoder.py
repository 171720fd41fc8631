# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""A timm backbone as a multi-scale feature encoder, with ImageNet or local weights."""

from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
from torch import nn

from ..errors import ConfigurationError
from ..weights import IMAGENET_CHANNELS, PretrainedWeightsError, check_encoder_weights

__all__ = ["TimmEncoder", "DEFAULT_BACKBONE", "load_encoder_weights"]

#: Chollet's Keras Xception (the Xception of the AXUNet paper); timm ships its ImageNet weights.
DEFAULT_BACKBONE = "legacy_xception"
#: The four maps AXUNet uses: strides 4, 8, 16 and 32 (index 0, stride 2, is computed but not returned).
DEFAULT_OUT_INDICES = (1, 2, 3, 4)


class TimmEncoder(nn.Module):
    """timm ``features_only`` backbone returning feature maps from fine to coarse.

    ``legacy_xception`` returns (channels @ stride) 64@2, 128@4, 256@8, 728@16, 2048@32. Its stem convolutions are
    unpadded, so maps are not exact fractions of the input (224 -> 109, 55, 28, 14, 7); decoders must resize.

    Args:
        backbone: timm model name.
        in_channels: input channels; timm adapts the 3-channel ImageNet stem when weights are loaded.
        out_indices: which of the backbone's feature maps to return.
        pretrained: load timm's ImageNet weights through timm's hub path (needs network access or timm's cache).
        pretrained_path: a local timm-format weights file (state dict of the timm classification model, ``.pth``
            or ``.safetensors``; the classifier may be present or not). Takes precedence over ``pretrained``.

    Raises:
        PretrainedWeightsError: the weights cannot be downloaded, or the file does not fit the backbone.
        ConfigurationError: ``pretrained`` is not a bool (e.g. the string a command line passes for ``false``).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        in_channels: int = IMAGENET_CHANNELS,
        out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
        pretrained: bool = False,
        pretrained_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self._kwargs = dict(features_only=True, out_indices=tuple(out_indices), in_chans=in_channels)
        self.body = timm.create_model(backbone, **self._kwargs)
        self.feature_info = self.body.feature_info
        self.load_pretrained(pretrained, pretrained_path)

    def load_pretrained(self, pretrained: bool = False, pretrained_path: str | os.PathLike | None = None) -> None:
        """Replace the backbone's weights by timm's ImageNet weights (``pretrained``) or a local timm weights file
        (``pretrained_path``, taking precedence); with neither, nothing changes. timm loads them (its hub, its cache
        or the file), adapting the 3-channel stem to ``in_channels``.

        Raises:
            PretrainedWeightsError: the weights cannot be downloaded, or the file does not fit the backbone.
            ConfigurationError: ``pretrained`` is not a bool (e.g. the string a command line passes for ``false``).
        """
        if not isinstance(pretrained, bool):
            raise ConfigurationError(f"pretrained must be True or False, got {pretrained!r}")
        kwargs = dict(self._kwargs)
        if pretrained_path is not None:
            pretrained_path = os.fspath(pretrained_path)
            check_encoder_weights(self.backbone, pretrained_path)
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_path))
        elif pretrained:
            kwargs.update(pretrained=True)
        else:
            return
        try:
            loaded = timm.create_model(self.backbone, **kwargs)
        except OSError as err:  # URLError, socket and HTTP errors are all OSErrors
            raise PretrainedWeightsError(
                f"could not download the ImageNet weights of timm '{self.backbone}' ({err}); "
                "give a local timm weights file (--pretrained_path FILE) or train from scratch (--pretrained False)"
            ) from err
        self.body.load_state_dict(loaded.state_dict())

    @property
    def channels(self) -> list[int]:
        """Channels of the returned maps, fine to coarse."""
        return list(self.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def load_encoder_weights(
    network: nn.Module, pretrained: bool = False, pretrained_path: str | os.PathLike | None = None
) -> nn.Module:
    """Load ImageNet (or local timm) weights into every :class:`TimmEncoder` of ``network``, in place: the training
    config's first step, so that building ``network_def`` (``monai.bundle.load``, MONAI Label, the zoo's checks)
    never downloads anything. A network without a timm encoder is returned unchanged.

    Args:
        network: e.g. :class:`~axunet_bundle.networks.AXUNet`, on any device.
        pretrained: timm's ImageNet weights (its hub or cache).
        pretrained_path: a local timm-format weights file; takes precedence over ``pretrained``.

    Returns:
        ``network``.

    Raises:
        PretrainedWeightsError, ConfigurationError: as :meth:`TimmEncoder.load_pretrained`.
    """
    for module in network.modules():
        if isinstance(module, TimmEncoder):
            module.load_pretrained(pretrained, pretrained_path)
    return network
