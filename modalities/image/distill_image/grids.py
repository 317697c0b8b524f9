"""Sample writers: PNG grids of images, and side-by-side comparison strips.

Images come in the plugin's convention (float32 ``[B, C, H, W]`` in ``[-1, 1]``,
``C`` in {1, 3}); pixels are ``round((x + 1) * 127.5)`` after clamping. Each image is
enlarged by an integer factor with nearest-neighbour upscaling (a 16x16 digit at
the default 4x is a 64x64 cell: every model pixel stays a visible square, nothing is
smoothed away).

Layout of one grid (all sizes in output pixels; ``cell = H * scale``)::

    +-- label band (LABEL_HEIGHT, only with a title) -----------------------+
    | row-label margin (ROW_LABEL_WIDTH, only with cond) | cells, PAD apart |

* without ``cond``: the first ``max_images`` samples, row-major, ``columns`` wide;
* with ``cond`` (Long ``[B]``): one row per class present in ``cond`` (sorted; the
  null class ``num_classes`` is labelled ``null`` when given), holding the first
  ``per_class`` samples of that class in index order. Cells without a sample stay
  background.

Cells are chosen from ``cond`` (or the index) alone, never from the pixels, so two
panels generated from the same noise and conditioning -- teacher at N steps and
student at 1 step -- show the same noise in the same cell of
:func:`save_comparison`. Files are written atomically (temp file + rename).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from distill.errors import DistillError

__all__ = [
    "LABEL_HEIGHT",
    "PAD",
    "PANEL_GAP",
    "ROW_LABEL_WIDTH",
    "GridLayout",
    "default_scale",
    "grid_image",
    "layout",
    "save_comparison",
    "save_grid",
    "to_uint8",
]

#: Height of the text band above a titled grid or a comparison panel.
LABEL_HEIGHT = 16
#: Width of the row-label margin of a class-conditional grid.
ROW_LABEL_WIDTH = 28
#: Gap between cells and around the grid.
PAD = 2
#: Gap between the panels of a comparison.
PANEL_GAP = 8
#: Background (gaps, empty cells) and text colours.
BACKGROUND = (128, 128, 128)
LABEL_BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in ``[-1, 1]`` (C in {1, 3}) to uint8 RGB ``[B, H, W, 3]``."""
    x = torch.as_tensor(images).detach()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DistillError(f"images must have shape [B, C, H, W] with C = 1 or 3; got {tuple(x.shape)}")
    x = x.to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=0.0).clamp(-1.0, 1.0)
    pixels = ((x + 1.0) * 127.5).round().to(torch.uint8)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())


def default_scale(height: int, target: int = 64) -> int:
    """Integer upscaling factor that makes a cell about ``target`` pixels tall (at least 1)."""
    return max(1, round(target / max(1, int(height))))


@dataclass
class GridLayout:
    """Which sample goes in which cell: ``cells[r][c]`` is a sample index or -1 (empty)."""

    cells: list[list[int]]
    row_labels: list[str] | None = None

    @property
    def rows(self) -> int:
        return len(self.cells)

    @property
    def columns(self) -> int:
        return len(self.cells[0]) if self.cells else 0


def layout(
    n: int,
    cond: torch.Tensor | None = None,
    *,
    columns: int = 8,
    max_images: int = 64,
    per_class: int = 8,
    max_rows: int = 16,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> GridLayout:
    """The cells of a grid of ``n`` samples (see the module docstring)."""
    if n < 1:
        raise DistillError("a sample grid needs at least one sample")
    if cond is None:
        shown = min(n, max(1, int(max_images)))
        cols = max(1, min(int(columns), shown))
        rows = -(-shown // cols)
        cells = [[r * cols + c if r * cols + c < shown else -1 for c in range(cols)] for r in range(rows)]
        return GridLayout(cells)
    labels = torch.as_tensor(cond).detach().cpu()
    if labels.is_floating_point() or labels.ndim != 1 or labels.shape[0] != n:
        raise DistillError(
            f"cond must be Long class labels [B] with B = {n} samples; got dtype {labels.dtype}, shape {tuple(labels.shape)}"
        )
    labels = labels.long()
    per_class = max(1, int(per_class))
    classes = sorted(set(labels.tolist()))[: max(1, int(max_rows))]
    cells, names = [], []
    for k in classes:
        index = torch.nonzero(labels == k).flatten()[:per_class].tolist()
        cells.append(index + [-1] * (per_class - len(index)))
        if num_classes is not None and k == num_classes:
            names.append("null")
        elif class_names is not None and 0 <= k < len(class_names):
            names.append(str(class_names[k]))
        else:
            names.append(str(k))
    return GridLayout(cells, names)


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _fit(draw: Any, text: str, width: int, font: Any) -> str:
    """``text`` cut (with "...") so that it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def grid_image(
    samples: torch.Tensor,
    cells: GridLayout,
    *,
    scale: int | None = None,
    title: str | None = None,
    row_labels: bool = True,
) -> Any:
    """Render ``samples`` into a PIL RGB image following ``cells``.

    Size: width ``[ROW_LABEL_WIDTH] + columns * (W * scale + PAD) + PAD``, height
    ``[LABEL_HEIGHT] + rows * (H * scale + PAD) + PAD`` (the brackets only with row
    labels / a title).
    """
    from PIL import Image, ImageDraw

    pixels = to_uint8(samples)
    _, h, w, _ = pixels.shape
    scale = default_scale(h) if scale is None else int(scale)
    if scale < 1:
        raise DistillError(f"scale must be a positive integer; got {scale}")
    ch, cw = h * scale, w * scale
    margin = ROW_LABEL_WIDTH if (row_labels and cells.row_labels) else 0
    band = LABEL_HEIGHT if title else 0
    width = margin + cells.columns * (cw + PAD) + PAD
    height = band + cells.rows * (ch + PAD) + PAD
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    canvas[:band] = LABEL_BACKGROUND
    canvas[band:, :margin] = LABEL_BACKGROUND
    for r, row in enumerate(cells.cells):
        for c, index in enumerate(row):
            if index < 0:
                continue
            cell = pixels[index].repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour
            top = band + PAD + r * (ch + PAD)
            left = margin + PAD + c * (cw + PAD)
            canvas[top : top + ch, left : left + cw] = cell
    image = Image.fromarray(canvas)
    if band or margin:
        draw, font = ImageDraw.Draw(image), _font()
        if title:
            draw.text((3, 2), _fit(draw, str(title), width - 6, font), fill=TEXT, font=font)
        if margin:
            for r, name in enumerate(cells.row_labels or []):
                top = band + PAD + r * (ch + PAD) + max(0, ch // 2 - 6)
                draw.text((3, top), _fit(draw, name, margin - 4, font), fill=TEXT, font=font)
    return image


def _target(path: Path | str, default_name: str) -> Path:
    """``path`` with a suffix is the file (made ``.png``); without one it is a directory."""
    path = Path(path)
    if path.suffix:
        return path if path.suffix.lower() == ".png" else path.with_suffix(".png")
    return path / default_name


def _write_png(image: Any, target: Path) -> Path:
    from distill.engine.io import atomic_write  # lazy: keeps `import distill_image` light

    return atomic_write(target, lambda tmp: image.save(tmp, format="PNG"))


def save_grid(
    samples: torch.Tensor,
    path: Path | str,
    cond: torch.Tensor | None = None,
    title: str | None = None,
    *,
    scale: int | None = None,
    columns: int = 8,
    max_images: int = 64,
    per_class: int = 8,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    filename: str = "samples.png",
) -> list[Path]:
    """Write ``samples`` as one PNG grid (rows = classes when ``cond`` is given); returns ``[file]``."""
    cells = layout(
        int(torch.as_tensor(samples).shape[0]), cond, columns=columns, max_images=max_images,
        per_class=per_class, num_classes=num_classes, class_names=class_names,
    )
    image = grid_image(samples, cells, scale=scale, title=title)
    return [_write_png(image, _target(path, filename))]


def save_comparison(
    panels: Mapping[str, torch.Tensor],
    path: Path | str,
    cond: torch.Tensor | None = None,
    title: str | None = None,
    *,
    scale: int | None = None,
    columns: int = 8,
    max_images: int = 64,
    per_class: int = 8,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    filename: str = "comparison.png",
) -> list[Path]:
    """Side-by-side grids, one per ``panels`` entry (``{"teacher heun, 35 NFE": x, "student, 1 NFE": y}``).

    Every panel has the same cells (chosen from ``cond`` or the index, see
    :func:`layout`) and its label drawn in a band above it; with ``cond`` the class
    names are drawn once, left of the first panel. An optional ``title`` adds a band
    across the top. All panels must hold the same number of samples and image size.
    """
    if not panels:
        raise DistillError("save_comparison needs at least one panel {label: samples}")
    shapes = {label: tuple(torch.as_tensor(x).shape) for label, x in panels.items()}
    if len({s for s in shapes.values()}) != 1:
        raise DistillError(
            f"comparison panels must have the same shape (same noise, same number of samples); got {shapes}"
        )
    from PIL import Image, ImageDraw

    n = next(iter(shapes.values()))[0]
    cells = layout(n, cond, columns=columns, max_images=max_images, per_class=per_class,
                   num_classes=num_classes, class_names=class_names)
    images = [
        grid_image(x, cells, scale=scale, title=str(label), row_labels=(i == 0))
        for i, (label, x) in enumerate(panels.items())
    ]
    band = LABEL_HEIGHT if title else 0
    width = sum(im.width for im in images) + PANEL_GAP * (len(images) - 1)
    height = band + max(im.height for im in images)
    strip = Image.new("RGB", (width, height), LABEL_BACKGROUND)
    left = 0
    for im in images:
        strip.paste(im, (left, band))
        left += im.width + PANEL_GAP
    if title:
        draw = ImageDraw.Draw(strip)
        draw.text((3, 2), _fit(draw, str(title), width - 6, _font()), fill=TEXT, font=_font())
    return [_write_png(strip, _target(path, filename))]
