"""Classification metrics with scikit-learn, named the way SER papers report them.

Example:
    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["neutral", "happy"])
    >>> m["accuracy"], m["uar"], m["confusion"]
    (0.75, 0.75, [[1, 1], [0, 2]])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, recall_score


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy, UAR (unweighted average recall), macro-F1, per-class figures and confusion.

    Classes with no true examples are left out of UAR and macro-F1 (their recall is
    undefined), so a class missing from a split does not drag the averages to zero.

    Returns:
        ``{"accuracy", "uar", "macro_f1", "n", "labels", "per_class", "confusion"}``;
        ``confusion[i][j]`` counts true class i predicted as j.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    all_labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    if len(y_true) == 0:
        return {
            "accuracy": None,
            "uar": None,
            "macro_f1": None,
            "n": 0,
            "labels": list(classes),
            "per_class": {},
            "confusion": [],
        }
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=all_labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "uar": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "labels": list(classes),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=all_labels).tolist(),
    }
