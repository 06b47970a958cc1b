import numpy as np
import pytest
from sklearn.metrics import f1_score

from tasks.evaluate import evaluate_predictions, expected_calibration_error


def test_metrics_match_a_known_confusion():
    classes = ["a", "b", "c"]
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    preds = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 1])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), preds] = 0.8
    ev = evaluate_predictions(probs, targets, classes, [f"{i}.png" for i in range(10)], top_k=2)
    assert ev.metrics["accuracy"] == pytest.approx(0.7)
    assert ev.metrics["f1_macro"] == pytest.approx(f1_score(targets, preds, average="macro"))
    assert ev.metrics["f1_weighted"] == pytest.approx(f1_score(targets, preds, average="weighted"))
    assert ev.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 3]]
    assert ev.per_class.set_index("class").loc["c", "recall"] == pytest.approx(0.6)
    assert ev.metrics["chance_accuracy"] == pytest.approx(0.5)
    assert ev.metrics["top2_accuracy"] >= ev.metrics["accuracy"]
    assert ev.predictions["predicted"].tolist()[-1] == "b"


def test_expected_calibration_error():
    targets = np.array([0, 1, 0, 1])
    confident_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, targets) == pytest.approx(0.0)
    confident_wrong = confident_right[:, ::-1]
    assert expected_calibration_error(confident_wrong, targets) == pytest.approx(1.0)


def test_promotion_decision():
    from params import RetrainParams
    from tasks.registry import decide

    params = RetrainParams(metric="f1_macro", margin=0.02)
    assert decide({"f1_macro": 0.5}, None, params)[0]
    assert decide({"f1_macro": 0.83}, {"f1_macro": 0.80}, params)[0]
    promoted, reason = decide({"f1_macro": 0.81}, {"f1_macro": 0.80}, params)
    assert not promoted and "gain +0.0100" in reason
    loss = RetrainParams(metric="log_loss", higher_is_better=False)
    assert decide({"log_loss": 0.4}, {"log_loss": 0.5}, loss)[0]
    assert not decide({"log_loss": 0.6}, {"log_loss": 0.5}, loss)[0]
