"""Test metrics checked against scikit-learn, calibration, the promotion decision, figures."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from flows.evaluate import misclassified_gallery
from tasks.evaluate import (
    confusion_frame,
    evaluate_predictions,
    expected_calibration_error,
    headline,
)
from tasks.figures import ARTIFACT_WIDTH_PX, plot_confusion, plot_gallery, plot_reliability
from tests.images import write_cache

CLASSES = ["a", "b", "c"]
TARGETS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
PREDS = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 1])


def known_probs() -> np.ndarray:
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.05, 0.3, size=(10, 3))
    probs[np.arange(10), PREDS] = rng.uniform(0.5, 0.9, size=10)
    return probs / probs.sum(1, keepdims=True)


def test_a_class_without_test_images_leaves_the_macro_means_alone():
    """A class the test split lacks and nothing predicted (too few images to reach it)."""
    classes = [*CLASSES, "rare"]
    probs = np.hstack([known_probs(), np.full((10, 1), 0.01)])
    m = evaluate_predictions(probs, TARGETS, classes, [f"{i}.png" for i in range(10)], 2).metrics
    for name in ("precision", "recall", "f1"):
        assert m[f"{name}_macro"] == pytest.approx(
            {"precision": precision_score, "recall": recall_score, "f1": f1_score}[name](
                TARGETS, PREDS, average="macro"
            )
        )
    assert m["n_classes"] == 4


def test_metrics_match_sklearn_on_a_known_confusion():
    probs = known_probs()
    ev = evaluate_predictions(probs, TARGETS, CLASSES, [f"{i}.png" for i in range(10)], top_k=2)
    m = ev.metrics
    assert m["accuracy"] == pytest.approx(0.7)
    for avg in ("macro", "weighted"):
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(TARGETS, PREDS, average=avg))
        assert m[f"precision_{avg}"] == pytest.approx(precision_score(TARGETS, PREDS, average=avg))
        assert m[f"recall_{avg}"] == pytest.approx(recall_score(TARGETS, PREDS, average=avg))
    assert m["top2_accuracy"] == pytest.approx(top_k_accuracy_score(TARGETS, probs, k=2))
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(TARGETS, probs, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(log_loss(TARGETS, probs))
    assert m["chance_accuracy"] == pytest.approx(0.5)
    assert ev.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 3]]
    assert ev.confusion_normalized[2].tolist() == pytest.approx([0.2, 0.2, 0.6])
    per_class = ev.per_class.set_index("class")
    assert per_class.loc["c", "recall"] == pytest.approx(0.6)
    assert per_class.loc["b", "precision"] == pytest.approx(0.5)
    assert per_class.loc["a", "roc_auc"] == pytest.approx(
        roc_auc_score(TARGETS == 0, probs[:, 0]), abs=1e-4
    )
    assert per_class["support"].tolist() == [3, 2, 5]
    assert ev.predictions["predicted"].tolist()[-1] == "b"
    assert ev.predictions["loss"].to_numpy() == pytest.approx(
        -np.log(probs[np.arange(10), TARGETS]), abs=1e-4
    )
    table = confusion_frame(ev.confusion, CLASSES)
    assert table.columns.tolist() == ["actual", "a", "b", "c"]


def test_roc_auc_is_left_out_when_a_class_has_no_test_image():
    probs = known_probs()[:5]
    ev = evaluate_predictions(probs, TARGETS[:5], CLASSES, [""] * 5, top_k=2)
    assert "roc_auc_ovr" not in ev.metrics  # class c never occurs
    assert pd.isna(ev.per_class.set_index("class").loc["c", "roc_auc"])


def test_expected_calibration_error():
    targets = np.array([0, 1, 0, 1])
    confident_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, targets) == pytest.approx(0.0)
    confident_wrong = confident_right[:, ::-1]
    assert expected_calibration_error(confident_wrong, targets) == pytest.approx(1.0)


def test_promotion_decision():
    from params import RetrainParams
    from tasks.registry import Comparison, decide

    def vs(new: dict, old: dict | None) -> Comparison:
        if old is None:
            return Comparison(challenger=new)
        return Comparison(new, ["a", "b"], new, old, compared=10)

    params = RetrainParams(metric="f1_macro", margin=0.02)
    assert decide(vs({"f1_macro": 0.5}, None), params)[0]
    assert decide(vs({"f1_macro": 0.83}, {"f1_macro": 0.80}), params)[0]
    promoted, reason = decide(vs({"f1_macro": 0.81}, {"f1_macro": 0.80}), params)
    assert not promoted and "gain +0.0100" in reason
    loss = RetrainParams(metric="log_loss", higher_is_better=False)
    assert decide(vs({"log_loss": 0.4}, {"log_loss": 0.5}), loss)[0]
    assert not decide(vs({"log_loss": 0.6}, {"log_loss": 0.5}), loss)[0]

    # 0.8 confident, right 3 times out of 4: |0.75 - 0.8|
    probs = np.array([[0.8, 0.2]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.05)


def test_figures_and_the_misclassified_gallery(tmp_path):
    from PIL import Image

    probs = known_probs()
    ev = evaluate_predictions(probs, TARGETS, CLASSES, [f"{i}.png" for i in range(10)], top_k=2)
    images = {f"sha{i}": Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(10)}
    write_cache(tmp_path, images)
    predictions = ev.predictions.assign(sha256=[f"sha{i}" for i in range(10)])
    gallery = misclassified_gallery(predictions, 2)
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    assert len(gallery) == 2
    assert gallery["loss"].tolist() == sorted(wrong["loss"], reverse=True)[:2]
    assert (gallery["actual"] != gallery["predicted"]).all()
    assert gallery["gallery"].iloc[0].startswith(f"true {gallery['actual'].iloc[0]}")
    plot_gallery(gallery, tmp_path, "wrong", tmp_path / "gallery.png")
    plot_confusion(ev.confusion, ev.confusion_normalized, CLASSES, tmp_path / "confusion.png")
    bins = plot_reliability(probs, TARGETS, 5, ev.metrics["ece"], tmp_path / "reliability.png")
    assert (bins["accuracy"].between(0, 1)).all()
    for name in ("gallery.png", "confusion.png", "reliability.png"):
        header = (tmp_path / name).read_bytes()[:24]  # PNG signature, then IHDR's width
        assert header.startswith(b"\x89PNG") and int.from_bytes(header[16:20], "big") > 100


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]  # PNG signature, then IHDR's width and height
    assert header.startswith(b"\x89PNG")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_headline_names_accuracy_macro_f1_and_the_worst_class():
    ev = evaluate_predictions(known_probs(), TARGETS, CLASSES, [f"{i}" for i in range(10)], 2)
    line = headline(ev.metrics, ev.per_class)
    assert line.startswith("test accuracy 0.7000 on 10 images (chance 0.5000), macro F1 ")
    assert f"macro F1 {f1_score(TARGETS, PREDS, average='macro'):.4f}" in line
    # a (2 of 3 right, precision 2/3) and b (2 of 2, precision 2/4) tie at F1 2/3; c has 0.75:
    # the larger of the tied classes is named
    assert line.endswith("worst class a (F1 0.6667, recall 0.6667, 3 images)")


def test_confusion_matrix_fits_the_artifact_pane_for_many_classes(tmp_path):
    classes = [f"class_{i:02d}" for i in range(30)]
    targets = np.arange(60) % 30
    probs = np.full((60, 30), 0.01)
    probs[np.arange(60), (targets + np.arange(60) % 2) % 30] = 0.9
    ev = evaluate_predictions(probs, targets, classes, [str(i) for i in range(60)], top_k=3)
    for n, names in ((3, CLASSES), (30, classes)):
        matrix = ev.confusion[:n, :n]
        plot_confusion(matrix, ev.confusion_normalized[:n, :n], names, tmp_path / f"{n}.png")
        width, height = _png_size(tmp_path / f"{n}.png")
        assert 300 < width <= ARTIFACT_WIDTH_PX and height > width  # the two matrices stacked
