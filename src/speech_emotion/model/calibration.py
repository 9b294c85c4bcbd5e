"""Temperature scaling and expected calibration error.

Example:
    >>> import numpy as np
    >>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> y = np.array([0, 1, 1, 0])
    >>> t = fit_temperature(logits, y); t > 1.0   # over-confident logits get softened
    True
    >>> after = expected_calibration_error(softmax(logits / t), y)
    >>> round(after, 3) < round(expected_calibration_error(softmax(logits), y), 3)
    True
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

N_BINS = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of ``softmax(logits / T)``.

    Fitted on validation speakers only: test speakers never tune anything.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def reliability(probabilities: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per confidence bin: count, mean confidence, accuracy (the points of a reliability plot)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            bins.append(
                {
                    "low": float(low),
                    "high": float(high),
                    "n": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return bins


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean |accuracy − confidence| over confidence bins."""
    n = len(y)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability(probabilities, y, n_bins)))
