"""The two ways a run fits its model, behind one interface: frozen encoder, or fine-tuned top layers.

:func:`fit_frozen` encodes the corpus once (through the feature store) and fits the head on the
pooled features, with a checkpoint after every epoch; :func:`fit_finetuned` trains the top N
transformer layers with the head (under ``torchrun`` too). Both take a :class:`RunContext` (where
the run writes and reports) and return a :class:`Fitted` — what
:mod:`~speech_emotion.training.pipeline` scores and saves the same way for both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.data.audio import load_audio
from speech_emotion.data.dataset import Dataset
from speech_emotion.data.splits import Split
from speech_emotion.features.augment import Augmentation
from speech_emotion.features.normalise import DomainStatistics, apply_by_group, speaker_normalise, standardise_groups
from speech_emotion.features.store import FeatureStore, encode_dataset
from speech_emotion.model.head import EmotionHead, predict_logits
from speech_emotion.model.metadata import BundleMeta, EncoderRef
from speech_emotion.progress import Progress
from speech_emotion.training.config import RunConfig, TrainConfig
from speech_emotion.training.distributed import World
from speech_emotion.training.run_folder import METRICS_FILE, RunStatus, read_metrics, truncate_metrics

log = logging.getLogger(__name__)

StepHook = Callable[[str, int], None]
"""``on_step(stage, n)``, called as a run advances: after each decoded or encoded file with the count
so far (stage ``"decoding"`` or ``"encoding"``; during encoding, before that file's chunk is written
to the feature store), and after each epoch's line in ``metrics.jsonl`` with the epoch (stage
``"training"``; before that epoch's checkpoint). Tests use it to stop a run at a known point."""


def data_fingerprint(dataset: Dataset) -> str:
    """Hash of (audio content, class index) pairs and the schema: same data and labels, same fingerprint."""
    import hashlib

    digest = hashlib.sha256(repr(dataset.schema.to_dict()).encode())
    for h, y in sorted(zip(dataset.hashes, dataset.y.tolist())):
        digest.update(f"{h}:{y};".encode())
    return digest.hexdigest()


@dataclass
class RunContext:
    """Where a run writes and whom it tells: shared by every step of :mod:`~speech_emotion.training.pipeline`.

    Attributes:
        out: the run folder.
        config: what the run was asked to do.
        status: the writer of ``status.json`` (a silent one on ranks other than 0).
        store: the feature store.
        progress: progress bars (the CLI's, or none).
        tracker: the MLflow tracker, or None.
        on_epoch: called with each epoch's metrics.
        on_step: see :data:`StepHook`.
        world: this process's place in a torchrun job.
        device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); the precision
            is the run's (``config.precision``).
    """

    out: Path
    config: RunConfig
    status: RunStatus
    store: FeatureStore
    progress: Progress
    tracker: Any = None
    on_epoch: Callable[[dict], None] | None = None
    on_step: StepHook | None = None
    world: World = field(default_factory=World)
    device: str = "auto"

    @property
    def recipe(self) -> TrainConfig:
        """The training recipe with its automatic choices made (for as many corpora as the run has)."""
        return self.config.train.resolved(n_corpora=len(self.config.sources))

    @contextlib.contextmanager
    def tracked(self, description: str, total: int | None):
        """A progress bar that also counts into ``status.json`` and calls ``on_step``."""
        with self.progress(description, total) as step:

            def advance(n: int = 1) -> None:
                step(n)
                self.status.advance(n)
                if self.on_step is not None:
                    self.on_step(self.status.data["stage"], self.status.data["progress"]["n"])

            yield advance

    def recorder(self, advance: Callable[[int], None]) -> Callable[[dict], None]:
        """What happens to each epoch's metrics: metrics.jsonl, status, MLflow, ``on_epoch``, progress, ``on_step``."""
        metrics_file = self.out / METRICS_FILE
        max_epochs = self.config.train.max_epochs

        def record(metrics: dict) -> None:
            if self.world.is_main:
                from speech_emotion.atomic import append_line

                append_line(metrics_file, metrics)
                self.status.update(epoch=metrics["epoch"], progress={"n": metrics["epoch"], "total": max_epochs})
                if self.tracker is not None:
                    self.tracker.log_epoch(metrics)
                if self.on_epoch is not None:
                    self.on_epoch(metrics)
            advance(1)
            if self.on_step is not None:
                self.on_step("training", metrics["epoch"])

        return record


@dataclass
class Fitted:
    """What a mode hands to scoring and saving.

    Attributes:
        head: the trained head (best validation epoch).
        encoder: the encoder it runs on, as ``model.json`` records it.
        preprocessing: the encoder's preprocessing.
        history: one metrics dict per epoch.
        best_epoch: the epoch whose weights were kept.
        class_weights: loss weight per class.
        alarms: sanity alarms raised on the way.
        logits: per scored part (``val``, and ``test`` when there is one), ``(n_part, K)``.
        timing: seconds per phase.
        extra: results only this mode has (e.g. ``finetune``).
        save: writes the bundle into a folder from its metadata; returns the metadata written.
    """

    head: EmotionHead
    encoder: EncoderRef
    preprocessing: dict
    history: list[dict]
    best_epoch: int
    class_weights: list[float]
    alarms: list
    logits: dict[str, np.ndarray]
    timing: dict
    save: Callable[[Path, BundleMeta], BundleMeta]
    extra: dict = field(default_factory=dict)


def fit_frozen(ctx: RunContext, dataset: Dataset, split: Split) -> Fitted:
    """Frozen encoder: pooled features of every clip (feature store), then the head, a checkpoint per epoch."""
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.model.bundle import save_bundle
    from speech_emotion.training.checkpoint import load_checkpoint, save_checkpoint
    from speech_emotion.training.loop import fit_head

    started = time.perf_counter()
    recipe = ctx.recipe
    ctx.status.stage("encoding", total=len(dataset))
    encoder = load_encoder(ctx.config.encoder.source, device=ctx.device, precision=ctx.config.precision)
    log.info("encoding on %s in %s", encoder.device, encoder.precision)
    X = encode_dataset(dataset, encoder, store=ctx.store, progress=ctx.tracked)
    encoded = time.perf_counter()
    corpora = np.asarray([u.corpus for u in dataset.manifest])
    train_rows, val_rows = split.parts["train"], split.parts["val"]
    domain, adaptation = None, {}
    augmented = [
        encode_dataset(
            dataset,
            encoder,
            store=ctx.store,
            progress=ctx.progress,
            augmentation=Augmentation.parse(a),
            rows=train_rows,
        )
        for a in recipe.augment
    ]
    by_corpus = {}
    if recipe.speaker_norm:
        X = speaker_normalise(X, dataset.speakers)
    elif recipe.domain_norm == "corpus":
        # The head learns on each corpus standardised by its own statistics; a clip of an unknown domain is
        # standardised by those of all training clips together until `ser adapt` sets its domain's.
        default = DomainStatistics.estimate(X[train_rows], name="the training clips")
        X, by_corpus = standardise_groups(X, corpora, kind="corpus")
        domain = (default.mean, default.scale)
        adaptation = {
            "domain_norm": "corpus",
            "adapted": False,
            "domain": "the training corpora, pooled",
            "n_clips": default.n_clips,
            "corpora": {name: stats.n_clips for name, stats in by_corpus.items()},
        }

    checkpoints = ctx.out / "checkpoints"
    meta = _checkpoint_meta(recipe, dataset, encoder.fingerprint, split)
    state = _resumable_state(load_checkpoint(checkpoints), meta, checkpoints)
    dropped = truncate_metrics(ctx.out / METRICS_FILE, state.epoch if state else 0)
    if dropped:
        log.info("%s: dropped %d line(s) after the checkpoint's epoch", ctx.out / METRICS_FILE, dropped)
    if ctx.tracker is not None:
        for metrics in read_metrics(ctx.out / METRICS_FILE):
            ctx.tracker.log_epoch(metrics)
    ctx.status.stage(
        "training",
        total=recipe.max_epochs,
        epoch=state.epoch if state else 0,
        max_epochs=recipe.max_epochs,
        best_epoch=state.best_epoch if state else None,
    )

    def checkpoint(saved) -> None:
        save_checkpoint(checkpoints, saved, meta=meta)
        ctx.status.update(best_epoch=saved.best_epoch)

    if by_corpus:  # altered clips are standardised by their corpus's statistics, as the clips themselves
        augmented = [apply_by_group(A, corpora[train_rows], by_corpus) for A in augmented]
    X_train, y_train, groups = training_set(X[train_rows], dataset.y[train_rows], corpora[train_rows], augmented)
    with ctx.progress("training head", recipe.max_epochs) as advance:
        if state is not None:
            advance(state.epoch)
        fit = fit_head(
            X_train,
            y_train,
            X[val_rows],
            dataset.y[val_rows],
            n_classes=dataset.schema.n_classes,
            config=recipe,
            classes=list(dataset.schema.classes),
            on_epoch=ctx.recorder(advance),
            resume=state,
            on_checkpoint=checkpoint,
            groups=groups,
        )
    logits = predict_logits(fit.head, X)  # each corpus by its own statistics, as trained
    if domain is not None:
        fit.head.fold_domain(*domain, current=(np.zeros_like(domain[0]), np.ones_like(domain[1])))
    return Fitted(
        head=fit.head,
        encoder=EncoderRef.of(encoder, reference=ctx.config.encoder.reference, path=ctx.config.encoder.path),
        preprocessing=encoder.preprocessing,
        history=fit.history,
        best_epoch=fit.best_epoch,
        class_weights=fit.class_weights,
        alarms=fit.alarms,
        logits={part: logits[rows] for part, rows in split.parts.items() if part != "train"},
        timing={"encode_s": round(encoded - started, 2)},
        save=lambda folder, meta: save_bundle(folder, fit.head, meta.replace(adaptation=adaptation), domain=domain),
    )


def training_set(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, augmented: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training features plus their altered copies (one array per augmentation, row for row), labels and corpora."""
    copies = 1 + len(augmented)
    return np.concatenate([X, *augmented]), np.tile(y, copies), np.tile(groups, copies)


def _checkpoint_meta(recipe: TrainConfig, dataset: Dataset, encoder_fingerprint: str, split: Split) -> dict:
    """What a checkpoint must still match to be resumed from (as JSON would give it back)."""
    meta = {
        "train": recipe.to_dict(),
        "data_fingerprint": data_fingerprint(dataset),
        "encoder_fingerprint": encoder_fingerprint,
        "split": {name: len(rows) for name, rows in split.parts.items()},
    }
    return json.loads(json.dumps(meta))


def _resumable_state(found, meta: dict, checkpoints: Path):
    """The checkpoint's training state, after checking it was made with the same data, encoder and recipe."""
    if found is None:
        return None
    state, saved = found
    # Settings added since the checkpoint was written had their default then: compare as such.
    defaults = json.loads(json.dumps(TrainConfig().resolved().to_dict()))
    saved = saved | {"train": defaults | saved.get("train", {})}
    changed = sorted(k for k in set(meta) | set(saved) if meta.get(k) != saved.get(k))
    if changed:
        raise ValueError(
            f"{checkpoints}: the checkpoint of epoch {state.epoch} was made with another {', '.join(changed)} "
            f"(the corpus, labels, encoder or settings changed since the run began); restore them, or delete "
            f"{checkpoints} to train again from epoch 1"
        )
    log.info("resuming training after epoch %d (%s)", state.epoch, checkpoints)
    return state


def fit_finetuned(ctx: RunContext, dataset: Dataset, split: Split, encoder=None) -> Fitted:
    """Fine-tune mode: decode the clips, cache the top layers' inputs, train top layers and head (every rank)."""
    from speech_emotion.training.finetune import (
        FrozenStates,
        fit_finetune,
        frozen_states_for,
        load_finetune_encoder,
        save_finetuned_bundle,
        sharded_features,
        sharded_logits,
    )

    started = time.perf_counter()
    recipe, world = ctx.recipe, ctx.world
    if encoder is None:
        encoder = load_finetune_encoder(ctx.config.encoder, recipe.finetune, world, device=ctx.device)
    base = EncoderRef.of(encoder, reference=ctx.config.encoder.reference, path=ctx.config.encoder.path)
    ctx.status.stage("decoding", total=len(dataset))  # again: fine-tuning needs the clips themselves
    with ctx.tracked("loading audio", len(dataset)) as advance:
        signals = []
        for path in dataset.paths:
            signals.append(load_audio(path)[0])
            advance(1)

    train_rows, val_rows = list(split.parts["train"]), list(split.parts["val"])
    frozen = val_frozen = None
    if encoder.can_run_top:  # one pass over training and validation clips: pooled features and top-layer inputs
        rows = train_rows + val_rows
        share = len(range(world.rank, len(rows), world.size))
        ctx.status.stage("encoding", total=share)
        description = f"encoding ({encoder.family}, pretrained; top-{recipe.finetune} inputs cached)"
        with ctx.tracked(description, share) as advance:
            cached = frozen_states_for(
                encoder,
                [signals[i] for i in rows],
                world,
                top=recipe.finetune,
                hashes=[dataset.hashes[i] for i in rows],
                store=ctx.store,
                progress=advance,
            )
        n_train = len(train_rows)
        frozen = FrozenStates(cached.top, cached.states[:n_train], cached.windows[:n_train], cached.pooled[:n_train])
        val_frozen = FrozenStates(
            cached.top, cached.states[n_train:], cached.windows[n_train:], cached.pooled[n_train:]
        )
        scaler_features = frozen.pooled
    else:
        share = len(range(world.rank, len(train_rows), world.size))
        ctx.status.stage("encoding", total=share)
        with ctx.tracked(f"encoding ({encoder.family}, pretrained)", share) as advance:
            scaler_features = sharded_features(
                encoder,
                [signals[i] for i in train_rows],
                world,
                hashes=[dataset.hashes[i] for i in train_rows],
                store=ctx.store,
                progress=advance,
            )
    encoded = time.perf_counter()

    ctx.status.stage("training", total=recipe.max_epochs, epoch=0, max_epochs=recipe.max_epochs, best_epoch=None)
    with ctx.progress(f"fine-tuning (top-{recipe.finetune})", recipe.max_epochs) as advance:
        fit = fit_finetune(
            encoder,
            [signals[i] for i in train_rows],
            dataset.y[train_rows],
            [signals[i] for i in val_rows],
            dataset.y[val_rows],
            n_classes=dataset.schema.n_classes,
            config=recipe,
            classes=list(dataset.schema.classes),
            scaler_features=scaler_features,
            world=world,
            on_epoch=ctx.recorder(advance),
            frozen=frozen,
            val_frozen=val_frozen,
        )
    trained = time.perf_counter()
    ctx.status.update(best_epoch=fit.best_epoch)

    logits = {"val": fit.val_logits}
    if len(split.parts.get("test", [])):
        logits["test"] = sharded_logits(encoder, fit.head, [signals[i] for i in split.parts["test"]], world)
    trainable = set(fit.trainable)
    extra = {
        "finetune": {
            "top": recipe.finetune,
            "encoder_lr": recipe.encoder_lr,
            "trainable_tensors": len(fit.trainable),
            "trainable_values": int(sum(p.numel() for n, p in encoder.module.named_parameters() if n in trainable)),
            "processes": world.size,
            "device": str(encoder.device),
            "cached_states": frozen is not None,  # each step ran the top layers alone, on fp16 states from the store
        }
    }

    def save(folder: Path, meta: BundleMeta) -> BundleMeta:
        written = save_finetuned_bundle(folder, fit.head, encoder, meta)
        encoder.fingerprint = written.encoder.fingerprint  # the weights it now holds, as saved
        return written

    return Fitted(
        head=fit.head,
        encoder=base,
        preprocessing=encoder.preprocessing,
        history=fit.history,
        best_epoch=fit.best_epoch,
        class_weights=list(fit.class_weights),
        alarms=fit.alarms,
        logits=logits,
        timing={
            "encode_s": round(encoded - started, 2),
            "train_s": round(trained - encoded, 2),
            "epoch_s": round(float(np.mean([r["seconds"] for r in fit.history])), 2),
        },
        save=save,
        extra=extra,
    )
