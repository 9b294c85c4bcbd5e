"""``cross_validate``: leave-speakers-out K-fold cross-validation, features encoded once.

Each fold's test speakers are never seen in its training, and its validation speakers
(early stopping, calibration) are disjoint from both.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from speech_emotion.atomic import write_json
from speech_emotion.data.dataset import load_dataset
from speech_emotion.data.sources import as_sources
from speech_emotion.data.splits import Split, check_leakage, leave_speakers_out
from speech_emotion.features.normalise import speaker_normalise
from speech_emotion.features.store import encode_dataset
from speech_emotion.progress import Progress, no_progress
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import score_parts
from speech_emotion.training.run_folder import prepare_run_folder
from speech_emotion.version import __version__

METRICS = ("accuracy", "uar", "macro_f1")


def cross_validate(
    data: str | Path | list,
    *,
    encoder: str,
    folds: int,
    out: str | Path | None = None,
    labels=None,
    corpus: str | None = None,
    speaker_pattern: str | None = None,
    config: TrainConfig | None = None,
    skip_bad: bool = False,
    allow_single_label_speakers: bool = False,
    force: bool = False,
    store=None,
    progress: Progress = no_progress,
) -> dict:
    """Leave-speakers-out cross-validation of the frozen-encoder recipe.

    Args:
        data: corpus folder or CSV/TSV manifest, or a list of them (``PATH`` or ``PATH::ADAPTER``).
        encoder: encoder folder, hub id, or ``"egemaps"``.
        folds: K; every speaker is a test speaker in exactly one fold.
        out: folder for ``cv.json`` and ``config.json`` (optional).
        config: head hyper-parameters, seed (also seeds the fold assignment) and ``speaker_norm``
            (default :class:`TrainConfig()`).

    Returns:
        ``{"folds": [{test_speakers, val_speakers, accuracy, uar, macro_f1, ...}], "mean": {...},
        "std": {...}, "protocol", ...}``
    """
    from speech_emotion.features.encoders import load_encoder

    started = time.perf_counter()
    config = config or TrainConfig()
    sources = [source.absolute() for source in as_sources(data, corpus=corpus, speaker_pattern=speaker_pattern)]
    if out is not None:
        out = Path(out)
        prepare_run_folder(out, force)
        write_json(
            out / "config.json",
            {
                "speech_emotion": __version__,
                "data": [source.to_dict() for source in sources],
                "encoder": encoder,
                "folds": folds,
                "labels": labels,
                "train": config.to_dict(),
                "train_resolved": config.resolved().to_dict(),
            },
        )
    with progress("decoding audio", None) as advance:
        dataset = load_dataset(
            sources,
            labels=labels,
            skip_bad=skip_bad,
            allow_single_label_speakers=allow_single_label_speakers,
            progress=advance,
        )
    splits = leave_speakers_out(dataset.speakers, folds, seed=config.seed)
    for split in splits:
        check_leakage(split, dataset.speakers, dataset.hashes, dataset.paths)
    X = encode_dataset(dataset, load_encoder(encoder), store=store, progress=progress)
    if config.speaker_norm:
        X = speaker_normalise(X, dataset.speakers)
    encoded = time.perf_counter()

    classes = list(dataset.schema.classes)
    fold_results = []
    with progress("folds", len(splits)) as advance:
        for k, split in enumerate(splits, start=1):
            results = fit_fold(X, dataset.y, split, classes, config)
            test = results["test"]
            fold_results.append(
                {
                    "fold": k,
                    "test_speakers": split.speakers["test"],
                    "val_speakers": split.speakers["val"],
                    **{m: test[m] for m in METRICS},
                    "n": test["n"],
                    "best_epoch": results["best_epoch"],
                    "temperature": results["calibration"]["temperature"],
                    "ece_before": results["calibration"]["ece_test_before"],
                    "ece_after": results["calibration"]["ece_test_after"],
                    "confusion": test["confusion"],
                }
            )
            advance(1)
    summary = {
        "protocol": f"leave-speakers-out, {folds} folds" + (" + speaker-norm" if config.speaker_norm else ""),
        "encoder": encoder,
        "classes": classes,
        "n_files": len(dataset),
        "n_speakers": len(set(dataset.speakers)),
        "config": config.resolved().to_dict(),
        "folds": fold_results,
        "mean": {m: float(np.mean([f[m] for f in fold_results])) for m in METRICS},
        "std": {m: float(np.std([f[m] for f in fold_results])) for m in METRICS},
        "timing": {"encode_s": round(encoded - started, 2), "total_s": round(time.perf_counter() - started, 2)},
    }
    if out is not None:
        write_json(out / "cv.json", summary)
    return summary


def fit_fold(X: np.ndarray, y: np.ndarray, split: Split, classes: list[str], config: TrainConfig) -> dict:
    """Fit a head on ``split``'s train part (early-stopped on val) and score val and test.

    Returns:
        ``{"best_epoch", "calibration", "val", "test"}`` (see :func:`~speech_emotion.training.pipeline.score_parts`).
    """
    from speech_emotion.model.head import predict_logits
    from speech_emotion.training.loop import fit_head

    train, val = split.parts["train"], split.parts["val"]
    fit = fit_head(X[train], y[train], X[val], y[val], n_classes=len(classes), config=config, classes=classes)
    scored = {part: rows for part, rows in split.parts.items() if part != "train"}
    logits = {part: predict_logits(fit.head, X[rows]) for part, rows in scored.items()}
    return {
        "best_epoch": fit.best_epoch,
        **score_parts(logits, {part: y[rows] for part, rows in scored.items()}, classes),
    }
