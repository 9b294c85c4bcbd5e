"""Fit an :class:`EmotionHead` on pooled features: class-weighted, early-stopped on validation UAR.

Two optimizers: ``"lbfgs"`` takes full-batch L-BFGS steps on the class-weighted cross-entropy
plus an L2 penalty ``weight_decay / 2 * ||W||²`` on the weight matrices, which for the default
linear head is a multinomial logistic-regression probe; ``"adamw"`` takes shuffled mini-batch
steps with decoupled weight decay and dropout. The default, ``"auto"``, picks L-BFGS for a
linear head (a convex problem, CV-chosen: docs/accuracy.md) and AdamW for an MLP head or
fine-tuning. Either way an "epoch" is one
validation point for early stopping (for L-BFGS: up to ``LBFGS_ITERATIONS`` iterations).
``TrainConfig.mixup`` adds mixed examples with soft labels to the training set (:func:`mixup`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 40)
    >>> X = rng.normal(size=(80, 2, 4)).astype("float32"); X[:, :, 0] += 6 * y[:, None]
    >>> config = TrainConfig(max_epochs=30, hidden=8, lr=1e-2)
    >>> fit = fit_head(X[::2], y[::2], X[1::2], y[1::2], n_classes=2, config=config)
    >>> fit.history[fit.best_epoch - 1]["val_uar"] > 0.9
    True
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from speech_emotion.model.head import EmotionHead, predict_proba
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.training.config import MIXUP_COPIES, TrainConfig
from speech_emotion.training.sanity import (
    Alarm,
    check_before_training,
    check_epoch,
    check_predictions,
    raise_errors,
)

log = logging.getLogger(__name__)

EPOCH_ALARM_HINT = (
    "If the data is known to be this easy (or a large head can memorise it), --warn-only (stop_on_alarm=False) "
    "reports such alarms and trains on."
)
LBFGS_ITERATIONS = 20  # per epoch; each epoch starts a fresh L-BFGS memory, so checkpoints need no optimizer state


@dataclass
class TrainingState:
    """Everything :func:`fit_head` needs to go on after ``epoch`` exactly as if it had never stopped.

    Saved after every epoch (see :mod:`speech_emotion.training.checkpoint`): the head's and the
    optimizer's tensors, the best epoch's weights, the random number generators, and the
    bookkeeping of early stopping. ``stopped`` is true when training ended at ``epoch``
    (patience ran out), so a resumed run goes straight to scoring.
    """

    epoch: int
    history: list[dict]
    best_score: float
    best_epoch: int
    stale: int
    stopped: bool
    alarms: list[dict]
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor] | None
    optimizer: dict
    torch_rng: torch.Tensor
    generator_rng: torch.Tensor


@dataclass
class FitResult:
    """The trained head (best validation epoch), per-epoch history and sanity alarms."""

    head: EmotionHead
    history: list[dict]
    best_epoch: int
    class_weights: list[float]
    alarms: list[Alarm] = field(default_factory=list)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (K * count)``; 1.0 for a balanced class."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return len(y) / (n_classes * np.maximum(counts, 1))


def sample_weights(y: np.ndarray, groups: np.ndarray | None, balance: str) -> np.ndarray | None:
    """Per-example loss weights, or None for plain class weights (``balance="class"``).

    ``"corpus-class"``: every (corpus, class) cell weighs the same in total, ``n / (cells * count)``,
    so one large or easy corpus does not dominate; ``"none"``: every example weighs 1.

    >>> groups = np.array(["a", "a", "a", "b", "b", "b"])  # cells (a, 0): 2 clips, (a, 1): 1, (b, 1): 3
    >>> sample_weights(np.array([0, 0, 1, 1, 1, 1]), groups, "corpus-class").round(2).tolist()  # each cell sums to 2
    [1.0, 1.0, 2.0, 0.67, 0.67, 0.67]
    """
    if balance == "class":
        return None
    if balance == "none":
        return np.ones(len(y))
    if groups is None:
        raise ValueError("balance='corpus-class' needs the corpus of every training example (groups=...)")
    cells = np.array([f"{g}\0{label}" for g, label in zip(groups, y)])
    names, index, counts = np.unique(cells, return_inverse=True, return_counts=True)
    return len(y) / (len(names) * counts[index].astype(np.float64))


class _Loss:
    """The training loss: cross-entropy with class weights, or with per-example weights when given."""

    def __init__(self, class_weight: np.ndarray, per_example: np.ndarray | None):
        self._class = nn.CrossEntropyLoss(weight=torch.tensor(class_weight, dtype=torch.float32))
        self._per_example = None if per_example is None else torch.tensor(per_example, dtype=torch.float32)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        if self._per_example is None:
            return self._class(logits, y)
        weight = self._per_example[rows]
        return (weight * nn.functional.cross_entropy(logits, y, reduction="none")).sum() / weight.sum()


def fit_head(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    *,
    n_classes: int,
    config: TrainConfig | None = None,
    classes: list[str] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    resume: TrainingState | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
    groups: np.ndarray | None = None,
) -> FitResult:
    """Train a head; keep the weights of the epoch with the best validation UAR.

    Args:
        X_train: features, shape (n, n_layers, dim).
        y_train: class indices 0..K-1.
        X_val, y_val: validation features and labels (speaker-disjoint from training);
            ``None`` trains for ``max_epochs`` without early stopping.
        n_classes: K, from the schema.
        config: hyper-parameters and seed (same seed, same data → same weights); default
            :class:`TrainConfig()`. Its automatic choices are resolved here.
        classes: class names for messages.
        on_epoch: called with each epoch's metrics dict.
        resume: state saved after an epoch by ``on_checkpoint``; training goes on from the
            next epoch and ends with the same weights as a run that was never interrupted.
        on_checkpoint: called after each epoch (after ``on_epoch``) with the state to save.
        groups: the corpus of every training example (for ``config.balance="corpus-class"``).

    Raises:
        SanityError: a check of severity ``error`` fired (see :mod:`speech_emotion.training.sanity`).
    """
    classes = classes or [str(i) for i in range(n_classes)]
    config = (config or TrainConfig()).resolved(n_corpora=len(set(groups.tolist())) if groups is not None else 1)
    if config.finetune:
        raise ValueError(
            f"fit_head trains a head on fixed features, but config.finetune={config.finetune}: fine-tuning the encoder "
            "needs its clips, not features (speech_emotion.training.finetune.fit_finetune, or `ser train --finetune`)"
        )
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    head = EmotionHead(config.head_config(n_layers=X_train.shape[1], dim=X_train.shape[2], n_classes=n_classes))
    parts = {"train": y_train} | ({"val": y_val} if y_val is not None else {})
    alarms = check_before_training(head.n_outputs, parts, classes)

    X = torch.from_numpy(np.ascontiguousarray(X_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    head.fit_scaler(X)
    weights = class_weights(np.asarray(y_train), n_classes)
    if config.mixup:
        X, y = mixup(X, y, n_classes=n_classes, alpha=config.mixup, copies=MIXUP_COPIES, seed=config.seed)
    loss_fn = _Loss(weights, sample_weights(np.asarray(y_train), groups, config.balance))
    val_loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    optimizer = (
        torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.optimizer == "adamw"
        else None
    )
    Xv = torch.from_numpy(np.ascontiguousarray(X_val, dtype=np.float32)) if X_val is not None else None

    history, best_state, best_uar, best_epoch, stale, stopped, first = [], None, -1.0, 0, 0, False, 1
    if resume is not None:
        head.load_state_dict(resume.model)
        if optimizer is not None:
            optimizer.load_state_dict(
                {"state": resume.optimizer["state"], "param_groups": optimizer.state_dict()["param_groups"]}
            )
        history, best_uar, best_epoch, stale, stopped = (
            list(resume.history),
            resume.best_score,
            resume.best_epoch,
            resume.stale,
            resume.stopped,
        )
        best_state = resume.best_model
        alarms = [Alarm(**a) for a in resume.alarms]  # the checks above ran again and gave the same
        torch.set_rng_state(resume.torch_rng)
        generator.set_state(resume.generator_rng)
        first = resume.epoch + 1
    for epoch in range(first, config.max_epochs + 1):
        if stopped:
            break
        if optimizer is None:
            train_loss = _lbfgs_epoch(head, X, y, loss_fn, config.weight_decay)
            converged = bool(history) and abs(history[-1]["train_loss"] - train_loss) <= 1e-7 * max(1.0, train_loss)
        else:
            train_loss, converged = _adamw_epoch(head, X, y, loss_fn, optimizer, generator, config.batch_size), False
        record = {"epoch": epoch, "train_loss": train_loss}
        if Xv is not None:
            head.eval()
            with torch.no_grad():
                logits = head(Xv)
            val_pred = logits.argmax(dim=1).numpy()
            metrics = classification_metrics(y_val, val_pred, classes)
            record |= {
                "val_loss": float(val_loss_fn(logits, torch.from_numpy(np.asarray(y_val))).item()),
                "val_accuracy": metrics["accuracy"],
                "val_uar": metrics["uar"],
            }
        close_epoch(record, history, alarms, on_epoch=on_epoch, stop_on_alarm=config.stop_on_alarm)
        score = record.get("val_uar", -record["train_loss"])
        if score > best_uar:
            best_uar, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            stale += 1
            stopped = Xv is not None and stale >= config.patience
        stopped = stopped or converged
        if on_checkpoint:
            on_checkpoint(
                TrainingState(
                    epoch=epoch,
                    history=history,
                    best_score=best_uar,
                    best_epoch=best_epoch,
                    stale=stale,
                    stopped=stopped,
                    alarms=[a.to_dict() for a in alarms],
                    model=head.state_dict(),
                    best_model=best_state,
                    optimizer=optimizer.state_dict() if optimizer else {"state": {}, "param_groups": []},
                    torch_rng=torch.get_rng_state(),
                    generator_rng=generator.get_state(),
                )
            )
    head.load_state_dict(best_state)
    head.eval()
    if Xv is not None:
        final = check_predictions(predict_proba(head, X_val).argmax(axis=1), classes, "validation", best_epoch)
        for alarm in final:
            log.warning(alarm.message)
        alarms += final
    return FitResult(head, history, best_epoch, weights.tolist(), alarms)


def mixup(
    X: torch.Tensor, y: torch.Tensor, *, n_classes: int, alpha: float, copies: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set plus ``copies`` mixed examples per example, with soft targets.

    Each mixed example is ``lam * a + (1 - lam) * b`` of two random training examples, its
    target the same mixture of their one-hot labels, ``lam ~ Beta(alpha, alpha)`` (Zhang et
    al., 2018). Drawn once, from ``seed``, so that full-batch L-BFGS sees one fixed problem and
    a resumed run the same one. Class-weighted cross-entropy on one-hot targets equals the
    hard-label loss here because the weights are balanced (they sum to n over the examples).

    >>> X2, T = mixup(torch.eye(2), torch.tensor([0, 1]), n_classes=2, alpha=1.0, copies=3, seed=0)
    >>> X2.shape, T.shape, bool(torch.allclose(X2[:, 0], T[:, 0]))
    (torch.Size([8, 2]), torch.Size([8, 2]), True)
    """
    rng = np.random.default_rng(seed)
    n = len(X) * copies
    a, b = torch.from_numpy(rng.integers(len(X), size=n)), torch.from_numpy(rng.integers(len(X), size=n))
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=n).astype(np.float32))
    T = nn.functional.one_hot(y, n_classes).float()

    def mix(V: torch.Tensor) -> torch.Tensor:
        weight = lam.view(-1, *[1] * (V.ndim - 1))
        return weight * V[a] + (1 - weight) * V[b]

    return torch.cat([X, mix(X)]), torch.cat([T, mix(T)])


def close_epoch(
    record: dict,
    history: list[dict],
    alarms: list[Alarm],
    *,
    on_epoch: Callable[[dict], None] | None,
    stop_on_alarm: bool,
) -> None:
    """Run the per-epoch sanity checks on ``record``, add it to ``history``, report it, stop on an error alarm."""
    epoch_alarms = check_epoch(record["epoch"], record["train_loss"], record.get("val_accuracy"))
    record["alarms"] = [a.check for a in epoch_alarms]
    history.append(record)
    alarms += epoch_alarms
    for alarm in epoch_alarms:
        log.warning("epoch %d: %s", record["epoch"], alarm.message)
    if on_epoch:
        on_epoch(record)
    if stop_on_alarm:
        raise_errors(epoch_alarms, hint=EPOCH_ALARM_HINT)


def _adamw_epoch(
    head: EmotionHead,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: _Loss,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batch_size: int,
) -> float:
    """One shuffled pass of mini-batch steps; returns the mean training loss."""
    head.train()
    order = torch.randperm(len(X), generator=generator)
    total = 0.0
    for start in range(0, len(X), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = loss_fn(head(X[batch]), y[batch], batch)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(X)


def _lbfgs_epoch(head: EmotionHead, X: torch.Tensor, y: torch.Tensor, loss_fn: _Loss, l2: float) -> float:
    """Up to ``LBFGS_ITERATIONS`` full-batch L-BFGS iterations; returns the training loss after them."""
    head.eval()  # no dropout: the line search compares values of one deterministic function
    matrices = [p for p in head.parameters() if p.ndim > 1]  # biases and layer logits are not penalised
    optimizer = torch.optim.LBFGS(
        head.parameters(), max_iter=LBFGS_ITERATIONS, history_size=LBFGS_ITERATIONS, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(head(X), y) + 0.5 * l2 * sum(m.pow(2).sum() for m in matrices)
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        return float(loss_fn(head(X), y))
