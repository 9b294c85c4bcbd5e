"""``train`` and ``resume``: corpus folder + encoder → a self-describing run folder with a model bundle.

One pipeline for both training modes. Every run takes the same four steps:

1. **prepare**: decode and label the corpus, split it by speaker, check the split for leakage;
2. **fit**: the mode's own step (:func:`~speech_emotion.training.modes.fit_frozen` or
   :func:`~speech_emotion.training.modes.fit_finetuned`);
3. **score**: one results dict for both (per-part metrics, calibration, weights, alarms);
4. **save**: the bundle (``model.json`` built in one place), predictions, results, report.

Run folder layout (every file written atomically)::

    RUN/config.json      what the run was asked to do (:class:`~speech_emotion.training.config.RunConfig`)
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

import csv
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from speech_emotion.atomic import write_json, write_text
from speech_emotion.data.dataset import Dataset, load_dataset
from speech_emotion.data.splits import Split, check_leakage, speaker_disjoint_split
from speech_emotion.errors import SplitError
from speech_emotion.features.store import FeatureStore
from speech_emotion.model.calibration import expected_calibration_error, fit_temperature, softmax
from speech_emotion.model.metadata import BundleMeta
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.progress import Progress, no_progress
from speech_emotion.training.config import CONFIG_FILE, RunConfig, TrainConfig
from speech_emotion.training.modes import Fitted, RunContext, StepHook, data_fingerprint, fit_finetuned, fit_frozen
from speech_emotion.training.run_folder import RUNNING_STAGES, RunStatus, prepare_run_folder, process_state, read_status

log = logging.getLogger(__name__)

VAL_FRACTION = 1 / 6
"""Share of the speakers drawn for validation when none are named."""

METRIC_KEYS = ("accuracy", "uar", "macro_f1", "n")


def train(
    data: str | Path | list,
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
    allow_single_label_speakers: bool = False,
    config: TrainConfig | None = None,
    skip_bad: bool = False,
    force: bool = False,
    store: FeatureStore | None = None,
    progress: Progress = no_progress,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: StepHook | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> dict:
    """Train a head (or fine-tune the encoder's top layers with it) and write the run folder.

    Args:
        data: corpus folder or CSV/TSV manifest, or a list of them (``PATH`` or ``PATH::ADAPTER``):
            several corpora train one model, speakers namespaced by corpus (``tess:OAF``).
        encoder: encoder folder, hub id, or ``"egemaps"`` (required: no hidden default).
        out: run folder to create (refused when it exists and is not empty, unless ``force``).
        labels: ``--labels`` value (built-in name, schema file, mapping) or ``None``.
        test_speakers, val_speakers, split_file: how to split (see :func:`make_split`).
        allow_speaker_overlap: accept parts that share speakers (not speaker-independent).
        allow_single_label_speakers: accept speakers that each have one label (see
            :func:`~speech_emotion.data.dataset.check_speaker_labels`).
        config: the training recipe (default :class:`TrainConfig()`); ``finetune > 0`` trains
            the encoder's top layers too, also under ``torchrun``.
        skip_bad: leave out files that will not load (listed in ``skipped.json``).
        store: the feature store (default: ``$SER_CACHE`` or the platform cache folder).
        progress: progress bars; on_epoch: called with each epoch's metrics; on_step: see
            :data:`~speech_emotion.training.modes.StepHook`.
        tracking_uri: MLflow URI (default ``$MLFLOW_TRACKING_URI``; none: no tracking).
        device: where the encoder runs: ``auto`` (CUDA when present), ``cpu``, ``cuda``,
            ``cuda:N``. Not recorded in the run's config (it does not change the answer);
            under torchrun each process takes the GPU of its ``LOCAL_RANK`` (keep ``auto``).
        precision: ``fp32`` or ``bf16`` (frozen encoder only), recorded in ``config.json``
            and in the bundle's ``preprocessing``.

    Returns:
        The contents of ``results.json``.

    Raises:
        FileExistsError: ``out`` is not empty and ``force`` is false.
        ValueError: a device that is not here, a refused precision, bf16 with fine-tuning.
        CorpusError, LabelError, SplitError, LeakageError, SanityError: see their messages.
    """
    from speech_emotion.tracking import tracking_uri as resolve_uri
    from speech_emotion.training.distributed import barrier, current_world, process_group

    out = Path(out)
    config = config or TrainConfig()
    world = current_world()
    if world.size > 1 and not config.finetune:
        raise ValueError(
            f"WORLD_SIZE={world.size}: several processes (torchrun) train only in fine-tune mode; the frozen head "
            "trains in seconds in one process: run `ser train` without torchrun, or add --finetune top-N"
        )
    check_run_device(device, world)
    run_config = RunConfig.create(
        data,
        encoder=encoder,
        labels=labels,
        train=config,
        precision=precision,
        corpus=corpus,
        speaker_pattern=speaker_pattern,
        test_speakers=test_speakers,
        val_speakers=val_speakers,
        split_file=split_file,
        allow_speaker_overlap=allow_speaker_overlap,
        allow_single_label_speakers=allow_single_label_speakers,
        skip_bad=skip_bad,
        tracking_uri=resolve_uri(tracking_uri) if world.is_main else None,
    )
    if out.exists() and any(out.iterdir()) and not force:
        prepare_run_folder(out, force)  # raises, on every rank alike: none has written anything yet
    preloaded = None
    if config.finetune:  # refuse an encoder that cannot be fine-tuned before the run folder exists
        from speech_emotion.training.finetune import load_finetune_encoder

        preloaded = load_finetune_encoder(run_config.encoder, config.finetune, world, device=device)
    with process_group(world):
        barrier(world)  # every rank has checked --out before rank 0 writes into it
        if world.is_main:
            prepare_run_folder(out, force)
            write_json(out / CONFIG_FILE, run_config.to_dict())
        else:
            progress = no_progress  # one set of progress bars: rank 0's
        context = RunContext(
            out=out,
            config=run_config,
            status=RunStatus(out) if world.is_main else _SilentStatus(out),
            store=store if store is not None else FeatureStore(),
            progress=progress,
            on_epoch=on_epoch,
            on_step=on_step,
            world=world,
            device=device,
        )
        results = _execute(context, encoder=preloaded)
        barrier(world)  # every rank returns once rank 0 has written the run folder
        return results


def resume(
    run: str | Path,
    *,
    store: FeatureStore | None = None,
    progress: Progress = no_progress,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: StepHook | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
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
        device: where the encoder runs; any device may continue a run (the features in the
            store serve every device), the precision comes from ``config.json``.

    Returns:
        The contents of ``results.json``.

    Raises:
        FileNotFoundError: ``run`` has no ``config.json``.
        FileExistsError: the run finished already, or its process is still running.
        ValueError: the checkpoint does not match the corpus, labels, encoder or config any more.
    """
    from speech_emotion.tracking import tracking_uri as resolve_uri

    run = Path(run)
    config = RunConfig.read(run)
    if config.train.finetune:
        top = config.train.finetune
        raise ValueError(
            f"{run}: a fine-tune run (--finetune top-{top}) keeps no checkpoints and cannot be resumed; start it "
            f"again with the same `ser train ... --finetune top-{top}` and --force"
        )
    status = read_status(run) or {}
    if status.get("stage") == "finished":
        raise FileExistsError(
            f"{run} finished already ({run / 'results.json'}); nothing to resume. Train a new run with another --out"
        )
    if status.get("stage") in RUNNING_STAGES and process_state(status) == "alive":
        raise FileExistsError(
            f"{run} is still running (pid {status.get('pid')}, stage {status.get('stage')}); follow it with "
            f"`ser monitor {run}`, or stop it (kill {status.get('pid')}) before resuming"
        )
    uri = resolve_uri(tracking_uri) or config.tracking_uri
    if uri != config.tracking_uri:
        config = dataclasses.replace(config, tracking_uri=uri)
        write_json(run / CONFIG_FILE, config.to_dict())
    resumed = int(status.get("resumed", 0)) + 1
    log.info("resuming %s (resumed %d time(s) before)", run, resumed - 1)
    check_run_device(device)
    context = RunContext(
        out=run,
        config=config,
        status=RunStatus(run, resumed=resumed),
        store=store if store is not None else FeatureStore(),
        progress=progress,
        on_epoch=on_epoch,
        on_step=on_step,
        device=device,
    )
    return _execute(context)


def check_run_device(device: str, world=None) -> None:
    """Refuse, before anything is written, a device that is not here, or a fixed one under torchrun.

    Raises:
        ValueError: an unknown device, CUDA where there is none, or a device other than ``auto``
            in a job of several processes (each takes the GPU of its ``LOCAL_RANK``).
    """
    from speech_emotion.features.devices import check_device, resolve_device

    if world is not None and world.size > 1 and check_device(device) != "auto":
        raise ValueError(
            f"--device {device}: under torchrun (WORLD_SIZE={world.size}) each process runs on the GPU of its "
            "LOCAL_RANK (or the CPU without CUDA); drop --device"
        )
    resolve_device(device)


class _SilentStatus(RunStatus):
    """The status of a rank other than 0: kept in memory, never written (rank 0 alone writes)."""

    def write(self) -> None:
        pass


def _execute(ctx: RunContext, *, encoder=None) -> dict:
    """Run (or resume) the run of ``ctx``; keeps ``status.json`` current and mirrors the run to MLflow."""
    started = time.perf_counter()
    try:
        if ctx.config.tracking_uri and ctx.world.is_main:
            from speech_emotion.tracking import MlflowTracker

            ctx.tracker = MlflowTracker(ctx.config.tracking_uri, ctx.out)
            ctx.tracker.start(ctx.config.to_dict())
        dataset, split = prepare(ctx)
        fitted = fit_finetuned(ctx, dataset, split, encoder) if ctx.recipe.finetune else fit_frozen(ctx, dataset, split)
        results = score(fitted, dataset, split, ctx.recipe)
        if ctx.world.is_main:
            save(ctx, fitted, dataset, split, results, started)
        if ctx.tracker is not None:
            ctx.tracker.finish(results)
    except BaseException as error:
        ctx.status.fail("interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else error)
        if ctx.tracker is not None:
            ctx.tracker.fail()
        raise
    ctx.status.finish()
    return results


def make_split(
    dataset: Dataset,
    *,
    test_speakers=None,
    val_speakers=None,
    split_file: dict | None = None,
    seed: int = 0,
) -> Split:
    """The split a run uses: a saved one, or speaker-disjoint with a seeded validation sixth."""
    if split_file is not None:
        if "folds" in split_file:
            raise SplitError("--split got a file of folds; `ser train` takes a single split (use `ser cv` for folds)")
        split = Split.from_dict(split_file, dataset.speakers, dataset.paths)
    else:
        split = speaker_disjoint_split(
            dataset.speakers,
            test_speakers=list(test_speakers) if test_speakers else None,
            val_speakers=list(val_speakers) if val_speakers else None,
            val_fraction=None if val_speakers else VAL_FRACTION,
            seed=seed,
        )
    if "val" not in split.parts:
        raise SplitError("the split has no validation part; early stopping needs validation speakers (--val-speakers)")
    return split


def prepare(ctx: RunContext) -> tuple[Dataset, Split]:
    """Decode and label the corpus, split it, check for leakage; rank 0 writes labels/skipped/split reports."""
    config, write = ctx.config, ctx.world.is_main
    ctx.status.stage("decoding")
    with ctx.tracked("decoding audio", None) as advance:
        dataset = load_dataset(
            config.sources,
            labels=config.labels_source,
            skip_bad=config.skip_bad,
            allow_single_label_speakers=config.allow_single_label_speakers,
            progress=advance,
        )
    if write:
        write_json(ctx.out / "labels.json", dataset.label_report)
        if dataset.problems:
            write_json(ctx.out / "skipped.json", [p.to_dict() for p in dataset.problems])
    split = make_split(
        dataset,
        test_speakers=config.test_speakers,
        val_speakers=config.val_speakers,
        split_file=config.split_file,
        seed=config.train.seed,
    )
    leakage = check_leakage(
        split, dataset.speakers, dataset.hashes, dataset.paths, allow_speaker_overlap=config.allow_speaker_overlap
    )
    report = split.to_dict(dataset.paths) | {"leakage": leakage}
    for name, rows in split.parts.items():
        counts = np.bincount(dataset.y[rows], minlength=dataset.schema.n_classes).tolist()
        report["parts"][name]["counts"] = dict(zip(dataset.schema.classes, counts))
    if write:
        write_json(ctx.out / "split.json", report)
    return dataset, split


def score_parts(logits: dict[str, np.ndarray], y: dict[str, np.ndarray], classes: list[str]) -> dict:
    """Metrics of every scored part, and the calibration: a temperature fitted on ``val``, ECE before and after.

    Returns:
        ``{"calibration": {"temperature", "fitted_on", "ece_<part>_before", "ece_<part>_after"}, "<part>": metrics}``.
    """
    temperature = fit_temperature(logits["val"], y["val"])
    results: dict = {"calibration": {"temperature": temperature, "fitted_on": "val"}}
    for part in ("val", "test"):
        if part in logits:
            results[part] = classification_metrics(y[part], logits[part].argmax(axis=1), classes)
            before = expected_calibration_error(softmax(logits[part]), y[part])
            after = expected_calibration_error(softmax(logits[part] / temperature), y[part])
            results["calibration"] |= {f"ece_{part}_before": before, f"ece_{part}_after": after}
    return results


def score(fitted: Fitted, dataset: Dataset, split: Split, recipe: TrainConfig) -> dict:
    """The results of a run (``results.json`` but its timings), the same for both modes."""
    classes = list(dataset.schema.classes)
    parts = score_parts(fitted.logits, {part: dataset.y[split.parts[part]] for part in fitted.logits}, classes)
    return {
        "classes": classes,
        "protocol": split.protocol
        + (" + speaker-norm" if recipe.speaker_norm else "")
        + (" + corpus-norm" if recipe.domain_norm == "corpus" else ""),
        "n": {name: int(len(rows)) for name, rows in split.parts.items()},
        "speakers": split.speakers,
        "best_epoch": fitted.best_epoch,
        "epochs_run": len(fitted.history),
        "class_weights": dict(zip(classes, fitted.class_weights)),
        "layer_weights": fitted.head.layer_weights().detach().cpu().numpy().round(4).tolist(),
        "alarms": [a.to_dict() for a in fitted.alarms],
        **fitted.extra,
        **parts,
    }


def bundle_meta(fitted: Fitted, dataset: Dataset, split: Split, recipe: TrainConfig, results: dict) -> BundleMeta:
    """``model.json`` of a run's bundle (the head's config is added when it is saved)."""
    return BundleMeta(
        classes=tuple(results["classes"]),
        schema=dataset.schema.to_dict(),
        encoder=fitted.encoder,
        preprocessing=fitted.preprocessing,
        train=recipe.to_dict(),
        speaker_norm=recipe.speaker_norm,
        calibration=results["calibration"],
        metrics={part: {k: results[part][k] for k in METRIC_KEYS} for part in ("val", "test") if part in results},
        data={
            "fingerprint": data_fingerprint(dataset),
            "corpus": sorted({u.corpus for u in dataset.manifest}),
            "protocol": split.protocol,
            "speakers": {name: split.speakers[name] for name in ("train", "val")},
            "audio_hashes": {name: sorted({dataset.hashes[i] for i in split.parts[name]}) for name in ("train", "val")},
        },
    )


def save(ctx: RunContext, fitted: Fitted, dataset: Dataset, split: Split, results: dict, started: float) -> None:
    """Write the bundle, predictions.csv, results.json (with timings) and the report."""
    from speech_emotion.reports import build_report

    fitted.save(ctx.out / "model", bundle_meta(fitted, dataset, split, ctx.recipe, results))
    write_predictions(ctx.out / "predictions.csv", dataset, split, fitted.logits, results["classes"])
    results["timing"] = fitted.timing | {"total_s": round(time.perf_counter() - started, 2)}
    if ctx.status.data.get("resumed"):
        results["resumed"] = ctx.status.data["resumed"]
    write_json(ctx.out / "results.json", results)
    build_report(ctx.out)


def write_predictions(
    path: Path, dataset: Dataset, split: Split, logits: dict[str, np.ndarray], classes: list[str]
) -> None:
    """Per validation/test row: part, path, speaker, sex, true and predicted class, logits (for reports)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["part", "path", "speaker", "sex", "true", "predicted"] + [f"logit_{c}" for c in classes])
    for part in ("val", "test"):
        for row, values in zip(split.parts.get(part, []), logits.get(part, [])):
            utterance = dataset.manifest[row]
            writer.writerow(
                [
                    part,
                    utterance.path,
                    utterance.speaker,
                    utterance.fields.get("sex", ""),
                    classes[dataset.y[row]],
                    classes[int(values.argmax())],
                ]
                + [f"{v:.6g}" for v in values]
            )
    write_text(path, buffer.getvalue())
