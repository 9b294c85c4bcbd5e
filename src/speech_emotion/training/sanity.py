"""Sanity monitors: training that looks too good or too broken is stopped or flagged, with the likely cause.

Each check returns :class:`Alarm` objects; ``severity == "error"`` stops training
(:class:`SanityError`), ``"warning"`` is logged and kept in the run's report.

Example:
    >>> import numpy as np
    >>> parts = {"train": np.array([0, 1]), "val": np.array([0, 0])}
    >>> [a.check for a in check_split_classes(parts, ["neutral", "happy"])]
    ['class_missing']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from speech_emotion.errors import SanityError

PERFECT_FIRST_EPOCH = 0.98
ZERO_LOSS = 1e-3


@dataclass(frozen=True)
class Alarm:
    """One sanity finding: which check, how bad, what was seen, and what probably causes it."""

    check: str
    severity: str  # "error" | "warning"
    message: str
    epoch: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_output_size(n_outputs: int, n_classes: int) -> list[Alarm]:
    """The head must have exactly K outputs."""
    if n_outputs == n_classes:
        return []
    return [
        Alarm(
            "output_size",
            "error",
            f"Cannot assign {n_classes} labels to a head with {n_outputs} outputs. The head's output size must equal "
            "the "
            "number of schema classes; a mismatch usually means class indices were derived outside the schema "
            "(e.g. max(index)+1 with a hole left by a merge).",
        )
    ]


def check_encoded_labels(y: np.ndarray, n_classes: int, part: str) -> list[Alarm]:
    """Encoded labels must lie in 0..K-1."""
    bad = sorted(set(np.unique(y).tolist()) - set(range(n_classes)))
    if not bad:
        return []
    return [
        Alarm(
            "label_range",
            "error",
            f"{part}: encoded labels {bad} lie outside 0..{n_classes - 1}; the label mapping has a hole or a stale "
            "index.",
        )
    ]


def check_split_classes(parts: dict[str, np.ndarray], classes: list[str]) -> list[Alarm]:
    """Every class should appear in every part; missing from train is an error."""
    alarms = []
    for part, y in parts.items():
        missing = [classes[i] for i in range(len(classes)) if not np.any(y == i)]
        if not missing:
            continue
        severity = "error" if part == "train" else "warning"
        cause = (
            "the model cannot learn a class it never sees: drop or merge it in the schema, or move speakers into "
            "training"
            if part == "train"
            else "its recall is undefined and it is left out of UAR; choose speakers that cover every class"
        )
        alarms.append(
            Alarm("class_missing", severity, f"class(es) {', '.join(missing)} absent from the {part} part: {cause}.")
        )
    return alarms


def check_epoch(epoch: int, train_loss: float, val_accuracy: float | None) -> list[Alarm]:
    """Per-epoch checks: near-perfect validation in epoch 1, loss at zero."""
    alarms = []
    if epoch == 1 and val_accuracy is not None and val_accuracy >= PERFECT_FIRST_EPOCH:
        alarms.append(
            Alarm(
                "perfect_first_epoch",
                "error",
                f"validation accuracy {val_accuracy:.1%} after one epoch. Real emotion recognition does not get there; "
                "likely causes: validation speakers or identical audio also in training (leakage), labels derivable "
                "from the features (a stale feature cache holding labels), or a label-index hole collapsing classes.",
                epoch,
            )
        )
    if train_loss < ZERO_LOSS:
        alarms.append(
            Alarm(
                "zero_loss",
                "error" if epoch <= 2 else "warning",
                f"training loss {train_loss:.2e} is essentially zero. Likely causes: every label encoded to one class "
                "(check the unique encoded values in the label report), or the features carry the label.",
                epoch,
            )
        )
    return alarms


def check_predictions(predictions: np.ndarray, classes: list[str], part: str, epoch: int | None = None) -> list[Alarm]:
    """The trained model must not predict one class for everything."""
    if len(classes) < 2 or len(predictions) < 2 or len(np.unique(predictions)) > 1:
        return []
    return [
        Alarm(
            "single_class",
            "warning",
            f"every {part} prediction is {classes[int(predictions[0])]!r}. Likely causes: extreme class imbalance "
            "without class weights, a learning rate too high, or constant features (a broken encoder or cache).",
            epoch,
        )
    ]


def raise_errors(alarms: list[Alarm], *, hint: str = "") -> None:
    """Raise :class:`SanityError` for the first alarm of severity ``error`` (its message ending with ``hint``)."""
    for alarm in alarms:
        if alarm.severity == "error":
            raise SanityError(f"sanity check '{alarm.check}' failed: {alarm.message}" + (f" {hint}" if hint else ""))


def check_before_training(n_outputs: int, parts: dict[str, np.ndarray], classes: list[str]) -> list[Alarm]:
    """Every check that can run before the first epoch: output size, classes per part, encoded values.

    Returns:
        The warnings (the errors are raised).

    Raises:
        SanityError: a check of severity ``error`` fired.
    """
    alarms = check_output_size(n_outputs, len(classes)) + check_split_classes(parts, classes)
    for part, y in parts.items():
        alarms += check_encoded_labels(y, len(classes), part)
    raise_errors(alarms)
    return alarms
