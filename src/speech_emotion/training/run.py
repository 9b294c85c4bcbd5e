"""``train``: corpus folder + encoder → a self-describing run folder with a model bundle.

Run folder layout (every file written atomically)::

    RUN/config.json      resolved configuration (what `ser train` was asked to do)
    RUN/labels.json      label report: counts before/after mapping, encoded values, K
    RUN/split.json       parts, speakers, per-class counts, leakage report
    RUN/skipped.json     files left out and why (only with --skip-bad)
    RUN/metrics.jsonl    one line per epoch (cut back to the checkpoint's epoch on resume)
    RUN/status.json      stage, progress, epoch, pid, updated: what `ser monitor` shows
    RUN/checkpoints/     the newest epoch's checkpoint (safetensors + JSON), for `ser train --resume`
    RUN/tracking.json    the MLflow run id (only with a tracking URI)
    RUN/results.json     final metrics, class weights, sanity alarms, timings
    RUN/model/           model.safetensors + model.json (the bundle)

A run killed at any point (``kill -9``) goes on with :func:`resume` (``ser train --resume RUN``):
audio is decoded again, encoded features come back from the feature store, and training
restarts after the newest checkpoint with the saved optimizer and random states, so the final
weights are bit-identical to those of a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
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
from speech_emotion.monitor.status import RUNNING_STAGES, RunStatus, process_state, read_status
from speech_emotion.training.calibration import expected_calibration_error, fit_temperature, softmax
from speech_emotion.training.checkpoint import load_checkpoint, read_metrics, save_checkpoint, truncate_metrics
from speech_emotion.training.loop import FitResult, TrainConfig, TrainingState, fit_head, predict_logits
from speech_emotion.training.metrics import classification_metrics
from speech_emotion.training.speaker_norm import speaker_normalise

log = logging.getLogger(__name__)

Progress = Callable[[str, int | None], ContextManager[Callable[[int], None]]]
"""``progress(description, total)`` → context yielding ``advance(n)``; the CLI passes Rich bars."""

VAL_FRACTION = 1 / 6

PAUSE_ENV = "SER_TEST_PAUSE"
"""Test hook for the kill/resume tests: ``STAGE:N`` makes the run stop and wait (``PAUSE_SECONDS``)
at a known point so a test can ``kill -9`` it there: ``decoding:N`` / ``encoding:N`` once N files
are decoded / encoded (before the encoded chunk is written to the feature store), ``training:N``
right after epoch N's line is appended to metrics.jsonl (before its checkpoint is written).
``status.json`` shows ``"paused": "STAGE:N"`` while it waits."""
PAUSE_SECONDS = 600.0


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


def make_split(
    dataset: Dataset, *, test_speakers=None, val_speakers=None, split_file: dict | None = None, seed: int = 0
) -> Split:
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
    X: np.ndarray,
    y: np.ndarray,
    split: Split,
    classes: list[str],
    config: TrainConfig,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    resume: TrainingState | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
) -> tuple[FitResult, dict]:
    """Fit a head on ``split``'s train part (early-stopped on val), calibrate on val, score val and test.

    Returns:
        The fit, and a results dict with per-part metrics, calibration (temperature fitted on
        validation speakers; ECE before/after), class and layer weights, sanity alarms.
    """
    train_rows, val_rows = split.parts["train"], split.parts["val"]
    fit = fit_head(
        X[train_rows],
        y[train_rows],
        X[val_rows],
        y[val_rows],
        n_classes=len(classes),
        config=config,
        classes=classes,
        on_epoch=on_epoch,
        resume=resume,
        on_checkpoint=on_checkpoint,
    )
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
            results["calibration"][f"ece_{name}_after"] = expected_calibration_error(
                softmax(logits / temperature), y[rows]
            )
    return fit, results


def write_predictions(path: Path, dataset: Dataset, split: Split, logits: np.ndarray, classes: list[str]) -> None:
    """Per validation/test row: part, path, speaker, sex, true and predicted class, logits (for reports)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["part", "path", "speaker", "sex", "true", "predicted"] + [f"logit_{c}" for c in classes])
    for part in ("val", "test"):
        for row in split.parts.get(part, []):
            utterance = dataset.manifest[row]
            writer.writerow(
                [
                    part,
                    utterance.path,
                    utterance.speaker,
                    utterance.fields.get("sex", ""),
                    classes[dataset.y[row]],
                    classes[int(logits[row].argmax())],
                ]
                + [f"{v:.6g}" for v in logits[row]]
            )
    write_text(path, buffer.getvalue())


def run_config(
    data: str | Path,
    *,
    encoder: str,
    labels=None,
    corpus: str | None = None,
    speaker_pattern: str | None = None,
    test_speakers: list[str] | None = None,
    val_speakers: list[str] | None = None,
    split_file: dict | None = None,
    allow_speaker_overlap: bool = False,
    config: TrainConfig = TrainConfig(),
    skip_bad: bool = False,
    tracking_uri: str | None = None,
) -> dict:
    """The resolved configuration written to ``RUN/config.json``: all :func:`resume` needs.

    Paths are made absolute (``labels_file``, ``encoder_path`` beside the values as given), a
    saved split is kept whole, and the head's :class:`TrainConfig` is under ``train``.

    >>> cfg = run_config("corpus", encoder="egemaps", labels="ravdess-7", config=TrainConfig(seed=3))
    >>> cfg["labels"], cfg["encoder_path"], cfg["train"]["seed"], Path(cfg["data"]).is_absolute()
    ('ravdess-7', None, 3, True)
    """
    from speech_emotion.data.labels import LabelSchema

    if isinstance(labels, LabelSchema):
        labels = labels.to_dict()
    elif isinstance(labels, Path):
        labels = str(labels)
    labels_file = (
        str(Path(labels).resolve())
        if isinstance(labels, str) and not labels.lstrip().startswith("{") and Path(labels).is_file()
        else None
    )
    return {
        "speech_emotion": __version__,
        "data": str(Path(data).resolve()),
        "corpus": corpus,
        "labels": labels,
        "labels_file": labels_file,
        "speaker_pattern": speaker_pattern,
        "encoder": encoder,
        "encoder_path": str(Path(encoder).resolve()) if Path(encoder).exists() else None,
        "test_speakers": test_speakers,
        "val_speakers": val_speakers,
        "split_file": split_file,
        "allow_speaker_overlap": allow_speaker_overlap,
        "skip_bad": skip_bad,
        "train": config.to_dict(),
        "tracking_uri": tracking_uri,
    }


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
    tracking_uri: str | None = None,
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
        tracking_uri: log the run to MLflow there (default: ``$MLFLOW_TRACKING_URI``; neither: no tracking).

    Returns:
        The contents of ``results.json``.

    Raises:
        FileExistsError, CorpusError, LabelError, SplitError, LeakageError, SanityError,
        TrackingError, ImportError (a tracking URI without MLflow installed).
    """
    from speech_emotion.tracking import tracking_uri as resolve_uri
    from speech_emotion.training.distributed import barrier, current_world, process_group

    out = Path(out)
    world = current_world()
    if world.size > 1 and not config.finetune:
        raise ValueError(
            f"WORLD_SIZE={world.size}: several processes (torchrun) train only in fine-tune mode; the frozen head "
            "trains "
            "in seconds in one process: run `ser train` without torchrun, or add --finetune top-N"
        )
    resolved = run_config(
        data,
        encoder=encoder,
        labels=labels,
        corpus=corpus,
        speaker_pattern=speaker_pattern,
        test_speakers=test_speakers,
        val_speakers=val_speakers,
        split_file=split_file,
        allow_speaker_overlap=allow_speaker_overlap,
        config=config,
        skip_bad=skip_bad,
        tracking_uri=resolve_uri(tracking_uri) if world.is_main else None,
    )
    if out.exists() and any(out.iterdir()) and not force:
        prepare_run_folder(out, force)  # raises, on every rank alike: none has written anything yet
    preloaded = None
    if config.finetune:  # refuse an encoder that cannot be fine-tuned before the run folder exists
        from speech_emotion.training.finetune import load_finetune_encoder

        preloaded = load_finetune_encoder(resolved, config.finetune, world)
    with process_group(world):
        barrier(world)  # every rank has checked --out before rank 0 writes into it
        if world.is_main:
            prepare_run_folder(out, force)
            write_json(out / "config.json", resolved)
        else:
            progress = no_progress  # one set of progress bars: rank 0's
        results = _execute(
            out,
            resolved,
            resumed=0,
            store=store,
            progress=progress,
            on_epoch=on_epoch,
            world=world,
            preloaded=preloaded,
        )
        barrier(world)  # every rank returns once rank 0 has written the run folder
        return results


def resume(
    run: str | Path,
    *,
    store=None,
    progress: Progress = no_progress,
    on_epoch: Callable[[dict], None] | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Continue a run that was killed or failed, from ``RUN/config.json`` and its newest checkpoint.

    Decoding runs again, features come back from the feature store (those encoded before the
    kill) and training continues after the newest checkpoint's epoch: the final weights are
    bit-identical to those of an uninterrupted run. ``metrics.jsonl`` is cut back to that epoch
    first, so no epoch is recorded twice.

    Args:
        run: the run folder made by :func:`train`.
        tracking_uri: MLflow URI; default: the one the run was started with, else
            ``$MLFLOW_TRACKING_URI``. The MLflow run of ``RUN/tracking.json`` is continued.

    Returns:
        The contents of ``results.json``.

    Raises:
        FileNotFoundError: ``run`` has no ``config.json``.
        FileExistsError: the run finished already, or its process is still running.
        ValueError: the checkpoint does not match the corpus, labels, encoder or config any more.
    """
    from speech_emotion.tracking import tracking_uri as resolve_uri

    run = Path(run)
    try:
        resolved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{run / 'config.json'}: not found; {run} is not a run folder made by `ser train`, or it was killed before "
            "it started: start it again with `ser train ... --out`"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{run / 'config.json'}: not valid JSON ({error}); start the run again") from None
    if "train" not in resolved or "encoder" not in resolved:
        raise ValueError(
            f"{run / 'config.json'}: no 'train' and 'encoder' settings; only runs made by `ser train` can be resumed"
        )
    if resolved["train"].get("finetune"):
        raise ValueError(
            f"{run}: a fine-tune run (--finetune top-{resolved['train']['finetune']}) keeps no checkpoints and cannot "
            "be resumed; "
            f"start it again with the same `ser train ... --finetune top-{resolved['train']['finetune']}` and --force"
        )
    status = read_status(run) or {}
    if status.get("stage") == "finished":
        raise FileExistsError(
            f"{run} finished already ({run / 'results.json'}); nothing to resume. Train a new run with another --out"
        )
    if status.get("stage") in RUNNING_STAGES and process_state(status) == "alive":
        raise FileExistsError(
            f"{run} is still running (pid {status.get('pid')}, stage {status.get('stage')}); follow it with `ser "
            f"monitor {run}`, "
            f"or stop it (kill {status.get('pid')}) before resuming"
        )
    uri = resolve_uri(tracking_uri) or resolved.get("tracking_uri")
    if uri != resolved.get("tracking_uri"):
        resolved["tracking_uri"] = uri
        write_json(run / "config.json", resolved)
    log.info("resuming %s (resumed %d time(s) before)", run, status.get("resumed", 0))
    return _execute(
        run, resolved, resumed=int(status.get("resumed", 0)) + 1, store=store, progress=progress, on_epoch=on_epoch
    )


def _pause_at() -> tuple[str, int] | None:
    spec = os.environ.get(PAUSE_ENV, "")
    stage, _, n = spec.partition(":")
    if not spec:
        return None
    if stage not in RUNNING_STAGES or not n.isdigit():
        raise ValueError(
            f"{PAUSE_ENV}={spec!r}: expected STAGE:N with STAGE one of {', '.join(RUNNING_STAGES)} (a test hook; unset "
            "it)"
        )
    return stage, int(n)


def _pause(status: RunStatus, where: str) -> None:
    log.warning("%s=%s: pausing here for %.0f s (a test hook: kill the run now)", PAUSE_ENV, where, PAUSE_SECONDS)
    status.update(paused=where)
    time.sleep(PAUSE_SECONDS)
    status.update(paused=None)


def _with_status(progress: Progress, status: RunStatus, pause: tuple[str, int] | None) -> Progress:
    """``progress`` that also counts into ``status.json`` (and honours the pause hook)."""

    @contextlib.contextmanager
    def wrapped(description: str, total: int | None):
        paused = False

        def advance(n: int = 1) -> None:
            nonlocal paused
            step(n)
            status.advance(n)
            stage = status.data["stage"]
            if pause and not paused and pause[0] == stage and status.data["progress"]["n"] >= pause[1]:
                paused = True
                _pause(status, f"{stage}:{pause[1]}")

        with progress(description, total) as step:
            yield advance

    return wrapped


def _checkpoint_meta(config: TrainConfig, dataset: Dataset, encoder, split: Split) -> dict:
    """What a checkpoint must still match to be resumed from (as JSON would give it back)."""
    return json.loads(
        json.dumps(
            {
                "train": config.to_dict(),
                "data_fingerprint": data_fingerprint(dataset),
                "encoder_fingerprint": encoder.fingerprint,
                "split": {name: len(rows) for name, rows in split.parts.items()},
            }
        )
    )


class _SilentStatus(RunStatus):
    """The status of a rank other than 0: kept in memory, never written (rank 0 alone writes)."""

    def write(self) -> None:
        pass


def _execute(
    out: Path,
    resolved: dict,
    *,
    resumed: int,
    store,
    progress: Progress,
    on_epoch: Callable[[dict], None] | None,
    world=None,
    preloaded=None,
) -> dict:
    """Run (or resume) the run described by ``resolved`` in ``out``; keeps ``status.json`` current."""
    from speech_emotion.training.distributed import World

    world = world or World()
    status = RunStatus(out, resumed=resumed) if world.is_main else _SilentStatus(out, resumed=resumed)
    tracker = None
    try:
        if resolved.get("tracking_uri") and world.is_main:
            from speech_emotion.tracking import MlflowTracker

            tracker = MlflowTracker(resolved["tracking_uri"], out)
            tracker.start(resolved)
        if resolved["train"].get("finetune"):
            from speech_emotion.training.finetune import run_finetune

            results = run_finetune(
                out,
                resolved,
                status,
                tracker,
                store=store,
                progress=progress,
                on_epoch=on_epoch,
                world=world,
                encoder=preloaded,
            )
        else:
            results = _run(out, resolved, status, tracker, store=store, progress=progress, on_epoch=on_epoch)
        if tracker is not None:
            tracker.finish(results)
    except BaseException as error:
        status.fail("interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else error)
        if tracker is not None:
            tracker.fail()
        raise
    status.finish()
    return results


def prepare_data(
    out: Path, resolved: dict, status: RunStatus, progress: Progress, *, write: bool = True
) -> tuple[Dataset, Split]:
    """Decode and label the corpus, split it, check for leakage; write labels/skipped/split reports when ``write``."""
    labels = resolved.get("labels_file") or resolved.get("labels")
    corpus, speaker_pattern, skip_bad = (
        resolved.get("corpus"),
        resolved.get("speaker_pattern"),
        bool(resolved.get("skip_bad")),
    )
    status.stage("decoding")
    with progress("decoding audio", None) as advance:
        dataset = load_dataset(
            resolved["data"],
            corpus=corpus,
            labels=labels,
            speaker_pattern=speaker_pattern,
            skip_bad=skip_bad,
            progress=advance,
        )
    if write:
        write_json(out / "labels.json", dataset.label_report)
        if dataset.problems:
            write_json(out / "skipped.json", [p.to_dict() for p in dataset.problems])
    split = make_split(
        dataset,
        test_speakers=resolved.get("test_speakers"),
        val_speakers=resolved.get("val_speakers"),
        split_file=resolved.get("split_file"),
        seed=int(resolved["train"].get("seed", 0)),
    )
    leakage = check_leakage(
        split,
        dataset.speakers,
        dataset.hashes,
        dataset.paths,
        allow_speaker_overlap=bool(resolved.get("allow_speaker_overlap")),
    )
    split_report = split.to_dict(dataset.paths) | {"leakage": leakage}
    for name, rows in split.parts.items():
        split_report["parts"][name]["counts"] = dict(
            zip(dataset.schema.classes, np.bincount(dataset.y[rows], minlength=dataset.schema.n_classes).tolist())
        )
    if write:
        write_json(out / "split.json", split_report)
    return dataset, split


def bundle_meta(
    dataset: Dataset, split: Split, config: TrainConfig, results: dict, *, encoder: dict, preprocessing: dict
) -> dict:
    """``model.json`` of a run's bundle (format tag, version and head config are added by ``save_bundle``)."""
    return {
        "classes": results["classes"],
        "schema": dataset.schema.to_dict(),
        "encoder": encoder,
        "preprocessing": preprocessing,
        "train": config.to_dict(),
        "speaker_norm": config.speaker_norm,
        "calibration": results["calibration"],
        "metrics": {
            name: {k: results[name][k] for k in ("accuracy", "uar", "macro_f1", "n")}
            for name in ("val", "test")
            if name in results
        },
        "data": {
            "fingerprint": data_fingerprint(dataset),
            "corpus": sorted({u.corpus for u in dataset.manifest}),
            "protocol": split.protocol,
            "speakers": {name: split.speakers[name] for name in ("train", "val")},
            "audio_hashes": {name: sorted({dataset.hashes[i] for i in split.parts[name]}) for name in ("train", "val")},
        },
    }


def _run(
    out: Path,
    resolved: dict,
    status: RunStatus,
    tracker,
    *,
    store,
    progress: Progress,
    on_epoch: Callable[[dict], None] | None,
) -> dict:
    from speech_emotion.features.encoders import load_encoder

    started = time.perf_counter()
    config = TrainConfig(**resolved["train"])
    encoder = resolved["encoder"]
    tracked = _with_status(progress, status, _pause_at())
    dataset, split = prepare_data(out, resolved, status, tracked)

    status.stage("encoding", total=len(dataset))
    encoder_path = resolved.get("encoder_path")
    loaded = load_encoder(encoder_path if encoder_path and Path(encoder_path).exists() else encoder)
    X = encode_dataset(dataset, loaded, store=store, progress=tracked)
    encoded = time.perf_counter()

    if config.speaker_norm:
        X = speaker_normalise(X, dataset.speakers)
    metrics_file = out / "metrics.jsonl"
    checkpoints = out / "checkpoints"
    checkpoint_meta = _checkpoint_meta(config, dataset, loaded, split)
    state = None
    found = load_checkpoint(checkpoints)
    if found is not None:
        state, saved = found
        changed = sorted(k for k in set(checkpoint_meta) | set(saved) if checkpoint_meta.get(k) != saved.get(k))
        if changed:
            raise ValueError(
                f"{checkpoints}: the checkpoint of epoch {state.epoch} was made with another {', '.join(changed)} "
                "(the corpus, labels, encoder or settings changed since the run began); restore them, or delete "
                f"{checkpoints} "
                "to train again from epoch 1"
            )
        log.info("resuming training after epoch %d (%s)", state.epoch, checkpoints)
    dropped = truncate_metrics(metrics_file, state.epoch if state else 0)
    if dropped:
        log.info("%s: dropped %d line(s) after the checkpoint's epoch", metrics_file, dropped)
    if tracker is not None:
        for record in read_metrics(metrics_file):
            tracker.log_epoch(record)
    status.stage(
        "training",
        total=config.max_epochs,
        epoch=state.epoch if state else 0,
        max_epochs=config.max_epochs,
        best_epoch=state.best_epoch if state else None,
    )
    pause = _pause_at()

    def record_epoch(record: dict) -> None:
        append_line(metrics_file, record)
        status.update(epoch=record["epoch"], progress={"n": record["epoch"], "total": config.max_epochs})
        if tracker is not None:
            tracker.log_epoch(record)
        if on_epoch:
            on_epoch(record)
        if pause and pause[0] == "training" and record["epoch"] == pause[1]:
            _pause(status, f"training:{pause[1]}")

    def checkpoint(saved: TrainingState) -> None:
        save_checkpoint(checkpoints, saved, meta=checkpoint_meta)
        status.update(best_epoch=saved.best_epoch)

    with progress("training head", config.max_epochs) as advance:
        if state is not None:
            advance(state.epoch)
        fit, results = fit_and_score(
            X,
            dataset.y,
            split,
            list(dataset.schema.classes),
            config,
            on_epoch=lambda r: (record_epoch(r), advance(1)),
            resume=state,
            on_checkpoint=checkpoint,
        )
    classes = results["classes"]

    encoder_meta = {
        "reference": encoder,
        "path": encoder_path,
        "family": loaded.family,
        "fingerprint": loaded.fingerprint,
        "n_layers": loaded.n_layers,
        "dim": loaded.dim,
    }
    meta = bundle_meta(dataset, split, config, results, encoder=encoder_meta, preprocessing=loaded.preprocessing)
    save_bundle(out / "model", fit.head, meta)
    write_predictions(out / "predictions.csv", dataset, split, predict_logits(fit.head, X), classes)
    results["timing"] = {"encode_s": round(encoded - started, 2), "total_s": round(time.perf_counter() - started, 2)}
    if resumed := status.data.get("resumed"):
        results["resumed"] = resumed
    write_json(out / "results.json", results)
    from speech_emotion.reports import build_report

    build_report(out)
    return results
