"""The evaluate stage's pictures (a confusion matrix, a bar chart per entity type), drawn with Pillow.

Importing matplotlib alone took 0.4 s of every evaluate stage, more than drawing these two charts needs. Pillow
(a dependency of matplotlib, which the project keeps for Optuna's plots) ships a scalable default font.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

LIGHT = (247, 251, 255)  # an empty cell
DARK = (8, 48, 107)  # the largest count
BAR = (76, 114, 176)


def _fonts() -> tuple[Any, Any]:
    from PIL import ImageFont

    return ImageFont.load_default(size=13), ImageFont.load_default(size=15)


def _width(text: str, font: Any) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _upright(text: str, font: Any) -> Any:
    """`text` written bottom to top (a rotated strip), for column labels and a vertical axis title."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (_width(text, font) + 4, 18), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black", font=font)
    return strip.rotate(90, expand=True)


def confusion_matrix_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> None:
    """Rows = true label, columns = predicted; each cell shaded by its count (LIGHT to DARK) with the count in it."""
    from PIL import Image, ImageDraw

    n = len(labels)
    matrix = np.asarray(confusion, dtype=np.int64).reshape(n, n)
    font, title_font = _fonts()
    cell = max(44, max((_width(str(v), font) for v in matrix.flat), default=0) + 16)
    label_w = max((_width(str(label), font) for label in labels), default=0) + 12
    left, top, grid = label_w + 28, 36, cell * n
    image = Image.new(
        "RGB", (max(left + grid + 16, _width(title, title_font) + 24), top + grid + label_w + 30), "white"
    )
    draw = ImageDraw.Draw(image)
    draw.text((12, 10), title, fill="black", font=title_font)
    peak = int(matrix.max()) if matrix.size else 0
    light, dark = np.array(LIGHT), np.array(DARK)
    for (i, j), count in np.ndenumerate(matrix):
        share = count / peak if peak else 0.0
        x, y = left + j * cell, top + i * cell
        colour = tuple(int(c) for c in np.round(light + (dark - light) * share))
        draw.rectangle((x, y, x + cell, y + cell), fill=colour, outline=(200, 200, 200))
        text = str(int(count))
        ink = "white" if share > 0.5 else "black"
        draw.text((x + (cell - _width(text, font)) / 2, y + cell / 2 - 8), text, fill=ink, font=font)
    for i, label in enumerate(labels):  # row labels, right-aligned against the grid
        draw.text((left - 6 - _width(str(label), font), top + i * cell + cell / 2 - 8), str(label), "black", font)
    for j, label in enumerate(labels):  # column labels under the grid
        strip = _upright(str(label), font)
        image.paste(strip, (int(left + j * cell + cell / 2 - strip.width / 2), top + grid + 4))
    draw.text((left + grid / 2 - _width("predicted", font) / 2, image.height - 20), "predicted", "black", font)
    axis = _upright("true", font)
    image.paste(axis, (4, int(top + grid / 2 - axis.height / 2)))
    image.save(path, format="PNG")


def bar_chart_png(names: Sequence[str], values: Sequence[float], path: Path, title: str, axis: str) -> None:
    """One bar per name, heights on a 0-1 axis (scores such as F1) with gridlines at 0.25 steps."""
    from PIL import Image, ImageDraw

    font, title_font = _fonts()
    longest = max((_width(str(name), font) for name in names), default=0)
    upright = longest > 50  # long names are written upwards under their bars
    slot = 40 if upright else max(36, longest + 10)
    label_h = longest + 8 if upright else 20
    left, top, height = 66, 36, 160
    width = max(left + slot * max(1, len(names)) + 16, _width(title, title_font) + 24)
    image = Image.new("RGB", (width, top + height + label_h + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((12, 10), title, fill="black", font=title_font)
    for step in range(5):
        y = top + height - height * step / 4
        draw.line((left, y, width - 12, y), fill=(225, 225, 225))
        tick = f"{step / 4:.2f}"
        draw.text((left - 6 - _width(tick, font), y - 8), tick, fill="black", font=font)
    for k, (name, value) in enumerate(zip(names, values, strict=True)):
        share = min(1.0, max(0.0, float(value)))
        x = left + k * slot + 6
        draw.rectangle((x, top + height - height * share, x + slot - 12, top + height), fill=BAR)
        if upright:
            strip = _upright(str(name), font)
            image.paste(strip, (int(x + (slot - 12) / 2 - strip.width / 2), top + height + 4))
        else:
            draw.text((x + (slot - 12 - _width(str(name), font)) / 2, top + height + 3), str(name), "black", font)
    vertical = _upright(axis, font)
    image.paste(vertical, (4, int(top + height / 2 - vertical.height / 2)))
    image.save(path, format="PNG")
