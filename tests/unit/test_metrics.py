from __future__ import annotations

import numpy as np
import pytest

from pipelines.tasks.text_classification.metrics import classification_metrics


def test_known_confusion_gives_known_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(preds, labels, {0: "a", 1: "b", 2: "c"})
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["f1"] == 0.0
    f1_a, f1_b = 2 / 3, 0.8
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 0.0) / 3)


def test_a_class_absent_from_the_split_does_not_count_in_macro_f1() -> None:
    m = classification_metrics(np.array([0, 1]), np.array([0, 1]), {0: "a", 1: "b", 2: "c"})
    assert m["macro_f1"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["support"] == 0


def test_confusion_matrix_png_shades_cells_by_count(tmp_path) -> None:
    """The evaluate stage's confusion_matrix.png (drawn with Pillow): the largest count's cell is the darkest
    blue, empty cells the lightest, and a matrix with nothing counted draws without failing."""
    from PIL import Image

    from pipelines.tasks.text_classification.metrics import plot_confusion_matrix

    def colours(path) -> set[tuple[int, int, int]]:
        return {tuple(int(c) for c in px) for px in np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)}

    path = tmp_path / "confusion_matrix.png"
    plot_confusion_matrix([[40, 3, 0], [5, 33, 0], [1, 1, 0]], ["negative", "positive", "mixed"], path)
    assert Image.open(path).format == "PNG"
    assert {(8, 48, 107), (247, 251, 255)} <= colours(path)  # the 40 at full shade; the zeros unshaded
    plot_confusion_matrix([[0, 0], [0, 0]], ["a", "b"], tmp_path / "empty.png")
    assert (8, 48, 107) not in colours(tmp_path / "empty.png") and (247, 251, 255) in colours(tmp_path / "empty.png")


def test_bar_chart_png_draws_one_bar_per_name(tmp_path) -> None:
    """token classification's per_type_f1.png: a bar per entity type, heights on a 0-1 axis (a higher F1 is a
    taller bar; a value outside 0-1 is clipped)."""
    from PIL import Image

    from pipelines.report.png import BAR, bar_chart_png

    path = tmp_path / "per_type_f1.png"
    bar_chart_png(["LOC", "PER", "O"], [0.25, 1.0, 1.7], path, "per-type F1", "F1")
    pixels = np.asarray(Image.open(path).convert("RGB"))
    bars = np.all(pixels == BAR, axis=2)
    columns = bars.sum(axis=0)
    heights = [int(h) for h in columns[columns > 0]]
    assert len(set(heights)) == 2 and max(heights) - 1 == 4 * (
        min(heights) - 1
    )  # 1.0 and clipped 1.7 vs 0.25 (+1: edges drawn)
