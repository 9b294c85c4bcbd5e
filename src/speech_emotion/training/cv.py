"""``cross_validate``: speaker folds within corpora, or a cross-corpus matrix; features encoded once.

Leave-speakers-out (the default protocol): each fold's test speakers are never seen in its
training, and its validation speakers (early stopping, calibration) are disjoint from both.

Leave-one-corpus-out (``leave_corpus_out=True``, two corpora or more): for each corpus, a model
trained on all the others (validation speakers drawn from them) is tested on it; and for each
single corpus, a model trained on it alone is tested on every other. Every cell gives the
unadapted figure and, apart, the figure adapted to the test corpus's domain from its own
unlabelled clips (DESIGN invariant 10).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from speech_emotion.atomic import write_json
from speech_emotion.data.dataset import Dataset, load_dataset
from speech_emotion.data.sources import as_sources
from speech_emotion.data.splits import Split, check_leakage, leave_speakers_out, speaker_disjoint_split
from speech_emotion.errors import SplitError
from speech_emotion.features.augment import Augmentation
from speech_emotion.features.normalise import DomainStatistics, apply_by_group, speaker_normalise, standardise_groups
from speech_emotion.features.store import encode_dataset
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.progress import Progress, no_progress
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.modes import training_set
from speech_emotion.training.pipeline import VAL_FRACTION, score_parts
from speech_emotion.training.run_folder import prepare_run_folder
from speech_emotion.version import __version__

METRICS = ("accuracy", "uar", "macro_f1")


def cross_validate(
    data: str | Path | list,
    *,
    encoder: str,
    folds: int = 6,
    leave_corpus_out: bool = False,
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
    device: str = "auto",
    precision: str = "fp32",
) -> dict:
    """Cross-validation of the frozen-encoder recipe: speaker folds, or the cross-corpus matrix.

    Args:
        data: corpus folder or CSV/TSV manifest, or a list of them (``PATH`` or ``PATH::ADAPTER``).
        encoder: encoder folder, hub id, or ``"egemaps"``.
        folds: K speaker folds; every speaker is a test speaker in exactly one.
        leave_corpus_out: the cross-corpus matrix instead of speaker folds (two corpora or more).
        out: folder for ``cv.json``, ``config.json`` and, for the matrix, ``report.html`` with its heat map.
        config: head hyper-parameters, seed (also seeds the fold assignment), ``speaker_norm``,
            ``balance``, ``domain_norm`` (default :class:`TrainConfig()`).
        device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        precision: ``fp32`` or ``bf16``; recorded in ``config.json`` (bf16 features are not fp32 features).

    Returns:
        Speaker folds: ``{"folds": [{test_speakers, val_speakers, accuracy, uar, macro_f1, ...}],
        "mean", "std", "protocol", ...}``. Matrix: ``{"matrix": [{"train": [...], "test", "n",
        "accuracy", "uar", "macro_f1", "adapted": {...}}], "leave_one_out": {"mean": ...}, ...}``.

    Raises:
        SplitError: too few speakers for the folds, or one corpus for the matrix.
    """
    from speech_emotion.features.devices import check_precision, resolve_device
    from speech_emotion.features.encoders import load_encoder

    started = time.perf_counter()
    precision = check_precision(precision)
    resolve_device(device)  # a missing GPU fails before anything is written
    sources = [source.absolute() for source in as_sources(data, corpus=corpus, speaker_pattern=speaker_pattern)]
    asked = config or TrainConfig()
    config = asked.resolved(n_corpora=len(sources))
    if out is not None:
        out = Path(out)
        prepare_run_folder(out, force)
        write_json(
            out / "config.json",
            {
                "speech_emotion": __version__,
                "data": [source.to_dict() for source in sources],
                "encoder": encoder,
                "precision": precision,
                "folds": None if leave_corpus_out else folds,
                "leave_corpus_out": leave_corpus_out,
                "labels": labels,
                "train": asked.to_dict(),
                "train_resolved": config.to_dict(),
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
    corpora = np.asarray([u.corpus for u in dataset.manifest])
    if leave_corpus_out and len(set(corpora)) < 2:
        raise SplitError(
            f"--leave-corpus-out needs at least two corpora; got only {corpora[0] if len(corpora) else 'none'}"
        )
    loaded = load_encoder(encoder, device=device, precision=precision)
    X = encode_dataset(dataset, loaded, store=store, progress=progress)
    augmented = [
        encode_dataset(dataset, loaded, store=store, progress=progress, augmentation=Augmentation.parse(a))
        for a in config.augment
    ]
    if config.speaker_norm:
        X = speaker_normalise(X, dataset.speakers)
    encoded = time.perf_counter()
    fold = _corpus_matrix if leave_corpus_out else _speaker_folds
    summary = fold(X, augmented, dataset, corpora, config, folds=folds, progress=progress)
    summary |= {
        "encoder": encoder,
        "classes": list(dataset.schema.classes),
        "n_files": len(dataset),
        "n_speakers": len(set(dataset.speakers)),
        "corpora": {name: int((corpora == name).sum()) for name in sorted(set(corpora))},
        "config": config.to_dict(),
        "timing": {"encode_s": round(encoded - started, 2), "total_s": round(time.perf_counter() - started, 2)},
    }
    if out is not None:
        write_json(out / "cv.json", summary)
        if leave_corpus_out:
            from speech_emotion.reports import build_matrix_report

            build_matrix_report(out)
    return summary


def _speaker_folds(
    X: np.ndarray, augmented: list, dataset: Dataset, corpora: np.ndarray, config: TrainConfig, *, folds: int, progress
) -> dict:
    splits = leave_speakers_out(dataset.speakers, folds, seed=config.seed)
    for split in splits:
        check_leakage(split, dataset.speakers, dataset.hashes, dataset.paths)
    if config.domain_norm == "corpus":
        X = standardise_groups(X, corpora, kind="corpus")[0]
    classes = list(dataset.schema.classes)
    fold_results = []
    with progress("folds", len(splits)) as advance:
        for k, split in enumerate(splits, start=1):
            results = fit_fold(X, dataset.y, split, classes, config, groups=corpora, augmented=augmented)
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
    return {
        "protocol": f"leave-speakers-out, {folds} folds"
        + (" + speaker-norm" if config.speaker_norm else "")
        + (" + corpus-norm" if config.domain_norm == "corpus" else ""),
        "folds": fold_results,
        "mean": {m: float(np.mean([f[m] for f in fold_results])) for m in METRICS},
        "std": {m: float(np.std([f[m] for f in fold_results])) for m in METRICS},
    }


def _corpus_matrix(
    X: np.ndarray, augmented: list, dataset: Dataset, corpora: np.ndarray, config: TrainConfig, *, folds: int, progress
) -> dict:
    names = sorted(set(corpora.tolist()))
    plans = [([c for c in names if c != held_out], [held_out]) for held_out in names]  # leave one corpus out
    plans += [([c], [d for d in names if d != c]) for c in names] if len(names) > 2 else []  # one corpus alone
    normalised = None
    if config.domain_norm == "corpus":
        normalised, by_corpus = standardise_groups(X, corpora, kind="corpus")
        augmented = [apply_by_group(A, corpora, by_corpus) for A in augmented]
    classes = list(dataset.schema.classes)
    cells = []
    with progress("cross-corpus fits", len(plans)) as advance:
        for train_corpora, test_corpora in plans:
            cells += _train_and_test(
                X, normalised, augmented, dataset, corpora, config, classes, train_corpora, test_corpora
            )
            advance(1)
    leave_one_out = [c for c in cells if len(c["train"]) == len(names) - 1]
    return {
        "protocol": "leave-one-corpus-out" + (" + corpus-norm" if config.domain_norm == "corpus" else ""),
        "matrix": cells,
        "leave_one_out": {
            "mean": {m: float(np.mean([c[m] for c in leave_one_out])) for m in METRICS},
            "adapted_mean": {m: float(np.mean([c["adapted"][m] for c in leave_one_out])) for m in METRICS},
        },
    }


def _train_and_test(
    X: np.ndarray,
    normalised: np.ndarray | None,
    augmented: list[np.ndarray],
    dataset: Dataset,
    corpora: np.ndarray,
    config: TrainConfig,
    classes: list[str],
    train_corpora: list[str],
    test_corpora: list[str],
) -> list[dict]:
    """One model on ``train_corpora`` (validation speakers drawn from each), scored on each test corpus."""
    from speech_emotion.model.head import predict_logits
    from speech_emotion.training.loop import fit_head

    pool = np.flatnonzero(np.isin(corpora, train_corpora))
    speakers = [dataset.speakers[i] for i in pool]
    split = speaker_disjoint_split(speakers, val_fraction=VAL_FRACTION, seed=config.seed)
    train, val = pool[split.parts["train"]], pool[split.parts["val"]]
    features = X if normalised is None else normalised
    X_train, y_train, groups = training_set(
        features[train], dataset.y[train], corpora[train], [A[train] for A in augmented]
    )
    fit = fit_head(
        X_train,
        y_train,
        features[val],
        dataset.y[val],
        n_classes=len(classes),
        config=config,
        classes=classes,
        groups=groups,
    )
    training = DomainStatistics.estimate(X[train], name="the training clips")
    cells = []
    for test_corpus in test_corpora:
        rows = np.flatnonzero(corpora == test_corpus)
        own = DomainStatistics.estimate(X[rows], name=f"corpus {test_corpus!r}")
        if normalised is None:  # trained on raw features: unadapted as is; adapted moved into the training domain
            unadapted, adapted = X[rows], own.apply(X[rows]) * training.scale + training.mean
        else:  # trained per corpus: unadapted with the training clips' statistics; adapted with its own
            unadapted, adapted = training.apply(X[rows]), normalised[rows]
        y = dataset.y[rows]
        scores = {}
        for name, inputs in (("unadapted", unadapted), ("adapted", adapted)):
            metrics = classification_metrics(y, predict_logits(fit.head, inputs).argmax(axis=1), classes)
            scores[name] = {m: metrics[m] for m in (*METRICS, "n", "confusion")}
        cells.append(
            {
                "train": train_corpora,
                "test": test_corpus,
                **scores["unadapted"],
                "adapted": scores["adapted"] | {"n_clips": own.n_clips},
            }
        )
    return cells


def fit_fold(
    X: np.ndarray,
    y: np.ndarray,
    split: Split,
    classes: list[str],
    config: TrainConfig,
    *,
    groups: np.ndarray | None = None,
    augmented: list[np.ndarray] = (),
) -> dict:
    """Fit a head on ``split``'s train part (early-stopped on val) and score val and test.

    ``augmented``: per augmentation, the altered clips' features, row for row with ``X``.

    Returns:
        ``{"best_epoch", "calibration", "val", "test"}`` (see :func:`~speech_emotion.training.pipeline.score_parts`).
    """
    from speech_emotion.model.head import predict_logits
    from speech_emotion.training.loop import fit_head

    train, val = split.parts["train"], split.parts["val"]
    groups = np.zeros(len(y), dtype=np.int64) if groups is None else groups
    X_train, y_train, train_groups = training_set(X[train], y[train], groups[train], [A[train] for A in augmented])
    fit = fit_head(
        X_train, y_train, X[val], y[val], n_classes=len(classes), config=config, classes=classes, groups=train_groups
    )
    scored = {part: rows for part, rows in split.parts.items() if part != "train"}
    logits = {part: predict_logits(fit.head, X[rows]) for part, rows in scored.items()}
    return {
        "best_epoch": fit.best_epoch,
        **score_parts(logits, {part: y[rows] for part, rows in scored.items()}, classes),
    }
