# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Pictures: panel rendering, overlays (geometry, orientation, NIfTI reorientation), Dice box plots, training curves
and attention maps."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from axunet_bundle import AXUNet
from axunet_bundle import visualize as viz
from axunet_bundle.networks import DualAttention
from axunet_bundle.visualize import BOXPLOT_FAMILIES as FAMILIES

# (R, G, B) bounds of a clearly coloured pixel, uint8; anti-aliased blends with grey fail them, as grey pixels do
YELLOW = ((200, 256), (200, 256), (0, 90))
RED = ((200, 256), (0, 80), (0, 80))
SKY_BLUE = ((0, 80), (150, 256), (200, 256))
EDGE_TOLERANCE = 3  # px: contour line width plus rendering snap
DASH_TOLERANCE = 8  # px: a dashed contour may end a gap short of the corner
SLICE_SIZE = 64  # the smallest input AXUNet's stride-32 map supports


def colour_mask(rgb: np.ndarray, bounds) -> np.ndarray:
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:  # matplotlib reads PNGs as floats in [0, 1]
        rgb = np.rint(rgb * 255).astype(np.int32)
    out = np.ones(rgb.shape[:2], dtype=bool)
    for channel, (low, high) in enumerate(bounds):
        out &= (rgb[..., channel] >= low) & (rgb[..., channel] < high)
    return out


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel edges (bottom/right exclusive) of the True pixels."""
    rows, cols = np.nonzero(mask)
    assert rows.size, "no pixels of the colour"
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def assert_box(found, expected, tolerance: float = EDGE_TOLERANCE) -> None:
    assert np.allclose(found, expected, atol=tolerance), f"bounding box {found} != expected {expected}"


def read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.suffix == ".png"
    return mpimg.imread(path)


def size_px(width_inches: float, height_inches: float) -> tuple[int, int]:
    """(rows, cols) of a figure of that size."""
    return round(height_inches * viz.FIGURE_DPI), round(width_inches * viz.FIGURE_DPI)


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.fixture
def noise():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------------------------------
# render_panel


def square_masks(shape, wt, tc=None, et=None) -> np.ndarray:
    """(3, rows, cols) masks; each box is (row0, row1, col0, col1), ends exclusive."""
    masks = np.zeros((3, *shape), dtype=np.float32)
    for channel, box in enumerate((wt, tc, et)):
        if box is not None:
            r0, r1, c0, c1 = box
            masks[channel, r0:r1, c0:c1] = 1
    return masks


def test_render_panel_draws_contours_on_mask_edges(noise):
    ppv = 4
    plane = noise.normal(100, 10, (40, 48))
    wt, tc = (8, 24, 10, 30), (12, 18, 14, 20)
    rgb = viz.render_panel(plane, ground_truth=square_masks(plane.shape, wt, tc), pixels_per_voxel=ppv)
    assert rgb.shape == (40 * ppv, 48 * ppv, 3) and rgb.dtype == np.uint8

    yellow, red = colour_mask(rgb, YELLOW), colour_mask(rgb, RED)
    assert_box(bbox(yellow), [v * ppv for v in wt])
    assert_box(bbox(red), [v * ppv for v in tc])
    assert not colour_mask(rgb, SKY_BLUE).any()  # ET is empty
    # the outline is on the edge only: nothing yellow inside the square away from its edge
    r0, r1, c0, c1 = (v * ppv for v in wt)
    assert not yellow[r0 + EDGE_TOLERANCE : r1 - EDGE_TOLERANCE, c0 + EDGE_TOLERANCE : c1 - EDGE_TOLERANCE].any()
    # and the image is grey elsewhere
    assert yellow.sum() < 2 * (r1 - r0 + c1 - c0) * 2 * EDGE_TOLERANCE


def test_render_panel_prediction_is_dashed_and_masks_at_border_are_closed(noise):
    plane = noise.normal(100, 10, (32, 32))
    masks = square_masks(plane.shape, (0, 12, 20, 32), et=(4, 8, 4, 8))  # WT touches the top and right edges
    solid_rgb = viz.render_panel(plane, ground_truth=masks)
    solid = colour_mask(solid_rgb, YELLOW)
    dashed_rgb = viz.render_panel(plane, prediction=masks)
    dashed = colour_mask(dashed_rgb, YELLOW)
    assert 0.3 * solid.sum() < dashed.sum() < 0.85 * solid.sum()
    assert_box(bbox(dashed), bbox(solid), tolerance=DASH_TOLERANCE)
    # the contour along the image edge is drawn: half of the line lies outside, the other half tints the first row
    top_row = solid_rgb[0, 20 * 4 : 32 * 4].astype(int)
    assert (top_row[:, 0] - top_row[:, 2] > 80).all() and (top_row[:, 0] == top_row[:, 1]).all()
    assert_box(bbox(colour_mask(dashed_rgb, SKY_BLUE)), [16, 32, 16, 32], tolerance=DASH_TOLERANCE)


def test_render_panel_rejects_bad_input():
    with pytest.raises(ValueError, match="2D"):
        viz.render_panel(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="masks"):
        viz.render_panel(np.zeros((8, 8)), ground_truth=np.zeros((3, 8, 9)))
    with pytest.raises(ValueError, match="pixels_per_voxel"):
        viz.render_panel(np.zeros((8, 8)), pixels_per_voxel=0)


# ---------------------------------------------------------------------------------------------------------------------
# overlays


def test_most_tumour_slices():
    mask = np.zeros((20, 30, 40), dtype=bool)
    mask[2:6, 10:12, 5:25] = True  # big cross-section at z 5..24, x 2..5
    mask[15, 25, 30] = True  # a stray voxel elsewhere
    # every x in 2..5 (y in 10..11, z in 5..24) cuts 40 (80, 8) voxels: the one nearest the centroid, which the
    # stray voxel pulls to (3.57, 10.59, 14.60), wins
    assert viz.most_tumour_slices(mask) == (4, 11, 15)
    mask[3, 10, 5:25] = False  # now x = 3 cuts fewest of the four
    assert viz.most_tumour_slices(mask)[0] == 4 and viz.most_tumour_slices(torch.as_tensor(mask))[1] == 11
    assert viz.most_tumour_slices(np.zeros((4, 4, 4))) is None
    with pytest.raises(ValueError, match="3D"):
        viz.most_tumour_slices(np.zeros((4, 4)))


OVERLAY_SHAPE = (64, 64, 32)  # x, y, z
WT_BOX = ((10, 26), (30, 46), (12, 21))  # x, y, z ranges (end exclusive), BraTS 2021 label 2 (edema)
NAMES = ("T1CE", "T2", "FLAIR")


def overlay_inputs(noise, with_label: bool = True):
    image = noise.normal(100, 10, (len(NAMES), *OVERLAY_SHAPE)).astype(np.float32)
    label = np.zeros(OVERLAY_SHAPE, dtype=np.uint8)
    (x0, x1), (y0, y1), (z0, z1) = WT_BOX
    label[x0:x1, y0:y1, z0:z1] = 2
    label[x0 + 4 : x0 + 8, y0 + 4 : y0 + 8, z0 + 2 : z0 + 5] = 4
    return image, label


def axial_panel_box(n_modalities: int, col: int) -> tuple[float, float, float]:
    """(top, left, side) in px of the square image box of the axial (first-row) panel of column `col`."""
    width = max(n_modalities * viz.PANEL_INCHES, viz.MIN_OVERLAY_WIDTH_INCHES)
    x0 = (width - n_modalities * viz.PANEL_INCHES) / 2
    left = x0 + col * viz.PANEL_INCHES + viz.PANEL_MARGIN_INCHES
    top = viz.TITLE_INCHES + viz.PANEL_TITLE_INCHES + viz.PANEL_MARGIN_INCHES
    side = viz.PANEL_INCHES - 2 * viz.PANEL_MARGIN_INCHES
    return top * viz.FIGURE_DPI, left * viz.FIGURE_DPI, side * viz.FIGURE_DPI


def expected_axial_box(box_x, box_y, shape, panel) -> list[float]:
    """Radiological axial view: rows run from anterior (high y) down, columns from the patient's right (high x)."""
    top, left, side = panel
    scale = side / shape[0]  # a square slice fills the square box
    (x0, x1), (y0, y1) = box_x, box_y
    rows = (shape[1] - y1, shape[1] - y0)
    cols = (shape[0] - x1, shape[0] - x0)
    return [top + rows[0] * scale, top + rows[1] * scale, left + cols[0] * scale, left + cols[1] * scale]


def test_overlay_case_size_and_contour_position(tmp_path, noise):
    image, label = overlay_inputs(noise)
    out = viz.overlay_case(image, tmp_path / "sub" / "case.png", NAMES, label=label, title="case 0")
    assert out == tmp_path / "sub" / "case.png"
    png = read_png(out)
    n_views = len(viz.VIEWS)
    height = viz.TITLE_INCHES + n_views * (viz.PANEL_INCHES + viz.PANEL_TITLE_INCHES) + viz.LEGEND_INCHES
    assert png.shape[:2] == size_px(len(NAMES) * viz.PANEL_INCHES, height)
    assert no_partial_files(out.parent)

    for col in range(len(NAMES)):
        top, left, side = panel = axial_panel_box(len(NAMES), col)
        crop = png[int(top) : int(top + side), int(left) : int(left + side)]
        found = np.add(bbox(colour_mask(crop, YELLOW)), [int(top), int(top), int(left), int(left)])
        assert_box(found, expected_axial_box(WT_BOX[0], WT_BOX[1], OVERLAY_SHAPE, panel))
        et_found = np.add(bbox(colour_mask(crop, SKY_BLUE)), [int(top), int(top), int(left), int(left)])
        (x0, _), (y0, _), _ = WT_BOX
        assert_box(et_found, expected_axial_box((x0 + 4, x0 + 8), (y0 + 4, y0 + 8), OVERLAY_SHAPE, panel))
    # the legend shows the region colours
    legend_band = png[-int(viz.LEGEND_INCHES * viz.FIGURE_DPI) :]
    assert colour_mask(legend_band, YELLOW).any()


def test_overlay_case_neurological_mirrors_left_right(tmp_path, noise):
    image, label = overlay_inputs(noise)
    radiological = read_png(viz.overlay_case(image[:1], tmp_path / "r.png", NAMES[:1], label=label))
    neurological = read_png(viz.overlay_case(image[:1], tmp_path / "n.png", NAMES[:1], label=label, radiological=False))
    top, left, side = axial_panel_box(1, 0)
    rows, cols = slice(int(top), int(top + side)), slice(int(left), int(left + side))
    found_r = bbox(colour_mask(radiological[rows, cols], YELLOW))
    found_n = bbox(colour_mask(neurological[rows, cols], YELLOW))
    assert_box(found_r[:2], found_n[:2])  # same rows
    assert_box((found_n[2], found_n[3]), (side - found_r[3], side - found_r[2]))  # mirrored columns


def test_overlay_case_picks_slices_from_prediction_without_label(tmp_path, noise):
    image, label = overlay_inputs(noise)
    regions = np.zeros((3, *OVERLAY_SHAPE), dtype=np.float32)
    regions[0, 40:50, 5:15, 25:30] = 0.9  # probabilities, away from the volume centre (z = 16)
    png = read_png(viz.overlay_case(image, tmp_path / "p.png", NAMES, pred=regions))
    top, left, side = panel = axial_panel_box(len(NAMES), 0)
    crop = png[int(top) : int(top + side), int(left) : int(left + side)]
    found = np.add(bbox(colour_mask(crop, YELLOW)), [int(top), int(top), int(left), int(left)])
    assert_box(found, expected_axial_box((40, 50), (5, 15), OVERLAY_SHAPE, panel), tolerance=DASH_TOLERANCE)


def test_overlay_case_without_masks_and_errors(tmp_path, noise):
    image, label = overlay_inputs(noise)
    png = read_png(viz.overlay_case(image[:2], tmp_path / "plain.png"))
    width = max(2 * viz.PANEL_INCHES, viz.MIN_OVERLAY_WIDTH_INCHES)
    height = viz.TITLE_INCHES + len(viz.VIEWS) * (viz.PANEL_INCHES + viz.PANEL_TITLE_INCHES) + viz.LEGEND_INCHES
    assert png.shape[:2] == size_px(width, height)
    assert not colour_mask(png, YELLOW).any()

    with pytest.raises(ValueError, match="brats2023"):  # label value 3 is ET only in the 2023 convention
        viz.overlay_case(image, tmp_path / "x.png", NAMES, label=np.where(label == 4, 3, label))
    with pytest.raises(ValueError, match="modality names"):
        viz.overlay_case(image, tmp_path / "x.png", NAMES[:2])
    with pytest.raises(ValueError, match="label map"):
        viz.overlay_case(image, tmp_path / "x.png", NAMES, pred=label[:-1])
    with pytest.raises(ValueError, match="4D"):
        viz.overlay_case(image[0], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists() and no_partial_files(tmp_path)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_overlay_files_reorients_to_ras(tmp_path, noise):
    image, label = overlay_inputs(noise)
    pred = np.roll(label, 3, axis=0)
    expected = read_png(
        viz.overlay_case(
            image, tmp_path / "arrays.png", NAMES, pred=pred, label=label, spacing=(1, 1, 2), title="BraTS2021_00001"
        )
    )
    # store everything LPS (x and y flipped) with 2 mm slices: as_closest_canonical must undo the flips
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    lps[:2, 3] = [s - 1 for s in OVERLAY_SHAPE[:2]]

    def lps_file(name: str, data: np.ndarray) -> Path:
        return write_nifti(tmp_path / f"BraTS2021_00001_{name}.nii.gz", np.ascontiguousarray(data[::-1, ::-1]), lps)

    files = [lps_file(m, volume) for m, volume in zip(("t1ce", "t2", "flair"), image)]
    out = viz.overlay_files(files, lps_file("pred", pred), tmp_path / "files.png", label_file=lps_file("seg", label))
    np.testing.assert_array_equal(read_png(out), expected)  # names T1CE/T2/FLAIR and the case id as title


def test_overlay_files_rejects_shape_mismatch(tmp_path):
    eye = np.eye(4)
    image = write_nifti(tmp_path / "a_t1ce.nii.gz", np.zeros((8, 8, 4), np.float32), eye)
    seg = write_nifti(tmp_path / "a_seg.nii.gz", np.zeros((8, 8, 5), np.uint8), eye)
    with pytest.raises(ValueError, match="differ in shape.*a_seg.nii.gz \\(8, 8, 5\\)"):
        viz.overlay_files([image], seg, tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------------------------------
# Dice box plot


def test_dice_boxplot_from_csv(tmp_path, noise):
    table = tmp_path / "per_case.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "legacy_dice_wt", "legacy_dice_tc", "legacy_dice_et", "global_dsc_wt"])
        for i in range(12):
            et = "" if i == 0 else f"{noise.uniform(0.3, 0.9):.4f}"  # one case without ET
            wt, tc = f"{noise.uniform(0.8, 1):.4f}", f"{noise.uniform(0.6, 0.9):.4f}"
            writer.writerow([f"case{i}", wt, tc, et, wt])

    values = viz.read_dice_table(table, FAMILIES)
    assert list(values) == ["legacy_dice"]  # global_dsc lacks its TC and ET columns: not a family of the table
    values = values["legacy_dice"]
    assert set(values) == {"WT", "TC", "ET"} and all(len(v) == 12 for v in values.values())
    assert np.isnan(values["ET"][0]) and np.isfinite(values["ET"][1:]).all()

    png = read_png(viz.dice_boxplot(table, tmp_path / "dice.png", FAMILIES))
    assert png.shape[:2] == size_px(*viz.BOXPLOT_INCHES)
    # every region's points are drawn in its colour
    for bounds in (YELLOW, RED, SKY_BLUE):
        assert colour_mask(png, bounds).any()
    # one panel per family in the table
    rows = [{f"{f}_{r}": 0.5 for f in FAMILIES for r in ("wt", "tc", "et")}] * 3
    png = read_png(viz.dice_boxplot(rows, tmp_path / "both.png", FAMILIES))
    assert png.shape[:2] == size_px(viz.BOXPLOT_INCHES[0] * len(FAMILIES), viz.BOXPLOT_INCHES[1])


def test_dice_table_errors(tmp_path):
    families = {"dice": "Dice"}
    with pytest.raises(ValueError, match="none of the columns dice_wt/tc/et"):
        viz.read_dice_table([{"dice_wt": 1, "dice_tc": 1}], families)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        viz.read_dice_table([{"dice_wt": 1, "dice_tc": 1, "dice_et": 87.5}], families)
    with pytest.raises(ValueError, match="not a number"):
        viz.read_dice_table([{"dice_wt": "x", "dice_tc": 1, "dice_et": 1}], families)
    with pytest.raises(ValueError, match="no cases"):
        viz.dice_boxplot([], tmp_path / "x.png", families)


# ---------------------------------------------------------------------------------------------------------------------
# training curves


def test_training_curves_from_dict(tmp_path):
    scalars = {
        "train_loss": [(i, 1.0 / (1 + i)) for i in range(100)],
        "val_mean_dice": [(e, 0.5 + 0.01 * e) for e in range(1, 6)],
        "val_dice_et": [(e, 0.3 + 0.02 * e) for e in range(1, 6)],
    }
    png = read_png(viz.training_curves(scalars, tmp_path / "curves.png"))
    assert png.shape[:2] == size_px(viz.CURVES_WIDTH_INCHES, 2 * viz.CURVES_PANEL_INCHES)  # loss + validation

    scalars["train_mean_dice"] = [(e, 0.6) for e in range(1, 6)]  # neither loss nor validation: its own panel
    png = read_png(viz.training_curves(scalars, tmp_path / "curves.png", title="run"))
    assert png.shape[:2] == size_px(viz.CURVES_WIDTH_INCHES, 3 * viz.CURVES_PANEL_INCHES)
    with pytest.raises(ValueError, match="no scalars"):
        viz.training_curves({"train_loss": []}, tmp_path / "x.png")


def test_training_curves_from_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    with SummaryWriter(log_dir=str(logs)) as writer:
        for step in range(10):
            writer.add_scalar("train_loss", 1.0 - 0.05 * step, step)
        for epoch in range(1, 4):
            writer.add_scalar("val_mean_dice", 0.25 * epoch, epoch)
    with SummaryWriter(log_dir=str(logs / "run2")) as writer:
        writer.add_scalar("train_loss", 0.5, 0)

    scalars = viz.read_scalars(logs)
    assert set(scalars) == {"train_loss", "val_mean_dice", "run2/train_loss"}
    assert [s for s, _ in scalars["train_loss"]] == list(range(10))
    np.testing.assert_allclose([v for _, v in scalars["train_loss"]], [1.0 - 0.05 * s for s in range(10)], rtol=1e-6)
    assert scalars["val_mean_dice"] == [(1, 0.25), (2, 0.5), (3, 0.75)]

    png = read_png(viz.training_curves(logs, tmp_path / "curves.png"))
    assert png.shape[:2] == size_px(viz.CURVES_WIDTH_INCHES, 2 * viz.CURVES_PANEL_INCHES)


def test_axial_overlay_draws_each_modality_with_contours_on_the_tumour_slice(noise):
    ppv, shape = 2, (20, 24, 10)
    image = noise.normal(100, 10, (2, *shape)).astype(np.float32)
    label = np.zeros((3, *shape), dtype=np.float32)
    label[0, 4:10, 6:14, 3:8] = 1  # WT: x 4..9, y 6..13 on z 3..7
    label[0, 4:10, 6:20, 5] = 1  # largest on z = 5
    pred = np.zeros_like(label)
    rgb, z = viz.axial_overlay(image, label=label, pred=pred, pixels_per_voxel=ppv)
    assert z == 5
    assert rgb.shape == (shape[1] * ppv, 2 * shape[0] * ppv, 3) and rgb.dtype == np.uint8
    # radiological display: rows run from anterior (y high) down, columns from the patient's right (x high)
    expected = [(shape[1] - 20) * ppv, (shape[1] - 6) * ppv, (shape[0] - 10) * ppv, (shape[0] - 4) * ppv]
    for panel in range(2):
        columns = slice(panel * shape[0] * ppv, (panel + 1) * shape[0] * ppv)
        assert_box(bbox(colour_mask(rgb[:, columns], YELLOW)), expected)
    with pytest.raises(ValueError, match="4D"):
        viz.axial_overlay(image[0])


def tensorboard_images(log_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    accumulator.Reload()
    return accumulator.Images(tag) if tag in accumulator.Tags()[IMAGES] else []


def test_validation_overlay_handler_logs_the_last_case_at_the_epoch(tmp_path, noise):
    from ignite.engine import Engine

    from axunet_bundle.outputs import VALIDATION_IMAGE_TAG
    from axunet_bundle.visualize import ValidationOverlayHandler

    shape = (16, 12, 4)
    label = torch.zeros((3, *shape))
    label[:, 4:8, 4:8, 1] = 1
    case = {"image": torch.as_tensor(noise.normal(0, 1, (3, *shape))), "label": label, "pred": label.clone()}
    evaluator = Engine(lambda engine, batch: [case])  # MONAI's evaluators give a decollated list of cases
    handler = ValidationOverlayHandler(log_dir=tmp_path, pixels_per_voxel=2)
    handler.attach(evaluator)
    evaluator.run([0, 1], max_epochs=2)
    handler.close()
    images = tensorboard_images(tmp_path, VALIDATION_IMAGE_TAG)
    assert [image.step for image in images] == [1, 2]
    assert (images[0].height, images[0].width) == (shape[1] * 2, 3 * shape[0] * 2)


def test_training_curves_writer_draws_on_completion_or_warns(tmp_path, caplog):
    from ignite.engine import Engine
    from torch.utils.tensorboard import SummaryWriter

    from axunet_bundle.outputs import CURVES_PNG
    from axunet_bundle.visualize import TrainingCurvesWriter

    trainer = Engine(lambda engine, batch: None)
    TrainingCurvesWriter(tmp_path / "empty").attach(trainer)
    trainer.run([0], max_epochs=1)  # no event files: a warning, the training still completes
    assert "no training curves drawn" in caplog.text and not (tmp_path / "empty" / CURVES_PNG).exists()

    with SummaryWriter(log_dir=str(tmp_path / "runs")) as writer:
        writer.add_scalar("train_loss", 1.0, 1)
    trainer = Engine(lambda engine, batch: None)
    TrainingCurvesWriter(tmp_path / "runs").attach(trainer)
    trainer.run([0], max_epochs=1)
    png = read_png(tmp_path / "runs" / CURVES_PNG)
    assert png.shape[:2] == size_px(viz.CURVES_WIDTH_INCHES, viz.CURVES_PANEL_INCHES)


def test_training_curves_without_events(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        viz.training_curves(tmp_path, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        viz.read_scalars(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------------
# attention maps


@pytest.fixture(scope="module")
def tiny_net() -> AXUNet:
    torch.manual_seed(0)
    return AXUNet(pretrained=False)


def test_attention_maps_on_untrained_axunet(tmp_path, tiny_net):
    image_slice = torch.randn(3, SLICE_SIZE, SLICE_SIZE)
    tiny_net.train()
    out = viz.attention_maps(tiny_net, image_slice, tmp_path / "attention.png", modality_names=NAMES)
    png = read_png(out)
    n_levels = len(tiny_net.attention_levels)
    height = n_levels * viz.ATTENTION_ROW_INCHES + viz.ATTENTION_TITLE_INCHES
    assert png.shape[:2] == size_px(3 * viz.ATTENTION_COLUMN_INCHES, height)
    assert tiny_net.training  # mode restored
    assert all(not m._forward_hooks for m in tiny_net.modules() if isinstance(m, DualAttention))  # hooks removed


def test_attention_activity_is_the_attended_maps_norm(tiny_net):
    image_slice = torch.randn(3, SLICE_SIZE, SLICE_SIZE)
    tiny_net.eval()  # the reference features below need eval-mode batch norm, as attention_activity uses
    activities = viz.attention_activity(tiny_net, image_slice)
    assert [a.level for a in activities] == [f"level {level}" for level in tiny_net.attention_levels]
    assert all(a.pam_gamma == 0 and a.cam_gamma == 0 for a in activities)  # untrained: gamma = 0

    with torch.no_grad():
        features = tiny_net.encoder(image_slice[None])
        block = tiny_net.attention[0]
        for branch, found in ((block.pam, activities[0].pam), (block.cam, activities[0].cam)):
            norm = torch.linalg.vector_norm(branch.attend(features[0]), dim=1, keepdim=True)
            expected = F.interpolate(norm, size=(SLICE_SIZE, SLICE_SIZE), mode="bilinear", align_corners=False)
            np.testing.assert_allclose(found, expected[0, 0].numpy(), rtol=1e-4)
            assert found.std() > 0  # not the gamma-scaled (all-zero) residual
    assert activities[0].feature_shape == tuple(features[0].shape[1:])


def test_attention_maps_single_branch_and_no_attention(tmp_path):
    torch.manual_seed(0)
    channels = 8
    cam_only = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, stride=2), DualAttention(channels, use_pam=False))
    image_slice = np.random.default_rng(0).random((3, 32, 32))
    png = read_png(viz.attention_maps(cam_only, image_slice, tmp_path / "cam.png"))
    height = viz.ATTENTION_ROW_INCHES + viz.ATTENTION_TITLE_INCHES
    assert png.shape[:2] == size_px(3 * viz.ATTENTION_COLUMN_INCHES, height)
    (activity,) = viz.attention_activity(cam_only, image_slice)
    assert activity.level == "1" and activity.feature_shape == (channels, 15, 15)  # not an AXUNet: the module name
    assert activity.pam is None and activity.pam_gamma is None and activity.cam.shape == (32, 32)

    with pytest.raises(ValueError, match="no DualAttention"):
        viz.attention_maps(torch.nn.Conv2d(3, 3, 1), image_slice, tmp_path / "x.png")
    with pytest.raises(ValueError, match="3D"):
        viz.attention_maps(cam_only, image_slice[0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="channel"):
        viz.attention_maps(cam_only, image_slice, tmp_path / "x.png", channel=3)
