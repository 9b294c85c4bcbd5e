"""Each sanity monitor, provoked on purpose."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from speech_emotion.errors import SanityError
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.loop import EPOCH_ALARM_HINT, fit_head
from speech_emotion.training.sanity import check_output_size

CONFIG = TrainConfig(max_epochs=30, patience=30, hidden=16, lr=5e-2)


def features(y: np.ndarray, *, signal: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(y), 2, 8)).astype(np.float32)
    X[:, :, 0] += signal * y[:, None]
    return X


def test_near_perfect_first_epoch_is_stopped_as_leakage():
    # Validation = training rows with a label written into the features: what leakage looks like.
    y = np.tile([0, 1, 2], 600)
    X = features(y, signal=50.0)
    with pytest.raises(SanityError, match="perfect_first_epoch.*leakage") as stopped:
        fit_head(X, y, X, y, n_classes=3, config=CONFIG)
    assert str(stopped.value).endswith(EPOCH_ALARM_HINT)  # and says how to go on when the data is this easy


def test_all_labels_collapsed_to_one_class_is_stopped():
    # Every label encoded to one class (the hole bug's extreme): loss goes to zero at once.
    y = np.zeros(120, dtype=np.int64)
    X = features(y, signal=0.0)
    with pytest.raises(SanityError, match="class_missing.*never sees"):
        fit_head(X, y, X[:10], y[:10], n_classes=2, config=TrainConfig(max_epochs=5, lr=1.0, hidden=0))


def test_zero_loss_alone(caplog):
    # The label written into the features, no validation part: only the loss can tell.
    y = np.tile([0, 1], 1500)
    X = features(y, signal=1e3)
    with pytest.raises(SanityError, match="zero_loss.*carry the label"):
        fit_head(
            X,
            y,
            None,
            None,
            n_classes=2,
            config=TrainConfig(max_epochs=5, lr=0.5, hidden=0, dropout=0.0, weight_decay=0.0),
        )


def test_single_predicted_class_warns(caplog):
    y = np.tile([0, 1, 2], 40)
    X = np.zeros((len(y), 2, 8), dtype=np.float32)  # constant features: a broken encoder or cache
    with caplog.at_level(logging.WARNING):
        fit = fit_head(X, y, X[:30], y[:30], n_classes=3, config=TrainConfig(max_epochs=3, hidden=0))
    assert [a.check for a in fit.alarms if a.check == "single_class"] == ["single_class"]
    assert "constant features" in caplog.text


def test_class_missing_from_training_is_an_error():
    y = np.tile([0, 1], 40)
    with pytest.raises(SanityError, match="class_missing.*surprised.*train"):
        fit_head(
            features(y, signal=1),
            y,
            features(y, signal=1),
            y,
            n_classes=3,
            classes=["neutral", "happy", "surprised"],
            config=CONFIG,
        )


def test_class_missing_from_validation_warns():
    y = np.tile([0, 1, 2], 40)
    yv = np.tile([0, 1], 20)
    fit = fit_head(features(y, signal=1), y, features(yv, signal=1, seed=1), yv, n_classes=3, config=CONFIG)
    assert any(a.check == "class_missing" and a.severity == "warning" and "val" in a.message for a in fit.alarms)


def test_labels_outside_range_are_an_error():
    y = np.array([0, 2, 3, 0, 2, 3] * 10)  # the 0,2,3 hole: K=3 but index 3 appears
    with pytest.raises(SanityError, match="label_range|class_missing"):
        fit_head(features(y, signal=1), y, None, None, n_classes=3, config=CONFIG)


def test_output_size_mismatch():
    (alarm,) = check_output_size(8, 7)
    assert alarm.severity == "error" and "Cannot assign 7 labels to a head with 8 outputs" in alarm.message
    assert check_output_size(7, 7) == []
