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
