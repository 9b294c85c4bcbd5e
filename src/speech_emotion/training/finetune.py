"""Fine-tune mode: the top N transformer layers of the encoder learn together with the head.

``ser train DATA --encoder ENC --finetune top-N`` trains the same :class:`EmotionHead` as the
frozen path (per-layer mean + std of every hidden state, standardised, mixed, classified) with
the same rules: class-weighted loss, early stopping on validation UAR, sanity alarms, fixed
seeds, a self-describing run folder. What changes:

- **Only the top layers run in a training step.** The frozen lower layers compute the same
  thing every epoch, so they run once: the frame-level hidden state that enters the first
  trained layer is kept, in float16, in the feature store (``<key>.frames.npy``, keyed like the
  pooled features plus the state index and dtype; :func:`frozen_states_for`), and each step runs
  the top layers on it (:meth:`~speech_emotion.features.encoders.FinetunableEncoder.top_pooled_features`:
  windows batched with padding and an attention mask, pooled as the inference path pools). The
  pooled statistics of the frozen layers are the pretrained encoder's features from the store,
  which also fix the head's standardisation once. Validation runs the same way each epoch; the
  kept weights are scored at the end through ``Encoder.features``, the path ``Predictor`` uses.
  Encoders that cannot run their top layers alone (WavLM) run the whole encoder each step
  (:meth:`~speech_emotion.features.encoders.FinetunableEncoder.pooled_features`), as does
  ``fit_finetune(..., cache_states=False)``.
- **Lower layers stay frozen** (``requires_grad`` False: they build no autograd graph). The
  unfrozen layers (and Whisper's final layer norm) get their own AdamW group: learning rate
  ``encoder_lr`` (default ``lr * 0.1``) and no weight decay, which would pull pretrained
  weights towards zero; the head keeps ``lr`` and ``weight_decay``.
- **The encoder runs in eval mode**: no dropout, LayerDrop or SpecAugment inside it, so a
  step is deterministic and every parameter is used in every step (as DDP requires); the head
  keeps its dropout. With ``mixing="concat"`` the unused layer weights are frozen.
- **The bundle carries the encoder**: ``RUN/model/encoder/`` (safetensors + config +
  feature-extractor config); ``model.json``'s encoder fingerprint is that of the folder, so
  ``Predictor``, ``ser evaluate``, ``ser predict`` and ``ser export`` use the fine-tuned weights.
- **No checkpoints**: a fine-tune run cannot be resumed (``ser train --resume`` refuses it).

Under ``torchrun --nproc-per-node K`` (``WORLD_SIZE`` > 1) every process decodes the corpus
and computes the same speaker-disjoint split; the encoder + head is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); a ``DistributedSampler`` (same seed
and epoch on every rank) deals each rank ``batch_size / K`` clips of every global batch; the
loss is the class-weighted sum divided by the *global* sum of weights (all-reduced), times K
to undo DDP's gradient averaging, so K processes take the same steps as one process with
``batch_size``. Validation and test clips are sharded and their logits all-reduced, so every
rank sees the same metrics and early-stopping decision (also broadcast from rank 0). Rank 0
alone writes the run folder.

"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from speech_emotion.features.encoders.finetunable import check_finetunable
from speech_emotion.model.bundle import save_bundle
from speech_emotion.model.head import EmotionHead, predict_logits
from speech_emotion.model.metadata import BundleMeta, EncoderRef
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.distributed import World, all_reduce_sum, barrier, broadcast
from speech_emotion.training.loop import class_weights, close_epoch
from speech_emotion.training.sanity import (
    Alarm,
    check_before_training,
    check_predictions,
)

if TYPE_CHECKING:
    from speech_emotion.features.encoders import Encoder, FinetunableEncoder

log = logging.getLogger(__name__)

ENCODER_FOLDER = "encoder"
"""Folder inside a bundle that holds a fine-tuned encoder (``model.json``: ``encoder.bundled``)."""


def unfreeze_top(encoder: "Encoder", n: int) -> list[str]:
    """Freeze the whole encoder, then let the top ``n`` transformer layers train.

    Args:
        encoder: a Whisper or wav2vec 2.0-family :class:`~speech_emotion.features.encoders.Encoder`.
        n: number of top layers, 1..``encoder.n_transformer_layers``.

    Returns:
        Names (in ``encoder.module``) of the parameters that now require gradients.

    Raises:
        ValueError: ``n`` out of range, or an encoder without layers (eGeMAPS).
    """
    finetunable = check_finetunable(encoder)  # eGeMAPS has no layers to train
    layers = finetunable.top_layers(n)  # checks n
    module = finetunable.module
    module.requires_grad_(False)
    for layer in layers:
        layer.requires_grad_(True)
    for name, parameter in module.named_parameters():
        if name.endswith(finetunable.no_gradient):
            parameter.requires_grad_(False)
    return [name for name, parameter in module.named_parameters() if parameter.requires_grad]


def load_finetune_encoder(
    encoder: EncoderRef, n: int, world: World | None = None, *, device: str = "auto"
) -> "FinetunableEncoder":
    """Load a run's encoder on this rank's device and check that top-``n`` fits it.

    Args:
        device: ``auto``: this rank's device (``cuda:LOCAL_RANK`` when CUDA is present, else the
            CPU); otherwise that device (one process only).

    Raises:
        ValueError: eGeMAPS (nothing to fine-tune), ``n`` larger than the encoder's layers, or a
            device that is not here.
    """
    from speech_emotion.features.encoders import load_encoder

    if encoder.reference.strip().lower() == "egemaps":
        raise ValueError(
            "--finetune: encoder 'egemaps' (openSMILE functionals) has no trainable layers, nothing to fine-tune; "
            "fine-tune a Whisper or wav2vec 2.0-family encoder, or drop --finetune to train the head alone"
        )
    where = str((world or World()).device) if device == "auto" else device
    loaded = check_finetunable(load_encoder(encoder.source, device=where))
    loaded.top_layers(n)  # checks n against the number of layers
    return loaded


@dataclass
class FrozenBatch:
    """A batch for the top layers alone: cached input states and the frozen layers' statistics.

    Attributes:
        states: per clip, the hidden state entering the first trained layer, ``(n_frames, hidden)``.
        windows: per clip, frames per window (``FinetunableEncoder.window_frames``).
        frozen: ``(n_clips, n_layers - top, dim)`` pooled statistics of the frozen states.
    """

    states: list[np.ndarray]
    windows: list[list[int]]
    frozen: np.ndarray


@dataclass
class FrozenStates:
    """What stays fixed while the top ``top`` layers train, for a list of clips (see :func:`frozen_states_for`).

    Attributes:
        top: number of trained top layers.
        states: per clip, the hidden state entering the first trained layer (float16 as cached).
        windows: per clip, frames per window.
        pooled: ``(n_clips, n_layers, dim)`` pooled features of the pretrained encoder.
    """

    top: int
    states: list[np.ndarray]
    windows: list[list[int]]
    pooled: np.ndarray

    def batch(self, rows: Sequence[int]) -> FrozenBatch:
        """The clips ``rows`` as a :class:`FrozenBatch` (frozen statistics: all but the top layers')."""
        n_frozen = self.pooled.shape[1] - self.top
        return FrozenBatch(
            [self.states[i] for i in rows], [self.windows[i] for i in rows], self.pooled[list(rows), :n_frozen]
        )


def frozen_states_for(
    encoder: "FinetunableEncoder",
    signals: Sequence[np.ndarray],
    world: World | None = None,
    *,
    top: int,
    hashes: Sequence[str] | None = None,
    store=None,
    progress: Callable[[int], None] | None = None,
) -> FrozenStates:
    """The cached inputs of the top ``top`` layers and the pooled features of ``signals``, the same on every rank.

    With ``store`` and ``hashes`` (an encoder whose fingerprint matches its weights): each rank
    encodes every K-th clip missing from the store and writes it (float16 states, pooled
    features), then, after a barrier, every rank reads all of them (a rank whose store lacks
    some, on another machine, encodes those itself). Without a store every rank encodes every
    clip in memory.
    """
    from speech_emotion.features.store import extract_frame_states

    world = world or World()
    windows = [encoder.window_frames(len(signal)) for signal in signals]
    if store is None or hashes is None:
        computed = encoder.frozen_states(signals, top=top, progress=progress)
        states = [np.ascontiguousarray(frames, dtype=np.float16) for frames, _ in computed]
        pooled = (
            np.stack([vector for _, vector in computed])
            if computed
            else np.zeros((0, encoder.n_layers, encoder.dim), np.float32)
        )
        return FrozenStates(top, states, windows, pooled)
    rows = list(range(world.rank, len(signals), world.size))
    mine = extract_frame_states(
        encoder, [signals[i] for i in rows], [hashes[i] for i in rows], store, top=top, progress=progress
    )
    if world.size == 1:
        return FrozenStates(top, mine[0], windows, mine[1])
    barrier(world)
    states, pooled = extract_frame_states(encoder, signals, hashes, store, top=top)
    return FrozenStates(top, states, windows, pooled)


class FinetuneModel(nn.Module):
    """Encoder + head as one module, clips in, logits out (what DistributedDataParallel wraps).

    Args:
        encoder: the :class:`~speech_emotion.features.encoders.Encoder`; its ``module`` is registered here.
        head: the :class:`EmotionHead`.
        top: number of trained top layers (needed for :class:`FrozenBatch` input).
        batch_seconds: padded audio seconds per encoder forward pass.
    """

    def __init__(
        self,
        encoder: "FinetunableEncoder",
        head: EmotionHead,
        *,
        top: int | None = None,
        batch_seconds: float | None = None,
    ):
        super().__init__()
        self.encoder_module = encoder.module
        self.head = head
        self._encoder = encoder  # not a Module: a plain attribute
        self._top = top
        self._batch_seconds = batch_seconds

    def forward(self, batch: "Sequence[np.ndarray] | FrozenBatch") -> torch.Tensor:
        """Logits of shape ``(n_clips, n_classes)``: signals through the whole encoder, or a
        :class:`FrozenBatch` through the top layers alone."""
        if isinstance(batch, FrozenBatch):
            if self._top is None:
                raise ValueError(
                    "FinetuneModel: a FrozenBatch needs top=N (the number of trained layers) at construction"
                )
            return self.head(
                self._encoder.top_pooled_features(
                    batch.states, batch.windows, batch.frozen, top=self._top, batch_seconds=self._batch_seconds
                )
            )
        return self.head(self._encoder.pooled_features(batch, batch_seconds=self._batch_seconds))


@dataclass
class FinetuneResult:
    """The head and encoder of the best validation epoch, with the history of the run.

    Attributes:
        head: the trained head (eval mode, on the encoder's device).
        encoder: the fine-tuned encoder (every parameter frozen again, eval mode). Its
            ``fingerprint`` is still the pretrained one's until the encoder is saved and
            loaded again: do not pass it to a feature store.
        history: one metrics dict per epoch.
        best_epoch: epoch whose weights were kept.
        class_weights: loss weight per class.
        alarms: sanity alarms raised on the way.
        trainable: names of the encoder parameters that were trained.
        val_logits: logits of the validation clips with the kept weights, shape (n_val, K).
    """

    head: EmotionHead
    encoder: "FinetunableEncoder"
    history: list[dict]
    best_epoch: int
    class_weights: list[float]
    alarms: list[Alarm] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    val_logits: np.ndarray | None = None


def sharded_features(
    encoder: "Encoder",
    signals: Sequence[np.ndarray],
    world: World,
    *,
    hashes: Sequence[str] | None = None,
    store=None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Pooled features ``(n, n_layers, dim)`` of ``signals``, each rank encoding every K-th clip.

    The ranks' rows are summed into one array (every other entry is 0, so the sum is exact):
    every rank gets the same result. With ``store`` and ``hashes`` the features go through
    the feature store (only for an encoder whose fingerprint matches its weights).
    """
    from speech_emotion.features.store import extract_features

    rows = list(range(world.rank, len(signals), world.size))
    features = torch.zeros((len(signals), encoder.n_layers, encoder.dim), dtype=torch.float32)
    if rows:
        mine = [signals[i] for i in rows]
        if store is not None and hashes is not None:
            computed = extract_features(encoder, mine, [hashes[i] for i in rows], store, progress=progress)
        else:
            computed = np.stack(encoder.features(mine, progress=progress))
        features[rows] = torch.from_numpy(np.ascontiguousarray(computed, dtype=np.float32))
    return all_reduce_sum(features, world).numpy()


def cached_logits(model: FinetuneModel, frozen: FrozenStates, world: World, *, chunk: int = 64) -> np.ndarray:
    """Logits ``(n, K)`` of the head (eval mode) on cached states through the top layers, clips sharded over ranks."""
    head = model.head
    logits = torch.zeros((len(frozen.states), head.n_outputs), dtype=torch.float32)
    rows = list(range(world.rank, len(frozen.states), world.size))
    training = head.training
    head.eval()
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            logits[part] = model(frozen.batch(part)).float().cpu()
    head.train(training)
    return all_reduce_sum(logits, world).numpy()


def sharded_logits(encoder: "Encoder", head: EmotionHead, signals: Sequence[np.ndarray], world: World) -> np.ndarray:
    """Logits ``(n, K)`` through the inference path (``Encoder.features``), clips sharded over ranks."""
    if not len(signals):
        return np.zeros((0, head.n_outputs), dtype=np.float32)
    return predict_logits(head, sharded_features(encoder, signals, world))


def fit_finetune(
    encoder: "FinetunableEncoder",
    train_signals: Sequence[np.ndarray],
    y_train: np.ndarray,
    val_signals: Sequence[np.ndarray],
    y_val: np.ndarray,
    *,
    n_classes: int,
    config: TrainConfig,
    classes: list[str] | None = None,
    scaler_features: np.ndarray | None = None,
    world: World | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    frozen: FrozenStates | None = None,
    val_frozen: FrozenStates | None = None,
    cache_states: bool = True,
) -> FinetuneResult:
    """Train a head and the top ``config.finetune`` layers of ``encoder``; keep the best validation UAR.

    Call it on every rank of a torchrun job with the same arguments (the same clips in the
    same order): each rank takes its share of every batch.

    Args:
        encoder: a Whisper or wav2vec 2.0-family encoder (loaded on ``world.device``); its
            weights are changed in place.
        train_signals, y_train: training clips (1-D float32 at 16 kHz) and class indices.
        val_signals, y_val: validation clips (speakers disjoint from training) and indices.
        n_classes: K, from the schema.
        config: hyper-parameters; ``finetune`` (N >= 1), ``encoder_lr``, ``batch_size`` (the
            global batch: each of K processes takes ``batch_size / K``).
        classes: class names for messages.
        scaler_features: the pretrained encoder's pooled features of the training clips, which
            set the head's standardisation (computed here when None).
        world: this process's place in the job (default: a single process).
        on_epoch: called with each epoch's metrics dict (the same on every rank).
        frozen, val_frozen: the training and validation clips' cached top-layer inputs
            (:func:`frozen_states_for`, through the feature store); computed here, in memory,
            when None.
        cache_states: run only the top layers in each step, on cached states (default, when
            the encoder can: ``encoder.can_run_top``); False runs the whole encoder every step.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: ``finetune`` out of range for the encoder, ``batch_size`` not a multiple
            of the number of processes, an empty training or validation part.
        SanityError: a check of severity ``error`` fired.
    """
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    world = world or World()
    classes = classes or [str(i) for i in range(n_classes)]
    config = config.resolved()
    if config.finetune < 1:
        raise ValueError(f"fit_finetune needs config.finetune >= 1 (top layers to train), got {config.finetune}")
    if config.batch_size < world.size or config.batch_size % world.size:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of the number of processes ({world.size}): each takes "
            f"batch_size / {world.size} clips of every batch; pass --batch-size "
            f"{max(1, config.batch_size // world.size) * world.size}"
        )
    if not len(train_signals) or not len(val_signals):
        raise ValueError(
            f"fine-tuning needs training and validation clips, got {len(train_signals)} and {len(val_signals)}"
        )
    y_train, y_val = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    device = encoder.device

    torch.manual_seed(config.seed)
    head = EmotionHead(config.head_config(n_layers=encoder.n_layers, dim=encoder.dim, n_classes=n_classes))
    alarms = check_before_training(head.n_outputs, {"train": y_train, "val": y_val}, classes)
    if world.size > 1:  # same initial head everywhere (above); from here on each rank draws its own dropout masks
        torch.manual_seed(config.seed + 7919 * (world.rank + 1))

    trainable = unfreeze_top(encoder, config.finetune)
    use_cache = cache_states and encoder.can_run_top
    if use_cache:
        if frozen is None:
            frozen = frozen_states_for(encoder, train_signals, world, top=config.finetune)
        if val_frozen is None:
            val_frozen = frozen_states_for(encoder, val_signals, world, top=config.finetune)
        if (
            len(frozen.states) != len(train_signals)
            or len(val_frozen.states) != len(val_signals)
            or config.finetune not in (frozen.top, val_frozen.top)
        ):
            raise ValueError(
                f"frozen states: expected {len(train_signals)} training and {len(val_signals)} validation clips for "
                f"top-{config.finetune}, "
                f"got {len(frozen.states)} and {len(val_frozen.states)} for top-{frozen.top}/top-{val_frozen.top}"
            )
        if scaler_features is None:
            scaler_features = frozen.pooled
        else:  # the frozen layers' statistics come from the pretrained features given (the feature store's)
            frozen = FrozenStates(
                frozen.top, frozen.states, frozen.windows, np.asarray(scaler_features, dtype=np.float32)
            )
    if scaler_features is None:
        scaler_features = sharded_features(encoder, train_signals, world)
    head.fit_scaler(torch.from_numpy(np.ascontiguousarray(scaler_features, dtype=np.float32)))
    if config.mixing == "concat":
        head.layer_logits.requires_grad_(False)  # unused: every layer goes to the classifier side by side
    head.to(device)
    model = FinetuneModel(encoder, head, top=config.finetune)
    network: nn.Module = model
    if world.size > 1:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    encoder_parameters = [p for p in encoder.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for p in head.parameters() if p.requires_grad],
                "lr": config.lr,
                "weight_decay": config.weight_decay,
            },
            {"params": encoder_parameters, "lr": config.encoder_lr, "weight_decay": 0.0},
        ]
    )
    weights = class_weights(y_train, n_classes)
    weight_of = torch.tensor(weights, dtype=torch.float32, device=device)
    targets = torch.from_numpy(y_train).to(device)
    sampler = DistributedSampler(
        range(len(train_signals)), num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed
    )
    local_batch = config.batch_size // world.size
    if world.is_main:
        log.info(
            "fine-tuning the top %d layer(s) of %s: %d encoder tensors (%d values) at lr %g, head at lr %g; %d "
            "process(es), %d clips each per step",
            config.finetune,
            encoder.reference,
            len(encoder_parameters),
            sum(p.numel() for p in encoder_parameters),
            config.encoder_lr,
            config.lr,
            world.size,
            local_batch,
        )

    history: list[dict] = []
    best_uar, best_epoch, stale = -1.0, 0, 0
    best_state: dict | None = None
    for epoch in range(1, config.max_epochs + 1):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        order = list(sampler)
        head.train()
        total, seen = 0.0, 0.0
        for start in range(0, len(order), local_batch):
            rows = order[start : start + local_batch]
            logits = network(frozen.batch(rows) if use_cache else [train_signals[i] for i in rows])
            target = targets[rows]
            weight = weight_of[target]
            weighted = (weight * nn.functional.cross_entropy(logits, target, reduction="none")).sum()
            # Global normalisation: this batch's weight sum over all ranks; DDP then averages gradients over K.
            sums = all_reduce_sum(
                torch.tensor([float(weight.sum()), float(weighted.detach()), float(len(rows))], dtype=torch.float64),
                world,
            )
            loss = weighted * (world.size / float(sums[0]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(sums[1] / sums[0]) * float(sums[2])
            seen += float(sums[2])
        record = {"epoch": epoch, "train_loss": total / seen}
        val_logits = (
            cached_logits(model, val_frozen, world) if use_cache else sharded_logits(encoder, head, val_signals, world)
        )
        metrics = classification_metrics(y_val, val_logits.argmax(axis=1), classes)
        val_loss = nn.functional.cross_entropy(
            torch.from_numpy(val_logits), torch.from_numpy(y_val), weight=torch.tensor(weights, dtype=torch.float32)
        )
        record |= {"val_loss": float(val_loss), "val_accuracy": metrics["accuracy"], "val_uar": metrics["uar"]}
        record["seconds"] = round(time.perf_counter() - started, 2)
        close_epoch(record, history, alarms, on_epoch=on_epoch, stop_on_alarm=config.stop_on_alarm)
        improved = record["val_uar"] > best_uar
        stop = not improved and stale + 1 >= config.patience
        improved, stop = (
            bool(v) for v in broadcast(torch.tensor([improved, stop], dtype=torch.int64), world).tolist()
        )  # rank 0 decides
        if improved:
            best_uar, best_epoch, stale = record["val_uar"], epoch, 0
            best_state = {
                "head": copy.deepcopy(head.state_dict()),
                "encoder": {
                    name: p.detach().clone() for name, p in encoder.module.named_parameters() if p.requires_grad
                },
            }
        else:
            stale += 1
        if stop:
            break

    head.load_state_dict(best_state["head"])
    parameters = dict(encoder.module.named_parameters())
    with torch.no_grad():
        for name, value in best_state["encoder"].items():
            parameters[name].copy_(value)
    encoder.module.requires_grad_(False)
    encoder.module.eval()
    head.requires_grad_(False)
    head.eval()
    val_logits = sharded_logits(encoder, head, val_signals, world)
    final = check_predictions(val_logits.argmax(axis=1), classes, "validation", best_epoch)
    for alarm in final:
        log.warning(alarm.message)
    alarms += final
    return FinetuneResult(head, encoder, history, best_epoch, weights.tolist(), alarms, trainable, val_logits)


def save_finetuned_bundle(
    folder: str | Path, head: EmotionHead, encoder: "FinetunableEncoder", meta: BundleMeta
) -> BundleMeta:
    """Write a bundle whose encoder lives inside it: ``folder/encoder/`` plus head and ``model.json``.

    The encoder is written first (into a temporary folder, then renamed), loaded back, and
    its fingerprint recorded, so the fingerprint that ``Predictor`` checks is that of the
    fine-tuned weights as saved. ``meta.encoder`` gets ``bundled``, ``path`` (None),
    ``fingerprint`` and the pretrained ``base_fingerprint``.

    Returns:
        The ``model.json`` written.
    """
    from speech_emotion.features.encoders import load_encoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ENCODER_FOLDER
    staging = Path(tempfile.mkdtemp(prefix=f".{ENCODER_FOLDER}.", dir=folder))
    try:
        encoder.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    saved = load_encoder(str(target))
    bundled = dataclasses.replace(
        meta.encoder,
        bundled=ENCODER_FOLDER,
        path=None,
        base_fingerprint=meta.encoder.fingerprint,
        fingerprint=saved.fingerprint,
    )
    return save_bundle(folder, head.to("cpu"), meta.replace(encoder=bundled, preprocessing=saved.preprocessing))
