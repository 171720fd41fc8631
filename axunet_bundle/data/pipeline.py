# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
The transforms that put a case into the bundle's chains: its files loaded (:class:`LoadCased`, MONAI's
``LoadImaged`` with each modality's file read apart and resampled onto the reference modality's grid where it lies
on another), the model's modalities taken out of a multi-channel image (:class:`SelectModalitiesd`), then the
voxels checked, the one read of them that checks (:class:`ValidateCased`), each failure a
:class:`~axunet_bundle.errors.CaseError` naming case and file; and the label maps <-> region masks in each item's
label convention (:class:`LabelsToRegionsd`, :class:`RegionsToLabelsd`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, ResampleToMatch
from monai.utils import ImageMetaKey, TransformBackends, convert_to_numpy, ensure_tuple

from ..errors import CaseError
from ..settings import AUTO_GRID, resolve_grid_modality
from .cases import DEFAULT_MODALITIES, case_id_from_path, case_of_file, convention_for_names, validate_modalities
from .integrity import channel_problems, image_problems, label_problems, same_grid, spatial_shape
from .labels import AUTO, labels_to_regions, regions_to_labels, resolve_convention, validate_convention

__all__ = [
    "CASE_ID_KEY",
    "CHANNELS_KEY",
    "REFERENCE_KEY",
    "CONVENTION_KEY",
    "LabelsToRegionsd",
    "LoadCased",
    "RegionsToLabelsd",
    "SelectModalitiesd",
    "ValidateCased",
    "item_convention",
]

#: the item key of a case's id (set by the case discovery; also put in the image's metadata for the written file's name)
CASE_ID_KEY = "case_id"
#: the item key of a multi-channel case's channel index for each modality (from ``dataset.json``)
CHANNELS_KEY = "channels"
#: the item key of an evaluation case's reference label map (a path: the inference chain never loads it)
REFERENCE_KEY = "reference"


def _meta_files(meta: Mapping | None) -> list[str]:
    if not meta or meta.get(ImageMetaKey.FILENAME_OR_OBJ) is None:
        return []
    return [str(f) for f in ensure_tuple(meta[ImageMetaKey.FILENAME_OR_OBJ])]


def _case_id(d: Mapping, files: list[str]) -> str:
    """The case id the item carries (a datalist item's ``"case_id"``), else the one its first file's name gives."""
    if d.get(CASE_ID_KEY) is not None:
        return str(d[CASE_ID_KEY])
    return case_id_from_path(files[0]) if files else "<unknown case>"


def _channel_file(files: list[str], channel: int, modality: str, modalities: Sequence[str]) -> str | None:
    """The file that `channel` (`modality`) was loaded from. A stack keeps one file's metadata (``LoadCased`` the
    reference modality's, MONAI's ``LoadImage`` the first's): the channel's own file is then found beside it by the
    case discovery (only when raising, so the directory listing is cheap)."""
    if len(files) != 1:
        return files[channel] if channel < len(files) else None
    case = case_of_file(files[0], modalities)
    return str(case.images[modality]) if case is not None and modality in case.images else files[0]


class LoadCased(LoadImaged):
    """
    MONAI's ``LoadImaged`` (channel first) that reads each file of an item's list apart, with the reader its format
    needs (NIfTI, NRRD and MetaImage may mix in a case), and stacks them as channels on the grid of the reference
    modality's file (`grid_modality`, T1CE by default), whose metadata the stack keeps (so the segmentation is written
    on that grid): a file on another grid (a thick-slice FLAIR beside a 1 mm T1CE) is resampled onto it with MONAI's
    ``ResampleToMatch`` (trilinear, in the scanner's space; zero outside its field of view), as SlicerMONAIAuto3DSeg
    does. The case check (:func:`~axunet_bundle.data.integrity.check_case`) has refused the grids that share no space
    and logged the others; a single file (a label, a multi-channel image) is loaded as it is: a label is never
    interpolated. MONAI's own ``LoadImaged`` stacks a list only when every file is on one grid; MONAI Label finds this
    class as the ``LoadImaged`` it adapts.

    One modality's file stands for its case: given ``modalities``, a single per-modality file under ``case_key``
    (``BraTS2021_00000_flair.nii.gz``: what MONAI Label's datastore sends when its studies are one modality's files)
    is replaced by the case's files of ``modalities``, found beside it by the case discovery
    (:func:`~axunet_bundle.data.cases.case_of_file`); a multi-channel file, or a name of no modality, loads as it is.

    Args:
        keys: keys of the files to load (a path, or a list of paths to stack, one per modality of `modalities`).
        modalities: the model's modalities: the modality of each file of a list, in order; ``None``: not known, the
            first file's grid is the reference, and a single file is never read as its case.
        grid_modality: the modality whose file's grid the others are resampled onto: one of `modalities`, or
            ``"auto"`` (:func:`~axunet_bundle.settings.resolve_grid_modality`: T1CE where read, else the first).
        case_key: the key whose single per-modality file stands for its case (the image; never the label).
        kwargs: ``LoadImaged``'s; ``ensure_channel_first`` and ``image_only`` default to ``True``.

    Raises:
        ConfigurationError: for unknown modalities, or a `grid_modality` not among them.
        CaseError: (when called) a case file missing beside the given one, naming the case and the file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] | None = None,
        grid_modality: str = AUTO_GRID,
        case_key: str = "image",
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, **{"ensure_channel_first": True, "image_only": True, **kwargs})
        self.modalities = None if modalities is None else validate_modalities(modalities)
        self.reference = 0  # modalities not known: the first file's grid
        if self.modalities is not None:
            self.reference = self.modalities.index(resolve_grid_modality(grid_modality, self.modalities))
        self.resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
        self.case_key = case_key

    def _case_files(self, files: Any) -> Any:
        """The case's files of :attr:`modalities` when ``files`` is one modality's file of a case, else ``files``."""
        single = files[0] if isinstance(files, (list, tuple)) and len(files) == 1 else files
        if self.modalities is None or not isinstance(single, (str, os.PathLike)):
            return files
        case = case_of_file(single, self.modalities)
        if case is None or case.multichannel:
            return files
        missing = case.missing_modalities(self.modalities)
        if missing:
            expected = case.directory / case.expected_file_name(missing[0])
            raise CaseError(
                case.case_id, expected, f"missing {missing[0]} image beside {Path(single).name} in {case.directory}"
            )
        return case.image_files(self.modalities)

    def _stack(self, d: Mapping[Hashable, Any], files: Sequence[Any], reader: Any) -> Any:
        if self.modalities is not None and len(files) != len(self.modalities):
            names = ", ".join(self.modalities)
            raise CaseError(
                _case_id(d, [str(f) for f in files]),
                None,
                f"{len(files)} image files where one per modality ({names}) is expected",
            )
        loaded = [self._loader(f, reader) for f in files]
        images = [x[0] if isinstance(x, (tuple, list)) else x for x in loaded]
        grid = images[self.reference]
        for i, image in enumerate(images):
            if not same_grid(image.shape[1:], image.affine, grid.shape[1:], grid.affine):
                images[i] = self.resample(image, img_dst=grid)
        stacked = MetaTensor(torch.cat([torch.as_tensor(x) for x in images]), meta=grid.meta)
        first = loaded[self.reference]
        return (stacked, first[1]) if isinstance(first, (tuple, list)) else stacked

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            files = self._case_files(d[key]) if key == self.case_key else d[key]
            several = isinstance(files, (list, tuple)) and len(files) > 1
            loaded = self._stack(d, files, reader) if several else self._loader(files, reader)
            if self._loader.image_only:
                d[key] = loaded
            else:  # as LoadImaged: MONAI Label asks for the metadata apart
                d[key], d[meta_key or f"{key}_{meta_key_postfix}"] = loaded
        return d


class ValidateCased(MapTransform):
    """
    Check data already loaded by a MONAI pipeline and raise a :class:`CaseError` naming the case and file.

    Meant to follow ``LoadImaged`` + ``EnsureChannelFirstd``. Each image channel must hold only finite values and
    not be all zero; the label, when present, must match the images' spatial shape and hold only finite values of
    its convention. The data pass through unchanged.

    Args:
        keys: keys of the channel-first images (channels in `modalities` order).
        label_key: key of the ``(1, *spatial)`` label map; skipped when ``None`` or absent (inference data).
        convention: label convention, a key of :data:`axunet_bundle.data.labels.LABEL_CONVENTIONS`, or ``"auto"``
            for each item's own (``item["label_convention"]``, resolved with its label).
        modalities: modality of each image channel, used to name the channel and find its file.
        allow_missing_keys: don't raise if an image key is missing.

    Raises:
        ValueError: for an unknown convention or modality.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        convention: str = AUTO,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.convention = validate_convention(convention, allow_auto=True)
        self.modalities = validate_modalities(modalities)

    def _meta(self, d: Mapping, key: Hashable) -> Mapping | None:
        meta = getattr(d[key], "meta", None)
        return meta if meta is not None else d.get(f"{key}_meta_dict")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Raises:
            CaseError: for the first problem found.
        """
        d = dict(data)
        spatial: tuple[int, ...] | None = None
        for key in self.key_iterator(d):
            files = _meta_files(self._meta(d, key))
            case_id = _case_id(d, files)
            if isinstance(d[key], MetaTensor):  # the prediction inherits it: its file is named after the case
                d[key].meta[CASE_ID_KEY] = case_id
            image = convert_to_numpy(d[key])
            spatial = tuple(image.shape[1:])
            for channel in range(image.shape[0]):
                modality = self.modalities[channel] if channel < len(self.modalities) else f"channel {channel}"
                reasons = image_problems(image[channel], modality)
                if reasons:
                    raise CaseError(case_id, _channel_file(files, channel, modality, self.modalities), reasons[0])
        if self.label_key is not None and self.label_key in d:
            files = _meta_files(self._meta(d, self.label_key))
            case_id = _case_id(d, files)
            label_file = files[0] if files else None
            label = convert_to_numpy(d[self.label_key])
            if label.ndim < 2 or label.shape[0] != 1:
                raise CaseError(case_id, label_file, f"label must have one channel, got shape {label.shape}")
            if spatial is not None and tuple(label.shape[1:]) != spatial:
                raise CaseError(case_id, label_file, f"label shape {label.shape[1:]} differs from image's {spatial}")
            convention = item_convention(d, self.convention, label)
            reasons = label_problems(label, convention)
            if reasons:
                raise CaseError(case_id, label_file, reasons[0])
            d[CONVENTION_KEY] = convention  # resolved with the label: later transforms read it
        return d


class SelectModalitiesd(MapTransform):
    """
    The model's modalities out of a channel-first image that ``LoadImaged`` made of one multi-channel file: the
    channels an item names (``item["channels"]``, from ``dataset.json``), else the image as it is, which must then
    have one channel per modality (the documented order of a multi-channel file without ``dataset.json``: the model's
    modalities, in the model's order, as MONAI Label sends them). Extra singleton spatial dimensions are dropped, so
    ITK's vector layout (``X, Y, Z, 1, C``) gives the same ``(C, X, Y, Z)`` as a 4D ``X, Y, Z, C`` file. Images
    stacked from per-modality files pass unchanged.

    Args:
        keys: keys of the channel-first images.
        modalities: the model's modalities, in order (their count is the channels expected).
        channels_key: the item key holding the channel indices.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        CaseError: naming case, file, channels expected and found, when they do not fit.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        channels_key: str = CHANNELS_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities = validate_modalities(modalities)
        self.channels_key = channels_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            files = _meta_files(getattr(image, "meta", None))
            where = files[0] if files else None
            # the case check's own rules: the same shapes and channel counts refused, in the same words
            spatial, reason = spatial_shape(tuple(image.shape[1:]))
            channels = d.get(self.channels_key)
            needed = None if channels is None else [int(c) for c in ensure_tuple(channels)]
            reasons = [reason] if spatial is None else channel_problems(image.shape[0], needed, self.modalities)
            if reasons:
                raise CaseError(_case_id(d, files), where, reasons[0])
            if tuple(image.shape[1:]) != spatial:  # ITK's vector layout (C, X, Y, Z, 1)
                image = image.reshape(image.shape[0], *spatial)
            if needed is not None:
                image = image[torch.as_tensor(needed)] if isinstance(image, torch.Tensor) else image[needed]
            d[key] = image
        return d


#: the item key that says a case's convention (set by the case discovery: :func:`resolve_convention`'s
#: ``dataset_convention``)
CONVENTION_KEY = "label_convention"


def _item_file(d: Mapping[Hashable, Any]) -> str | None:
    """The first image file of a data item, from a loaded image's metadata or the item's paths."""
    image = d.get("image")
    meta = getattr(image, "meta", None)
    files = meta.get("filename_or_obj") if isinstance(meta, Mapping) else image
    files = files if isinstance(files, (list, tuple)) else [files]
    return str(files[0]) if files and isinstance(files[0], (str, os.PathLike)) else None


def item_convention(d: Mapping[Hashable, Any], convention: str, label: NdarrayOrTensor | None = None) -> str:
    """The convention of one data item: ``convention`` when it names one; under :data:`AUTO` the item's own
    (``d["label_convention"]``, else what its image file names imply), resolved with its label when given."""
    dataset_convention = d.get(CONVENTION_KEY) or convention_for_names(_item_file(d))
    return resolve_convention(convention, dataset_convention, label)


class _ConventionMapd(MapTransform):
    """Base of the dictionary-based label/region converters (arguments: theirs): applies :attr:`function` with each
    item's convention."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    #: whether the converted data are label maps (that tell a BraTS 2024 case apart, see resolve_convention)
    reads_labels: bool
    #: (data, convention) -> converted data
    function: Callable[[NdarrayOrTensor, str], NdarrayOrTensor]

    def __init__(self, keys: KeysCollection, convention: str = AUTO, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention = validate_convention(convention, allow_auto=True)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            convention = item_convention(d, self.convention, d[key] if self.reads_labels else None)
            d[key] = self.function(d[key], convention)
        return d


class LabelsToRegionsd(_ConventionMapd):
    """
    Dictionary-based :func:`labels_to_regions`: ``(1, *spatial)`` label maps -> ``(3, *spatial)`` WT/TC/ET masks.

    Args:
        keys: keys of the label maps to convert.
        convention: label convention of the inputs, a key of :data:`LABEL_CONVENTIONS`, or :data:`AUTO`.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ConfigurationError: for an unknown convention.
    """

    reads_labels = True
    function = staticmethod(labels_to_regions)


class RegionsToLabelsd(_ConventionMapd):
    """
    Dictionary-based :func:`regions_to_labels`: ``(3, *spatial)`` binary WT/TC/ET masks -> ``(1, *spatial)`` labels.

    Args:
        keys: keys of the region masks to convert.
        convention: label convention of the outputs, a key of :data:`LABEL_CONVENTIONS`, or :data:`AUTO` for
            each case's own dataset's.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ConfigurationError: for an unknown convention.
    """

    reads_labels = False
    function = staticmethod(regions_to_labels)
