"""``train``: corpus folder + encoder → a self-describing run folder with a model bundle.

Run folder layout (every file written atomically)::

    RUN/config.json      resolved configuration (what `ser train` was asked to do)
    RUN/labels.json      label report: counts before/after mapping, encoded values, K
    RUN/split.json       parts, speakers, per-class counts, leakage report
    RUN/skipped.json     files left out and why (only with --skip-bad)
    RUN/metrics.jsonl    one line per epoch
    RUN/results.json     final metrics, class weights, sanity alarms, timings
    RUN/model/           model.safetensors + model.json (the bundle)
"""

from __future__ import annotations

import contextlib
import csv
import io
import hashlib
import logging
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np

from speech_emotion import __version__
from speech_emotion.atomic import append_line, write_json, write_text
from speech_emotion.data.audio import load_audio
from speech_emotion.data.dataset import Dataset, load_dataset
from speech_emotion.data.splits import Split, check_leakage, speaker_disjoint_split
from speech_emotion.errors import SplitError
from speech_emotion.model.bundle import save_bundle
from speech_emotion.training.calibration import expected_calibration_error, fit_temperature, softmax
from speech_emotion.training.loop import FitResult, TrainConfig, fit_head, predict_logits
from speech_emotion.training.metrics import classification_metrics
from speech_emotion.training.speaker_norm import speaker_normalise

log = logging.getLogger(__name__)

Progress = Callable[[str, int | None], ContextManager[Callable[[int], None]]]
"""``progress(description, total)`` → context yielding ``advance(n)``; the CLI passes Rich bars."""

VAL_FRACTION = 1 / 6


@contextlib.contextmanager
def no_progress(description: str, total: int | None):
    yield lambda n=1: None


def encode_dataset(dataset: Dataset, encoder, *, store=None, progress: Progress = no_progress) -> np.ndarray:
    """Pooled features of every row, shape (n, n_layers, dim), through the feature store.

    Audio is decoded only for rows whose features are not cached yet.
    """
    from speech_emotion.features.store import FeatureStore, extract_features

    store = store if store is not None else FeatureStore()
    loaders = [partial(_decode, path) for path in dataset.paths]
    with progress(f"encoding ({encoder.family})", len(dataset)) as advance:
        return extract_features(encoder, loaders, dataset.hashes, store, progress=advance)


def _decode(path: str) -> np.ndarray:
    return load_audio(path)[0]


def prepare_run_folder(out: Path, force: bool) -> None:
    """Refuse to write into a non-empty folder unless ``force``; then start it empty."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out, or pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def make_split(dataset: Dataset, *, test_speakers=None, val_speakers=None, split_file: dict | None = None, seed: int = 0) -> Split:
    """The split a run uses: a saved one, or speaker-disjoint with a seeded validation sixth."""
    if split_file is not None:
        if "folds" in split_file:
            raise SplitError("--split got a file of folds; `ser train` takes a single split (use `ser cv` for folds)")
        split = Split.from_dict(split_file, dataset.speakers, dataset.paths)
    else:
        split = speaker_disjoint_split(
            dataset.speakers,
            test_speakers=test_speakers,
            val_speakers=val_speakers,
            val_fraction=None if val_speakers else VAL_FRACTION,
            seed=seed,
        )
    if "val" not in split.parts:
        raise SplitError("the split has no validation part; early stopping needs validation speakers (--val-speakers)")
    return split


def data_fingerprint(dataset: Dataset) -> str:
    """Hash of (audio content, class index) pairs and the schema: same data and labels, same fingerprint."""
    digest = hashlib.sha256(repr(dataset.schema.to_dict()).encode())
    for h, y in sorted(zip(dataset.hashes, dataset.y.tolist())):
        digest.update(f"{h}:{y};".encode())
    return digest.hexdigest()


def fit_and_score(
    X: np.ndarray, y: np.ndarray, split: Split, classes: list[str], config: TrainConfig, *, on_epoch: Callable[[dict], None] | None = None
) -> tuple[FitResult, dict]:
    """Fit a head on ``split``'s train part (early-stopped on val), calibrate on val, score val and test.

    Returns:
        The fit, and a results dict with per-part metrics, calibration (temperature fitted on
        validation speakers; ECE before/after), class and layer weights, sanity alarms.
    """
    train_rows, val_rows = split.parts["train"], split.parts["val"]
    fit = fit_head(X[train_rows], y[train_rows], X[val_rows], y[val_rows], n_classes=len(classes), config=config, classes=classes, on_epoch=on_epoch)
    temperature = fit_temperature(predict_logits(fit.head, X[val_rows]), y[val_rows])
    results = {
        "classes": classes,
        "protocol": split.protocol + (" + speaker-norm" if config.speaker_norm else ""),
        "n": {name: int(len(rows)) for name, rows in split.parts.items()},
        "speakers": split.speakers,
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "class_weights": dict(zip(classes, fit.class_weights)),
        "layer_weights": fit.head.layer_weights().detach().numpy().round(4).tolist(),
        "alarms": [a.to_dict() for a in fit.alarms],
        "calibration": {"temperature": temperature, "fitted_on": "val"},
    }
    for name in ("val", "test"):
        if name in split.parts:
            rows = split.parts[name]
            logits = predict_logits(fit.head, X[rows])
            results[name] = classification_metrics(y[rows], logits.argmax(axis=1), classes)
            results["calibration"][f"ece_{name}_before"] = expected_calibration_error(softmax(logits), y[rows])
            results["calibration"][f"ece_{name}_after"] = expected_calibration_error(softmax(logits / temperature), y[rows])
    return fit, results


def write_predictions(path: Path, dataset: Dataset, split: Split, logits: np.ndarray, classes: list[str]) -> None:
    """Per validation/test row: part, path, speaker, sex, true and predicted class, logits (for reports)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["part", "path", "speaker", "sex", "true", "predicted"] + [f"logit_{c}" for c in classes])
    for part in ("val", "test"):
        for row in split.parts.get(part, []):
            utterance = dataset.manifest[row]
            writer.writerow([part, utterance.path, utterance.speaker, utterance.fields.get("sex", ""), classes[dataset.y[row]],
                             classes[int(logits[row].argmax())]] + [f"{v:.6g}" for v in logits[row]])
    write_text(path, buffer.getvalue())


def train(
    data: str | Path,
    *,
    encoder: str,
    out: str | Path,
    labels=None,
    corpus: str | None = None,
    speaker_pattern: str | None = None,
    test_speakers: list[str] | None = None,
    val_speakers: list[str] | None = None,
    split_file: dict | None = None,
    allow_speaker_overlap: bool = False,
    config: TrainConfig = TrainConfig(),
    skip_bad: bool = False,
    force: bool = False,
    store=None,
    progress: Progress = no_progress,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a head on frozen-encoder features and write the run folder.

    Args:
        data: corpus folder or CSV/TSV manifest.
        encoder: encoder folder, hub id, or ``"egemaps"`` (required: no hidden default).
        out: run folder to create (refused when it exists and is not empty, unless ``force``).
        labels: ``--labels`` value (built-in name, schema file, mapping) or ``None``.
        test_speakers, val_speakers: explicit speaker lists; without validation speakers a
            seeded sixth of the speakers is drawn.
        split_file: a split saved by ``ser data split --out`` (parsed JSON).
        allow_speaker_overlap: accept a split whose parts share speakers (recorded).
        config: head hyper-parameters and seed.
        skip_bad: leave out files that will not load, listing them in ``skipped.json``.

    Returns:
        The contents of ``results.json``.

    Raises:
        FileExistsError, CorpusError, LabelError, SplitError, LeakageError, SanityError.
    """
    from speech_emotion.features.encoders import load_encoder

    started = time.perf_counter()
    out = Path(out)
    prepare_run_folder(out, force)
    resolved = {
        "speech_emotion": __version__,
        "data": str(Path(data).resolve()),
        "corpus": corpus,
        "labels": labels if not isinstance(labels, Path) else str(labels),
        "speaker_pattern": speaker_pattern,
        "encoder": encoder,
        "test_speakers": test_speakers,
        "val_speakers": val_speakers,
        "allow_speaker_overlap": allow_speaker_overlap,
        "skip_bad": skip_bad,
        "train": config.to_dict(),
    }
    write_json(out / "config.json", resolved)

    with progress("decoding audio", None) as advance:
        dataset = load_dataset(data, corpus=corpus, labels=labels, speaker_pattern=speaker_pattern, skip_bad=skip_bad, progress=advance)
    write_json(out / "labels.json", dataset.label_report)
    if dataset.problems:
        write_json(out / "skipped.json", [p.to_dict() for p in dataset.problems])
    split = make_split(dataset, test_speakers=test_speakers, val_speakers=val_speakers, split_file=split_file, seed=config.seed)
    leakage = check_leakage(split, dataset.speakers, dataset.hashes, dataset.paths, allow_speaker_overlap=allow_speaker_overlap)
    split_report = split.to_dict(dataset.paths) | {"leakage": leakage}
    for name, rows in split.parts.items():
        split_report["parts"][name]["counts"] = dict(zip(dataset.schema.classes, np.bincount(dataset.y[rows], minlength=dataset.schema.n_classes).tolist()))
    write_json(out / "split.json", split_report)

    loaded = load_encoder(encoder)
    X = encode_dataset(dataset, loaded, store=store, progress=progress)
    encoded = time.perf_counter()

    if config.speaker_norm:
        X = speaker_normalise(X, dataset.speakers)
    metrics_file = out / "metrics.jsonl"

    def record_epoch(record: dict) -> None:
        append_line(metrics_file, record)
        if on_epoch:
            on_epoch(record)

    with progress("training head", config.max_epochs) as advance:
        fit, results = fit_and_score(X, dataset.y, split, list(dataset.schema.classes), config, on_epoch=lambda r: (record_epoch(r), advance(1)))
    classes = results["classes"]

    meta = {
        "classes": classes,
        "schema": dataset.schema.to_dict(),
        "encoder": {
            "reference": encoder,
            "path": str(Path(encoder).resolve()) if Path(encoder).exists() else None,
            "family": loaded.family,
            "fingerprint": loaded.fingerprint,
            "n_layers": loaded.n_layers,
            "dim": loaded.dim,
        },
        "preprocessing": loaded.preprocessing,
        "train": config.to_dict(),
        "speaker_norm": config.speaker_norm,
        "calibration": results["calibration"],
        "metrics": {name: {k: results[name][k] for k in ("accuracy", "uar", "macro_f1", "n")} for name in ("val", "test") if name in results},
        "data": {
            "fingerprint": data_fingerprint(dataset),
            "corpus": sorted({u.corpus for u in dataset.manifest}),
            "protocol": split.protocol,
            "speakers": {name: split.speakers[name] for name in ("train", "val")},
            "audio_hashes": {name: sorted({dataset.hashes[i] for i in split.parts[name]}) for name in ("train", "val")},
        },
    }
    save_bundle(out / "model", fit.head, meta)
    write_predictions(out / "predictions.csv", dataset, split, predict_logits(fit.head, X), classes)
    results["timing"] = {"encode_s": round(encoded - started, 2), "total_s": round(time.perf_counter() - started, 2)}
    write_json(out / "results.json", results)
    from speech_emotion.reports import build_report

    build_report(out)
    return results
