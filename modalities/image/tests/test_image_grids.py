"""Sample writers: PNG grids and comparison strips (sizes, cells, labels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill.errors import DistillError
from distill_image import grids
from distill_image.grids import LABEL_HEIGHT, PAD, PANEL_GAP, ROW_LABEL_WIDTH, layout, to_uint8
from distill_image.modality import ImageModality

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _samples(n: int, c: int = 1, r: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, r, r), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _open(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _cell(image, top, left, size):
    return np.asarray(image)[top : top + size, left : left + size]


def test_to_uint8_maps_the_range_and_clamps():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, -7.0, float("nan")]).view(1, 1, 1, 6)
    out = to_uint8(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 255, 0, 128]
    with pytest.raises(DistillError, match="C = 1 or 3"):
        to_uint8(torch.zeros(1, 2, 4, 4))


def test_layout_rows_are_classes_in_index_order():
    cond = torch.tensor([2, 0, 2, 10, 0, 2, 2])
    cells = layout(7, cond, per_class=3, num_classes=10)
    assert cells.cells == [[1, 4, -1], [0, 2, 5], [3, -1, -1]]
    assert cells.row_labels == ["0", "2", "null"]
    plain = layout(10, None, columns=4, max_images=9)
    assert plain.cells == [[0, 1, 2, 3], [4, 5, 6, 7], [8, -1, -1, -1]]


def test_save_samples_grid_by_class_has_expected_size_and_pixels(tmp_path):
    m = ImageModality()
    x = _samples(80)
    cond = torch.arange(10).repeat(8)  # 8 of each class, class k at k, k+10, ...
    (path,) = m.save_samples(x, tmp_path / "grid.png", cond=cond, title="student, 1 step")
    assert path == tmp_path / "grid.png"
    image = _open(path)
    cell = 16 * 4  # 4x nearest-neighbour for 16x16 digits
    assert image.size == (ROW_LABEL_WIDTH + 8 * (cell + PAD) + PAD, LABEL_HEIGHT + 10 * (cell + PAD) + PAD)
    pixels = to_uint8(x)
    for row, col in [(0, 0), (3, 5), (9, 7)]:
        index = row + 10 * col  # the col-th sample of class `row`
        top, left = LABEL_HEIGHT + PAD + row * (cell + PAD), ROW_LABEL_WIDTH + PAD + col * (cell + PAD)
        expected = pixels[index].repeat(4, axis=0).repeat(4, axis=1)
        assert np.array_equal(_cell(image, top, left, cell), expected)
    band = np.asarray(image)[:LABEL_HEIGHT]
    assert (band < 100).any() and (band == 255).any()  # the title is drawn on white


def test_save_samples_without_cond_and_into_a_directory(tmp_path):
    m = ImageModality({"dataset": "photos", "num_crops": 4, "resolution": 8})
    x = _samples(100, c=3, r=8)
    (path,) = m.save_samples(x, tmp_path / "out")
    assert path == tmp_path / "out" / "samples.png"
    image = _open(path)
    cell = 8 * 8  # default scale makes cells ~64 px
    assert image.size == (8 * (cell + PAD) + PAD, 8 * (cell + PAD) + PAD)  # first 64 samples, 8 columns
    expected = to_uint8(x)[9].repeat(8, axis=0).repeat(8, axis=1)
    assert np.array_equal(_cell(image, PAD + (cell + PAD), PAD + (cell + PAD), cell), expected)
    (small,) = grids.save_grid(x[:3], tmp_path / "three.jpg", scale=2)
    assert small.suffix == ".png" and _open(small).size == (3 * (16 + PAD) + PAD, 16 + 2 * PAD)


def test_save_comparison_same_cells_side_by_side(tmp_path):
    m = ImageModality()
    teacher = _samples(40, seed=1)
    student = _samples(40, seed=2)
    cond = m.sample_condition(40, torch.Generator().manual_seed(0))
    (path,) = m.save_comparison({"teacher heun, 35 NFE": teacher, "student, 1 NFE": student}, tmp_path / "cmp.png", cond=cond)
    image = _open(path)
    cells = layout(40, cond, num_classes=10)
    cell = 64
    panel = cells.columns * (cell + PAD) + PAD
    assert image.size == (ROW_LABEL_WIDTH + panel + PANEL_GAP + panel, LABEL_HEIGHT + cells.rows * (cell + PAD) + PAD)
    r, c = 1, 0
    index = cells.cells[r][c]
    top = LABEL_HEIGHT + PAD + r * (cell + PAD)
    left_t = ROW_LABEL_WIDTH + PAD + c * (cell + PAD)
    left_s = ROW_LABEL_WIDTH + panel + PANEL_GAP + PAD + c * (cell + PAD)
    assert np.array_equal(_cell(image, top, left_t, cell), to_uint8(teacher)[index].repeat(4, 0).repeat(4, 1))
    assert np.array_equal(_cell(image, top, left_s, cell), to_uint8(student)[index].repeat(4, 0).repeat(4, 1))
    bands = np.asarray(image)[:LABEL_HEIGHT]
    assert (bands[:, : ROW_LABEL_WIDTH + panel] < 100).any()  # a label above the teacher panel
    assert (bands[:, ROW_LABEL_WIDTH + panel + PANEL_GAP :] < 100).any()  # and above the student's


def test_save_comparison_without_cond_and_with_title(tmp_path):
    a, b = _samples(64), _samples(64, seed=3)
    (path,) = grids.save_comparison({"a": a, "b": b}, tmp_path, title="same noise")
    assert path.name == "comparison.png"
    panel = 8 * (64 + PAD) + PAD
    assert _open(path).size == (2 * panel + PANEL_GAP, 2 * LABEL_HEIGHT + 8 * (64 + PAD) + PAD)


def test_save_comparison_errors(tmp_path):
    with pytest.raises(DistillError, match="at least one panel"):
        grids.save_comparison({}, tmp_path / "x.png")
    with pytest.raises(DistillError, match="same shape"):
        grids.save_comparison({"a": _samples(4), "b": _samples(5)}, tmp_path / "x.png")
    with pytest.raises(DistillError, match="Long class labels"):
        grids.save_grid(_samples(4), tmp_path / "x.png", cond=torch.zeros(4))
