"""Frozen speech encoders: a 16 kHz waveform in, pooled statistics of every layer out.

One interface covers three families:

- ``"whisper"``: the encoder of an OpenAI Whisper checkpoint, run on variable-length input
  (no padding to 30 s; the learned position table is cut to the frames used).
- ``"ssl"``: a Hugging Face self-supervised speech model (wav2vec 2.0, HuBERT, WavLM,
  data2vec-audio).
- ``"egemaps"``: the openSMILE eGeMAPSv02 functionals (88 values per clip).

:func:`load_encoder` picks the family from the model's config. Every encoder has the same
attributes (``reference``, ``family``, ``fingerprint``, ``n_layers``, ``dim``,
``sampling_rate``, ``preprocessing``) and methods (``features``, and ``frames`` for the
neural families).

Pooled features of one clip never depend on the other clips of a batch: padded positions are
masked out of attention and pooling (Whisper, layer-norm SSL models), and models whose first
layers normalise over time (SSL models with ``feat_extract_norm == "group"``) are only ever
batched with clips of exactly the same length.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speech_emotion.data.audio import split_windows

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
"""Sampling rate in Hz that every encoder expects."""

SSL_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
"""Hugging Face ``model_type`` values loaded as self-supervised (``"ssl"``) encoders."""

EXAMPLE_FOLDER = "../shared/models/whisper-base-encoder"

# Keys of config.json / preprocessor_config.json that describe how or where a file was saved,
# not what the model computes. They are left out of the fingerprint.
_VOLATILE_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype", "processor_class"}
)

# SSL model types whose outputs change when a clip is padded, even with an attention mask.
_NO_PADDING_MODEL_TYPES = frozenset({"data2vec-audio"})

# Parameters that a checkpoint may lack without changing what a frozen model computes.
_IGNORABLE_MISSING = ("masked_spec_embed",)


# ---------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------


class Encoder:
    """Base class: a frozen encoder that turns 16 kHz waveforms into per-layer statistics.

    Subclasses set the attributes below and implement :meth:`_forward_segments`;
    segmentation of long inputs, sorting, batching and pooling live here.

    Attributes:
        reference: The reference the encoder was loaded from, as given.
        family: ``"whisper"``, ``"ssl"`` or ``"egemaps"``.
        fingerprint: sha256 hex digest of the model: family, ``model_type``, config and
            feature-extractor config (less volatile keys such as ``transformers_version``) and
            the weights; never the folder's path, so a copied folder keeps its fingerprint.
            ``preprocessing`` is separate; the feature store keys on both.
        n_layers: Number of layers in the output (hidden states including the embedding
            output for transformer models; 1 for eGeMAPS).
        dim: Feature width per layer (``2 * hidden_size`` for mean and std; 88 for eGeMAPS).
        hidden_size: Width of one frame's hidden state (0 for eGeMAPS).
        sampling_rate: Sampling rate in Hz of the input signals (16000).
        preprocessing: JSON-able description of what is done to the input (computed from
            the current settings, e.g. ``max_window_s``); part of the feature-store key.
        min_samples: Shortest signal, in samples, that gives at least one frame.
        default_batch_seconds: Padded audio seconds per forward pass when ``features`` is
            called without ``batch_seconds``.
    """

    family: str = ""
    sampling_rate: int = SAMPLING_RATE
    max_window_s: float = 30.0
    default_batch_seconds: float = 30.0
    min_samples: int = 1

    reference: str
    n_layers: int
    dim: int
    hidden_size: int = 0
    device: torch.device
    fingerprint: str

    @property
    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reference={self.reference!r}, n_layers={self.n_layers}, "
            f"dim={self.dim}, fingerprint={self.fingerprint[:12]}…)"
        )

    # -- public API ----------------------------------------------------------------------------

    def features(
        self,
        signals: Sequence[np.ndarray],
        *,
        batch_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[np.ndarray]:
        """Pooled statistics of every layer, one array per signal.

        Signals are sorted by length and batched internally; results come back in input
        order and do not depend on which signals share a batch.

        Args:
            signals: 1-D float arrays at 16 kHz (converted to float32).
            batch_seconds: Padded audio seconds per forward pass (default
                ``default_batch_seconds``). Larger uses more memory.
            progress: Called with the number of signals finished after each batch.

        Returns:
            For each signal a float32 array of shape ``(n_layers, dim)``: per layer, the mean
            over frames followed by the standard deviation over frames (ddof 0).

        Raises:
            ValueError: A signal is not 1-D, is empty, too short or not finite.
        """
        checked = [
            _check_signal(signal, name=f"signals[{i}]", min_samples=self.min_samples)
            for i, signal in enumerate(signals)
        ]
        pooled: list[np.ndarray | None] = [None] * len(checked)
        for index, frames in self._iter_frames(checked, batch_seconds=batch_seconds, progress=progress):
            pooled[index] = _pool(frames)
        return pooled  # type: ignore[return-value]

    def frames(self, signal: np.ndarray) -> np.ndarray:
        """Hidden states of every layer for one clip.

        Args:
            signal: 1-D float array at 16 kHz.

        Returns:
            float32 array of shape ``(n_layers, n_frames, hidden_size)``. Inputs longer than
            30 s are encoded in windows whose frames are concatenated in time.

        Raises:
            ValueError: The signal is not 1-D, is empty, too short or not finite.
        """
        checked = _check_signal(signal, name="signal", min_samples=self.min_samples)
        ((_, frames),) = list(self._iter_frames([checked], batch_seconds=None, progress=None))
        return frames

    # -- machinery -----------------------------------------------------------------------------

    def _can_pad(self) -> bool:
        """Whether segments of different lengths may share a batch."""
        return True

    def _forward_segments(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        """Encode segments of one batch; return ``(n_layers, n_frames_i, hidden)`` arrays."""
        raise NotImplementedError

    def _iter_frames(
        self,
        signals: list[np.ndarray],
        *,
        batch_seconds: float | None,
        progress: Callable[[int], None] | None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(signal index, frames of every layer)`` as each signal is finished."""
        max_window = int(self.max_window_s * self.sampling_rate)
        segments: list[tuple[int, int, np.ndarray]] = []  # (signal index, window index, samples)
        n_windows = []
        for i, signal in enumerate(signals):
            windows = split_windows(signal, max_window)
            n_windows.append(len(windows))
            segments.extend((i, w, window) for w, window in enumerate(windows))

        pending: dict[int, dict[int, np.ndarray]] = {}
        for batch in self._plan_batches([len(segment) for _, _, segment in segments], batch_seconds):
            outputs = self._forward_segments([segments[b][2] for b in batch])
            n_done = 0
            for b, out in zip(batch, outputs):
                index, window, _ = segments[b]
                pending.setdefault(index, {})[window] = out
                if len(pending[index]) == n_windows[index]:
                    parts = pending.pop(index)
                    frames = np.concatenate([parts[w] for w in sorted(parts)], axis=1)
                    n_done += 1
                    yield index, frames
            if progress is not None and n_done:
                progress(n_done)

    def _plan_batches(
        self, lengths: Sequence[int], batch_seconds: float | None, *, can_pad: bool | None = None
    ) -> list[list[int]]:
        """Group segments (given by their lengths in samples) into forward passes.

        Segments are sorted by length; a batch grows while its padded size stays within
        ``batch_seconds`` of audio (and, for models that cannot pad, while lengths are equal).
        ``can_pad`` overrides :meth:`_can_pad` (the top layers alone always take masked padding).
        """
        can_pad = self._can_pad() if can_pad is None else can_pad
        budget = (self.default_batch_seconds if batch_seconds is None else batch_seconds) * self.sampling_rate
        if budget <= 0:
            raise ValueError(f"batch_seconds: expected a positive number of seconds, got {batch_seconds}")
        order = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
        batches: list[list[int]] = []
        batch: list[int] = []
        for position, s in enumerate(order):
            batch.append(s)
            if position < len(order) - 1:
                next_len = lengths[order[position + 1]]
                fits = next_len * (len(batch) + 1) <= budget
                if not can_pad:
                    fits = fits and next_len == lengths[s]
                if fits:
                    continue
            batches.append(batch)
            batch = []
        return batches

    # -- fine-tuning -----------------------------------------------------------------------------

    @property
    def n_transformer_layers(self) -> int:
        """Transformer layers that :meth:`top_layers` can hand out (0: nothing to fine-tune)."""
        return 0

    def top_layers(self, n: int) -> list[torch.nn.Module]:
        """The modules of the top ``n`` transformer layers (with the final layer norm that follows them).

        Raises:
            ValueError: ``n`` is not in ``1..n_transformer_layers``, or the encoder has no
                transformer layers (eGeMAPS).
        """
        if self.n_transformer_layers == 0:
            raise ValueError(
                f"encoder {self.reference!r} ({self.family}) has no trainable layers: nothing to fine-tune; "
                "fine-tune a Whisper or wav2vec 2.0-family encoder, or train the head alone (no --finetune)"
            )
        if not 1 <= n <= self.n_transformer_layers:
            raise ValueError(
                f"top-{n}: encoder {self.reference!r} has {self.n_transformer_layers} transformer layers; "
                f"expected top-N with N from 1 to {self.n_transformer_layers}"
            )
        return self._top_layers(n)

    def _top_layers(self, n: int) -> list[torch.nn.Module]:
        raise NotImplementedError

    no_gradient: tuple[str, ...] = ()
    """Name endings of parameters inside the top layers whose gradient is zero by construction
    (they stay frozen: Adam would turn their rounding-noise gradients into steps of size ``lr``)."""

    @property
    def module(self) -> torch.nn.Module:
        """The transformers module holding every weight of the encoder (what fine-tuning trains)."""
        raise NotImplementedError(f"encoder {self.reference!r} ({self.family}) is not a neural network")

    def pooled_features(self, signals: Sequence[np.ndarray], *, batch_seconds: float | None = None) -> torch.Tensor:
        """Pooled statistics of every layer as one differentiable tensor (fine-tuning).

        The same numbers as :meth:`features` (to float32 rounding): the same windows, masked
        batches and mean + std over each clip's own frames, but computed in torch without
        ``inference_mode``, so gradients reach every parameter with ``requires_grad``.
        Parameters without it build no graph, so frozen lower layers cost no memory for
        backward.

        Args:
            signals: 1-D float arrays at 16 kHz.
            batch_seconds: Padded audio seconds per forward pass (default
                ``default_batch_seconds``).

        Returns:
            float32 tensor of shape ``(len(signals), n_layers, dim)`` on the encoder's device.

        Raises:
            ValueError: A signal is not 1-D, is empty, too short or not finite.
        """
        checked = [
            _check_signal(signal, name=f"signals[{i}]", min_samples=self.min_samples)
            for i, signal in enumerate(signals)
        ]
        max_window = int(self.max_window_s * self.sampling_rate)
        segments: list[tuple[int, int, np.ndarray]] = []
        n_windows = []
        for i, signal in enumerate(checked):
            windows = split_windows(signal, max_window)
            n_windows.append(len(windows))
            segments.extend((i, w, window) for w, window in enumerate(windows))
        frames: dict[tuple[int, int], torch.Tensor] = {}
        for batch in self._plan_batches([len(segment) for _, _, segment in segments], batch_seconds):
            for b, states in zip(batch, self._segment_states([segments[b][2] for b in batch])):
                frames[segments[b][:2]] = states
        pooled = [
            pool_frames(torch.cat([frames[(i, w)] for w in range(n_windows[i])], dim=1)) for i in range(len(checked))
        ]
        return torch.stack(pooled)

    def _segment_states(self, segments: list[np.ndarray]) -> list[torch.Tensor]:
        """Differentiable hidden states of one batch: ``(n_layers, n_frames_i, hidden)`` tensors."""
        raise NotImplementedError

    # -- fine-tuning from cached frozen states -----------------------------------------------------

    can_run_top: bool = False
    """Whether :meth:`top_pooled_features` can run the top layers alone from cached hidden states
    (Whisper, wav2vec 2.0, HuBERT, data2vec-audio; not WavLM, whose first layer computes a
    position bias the others reuse, nor eGeMAPS)."""

    samples_per_frame: int = 320
    """Input samples per hidden-state frame (20 ms at 16 kHz for Whisper and wav2vec 2.0-family models)."""

    def frozen_state_index(self, top: int) -> int:
        """Index, in the hidden states (0: embedding output), of the state that enters the first of the top ``top``
        layers.

        States ``0..index`` do not depend on the top layers: they stay what the pretrained
        encoder computes while the top layers train.

        Raises:
            ValueError: ``top`` out of range (see :meth:`top_layers`).
        """
        self.top_layers(top)  # checks top
        return self.n_transformer_layers - top

    def window_frames(self, n_samples: int) -> list[int]:
        """Frames of each window (at most ``max_window_s``) of a clip of ``n_samples`` samples, in time order.

        :meth:`frames` and :meth:`frozen_states` concatenate the windows' frames in time;
        these are the lengths to split them again, each window being attended to on its own.
        """
        max_window = int(self.max_window_s * self.sampling_rate)
        placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), (int(n_samples),))  # no memory: only lengths matter
        return [self._segment_frames(len(window)) for window in split_windows(placeholder, max_window)]

    def _segment_frames(self, n_samples: int) -> int:
        """Frames of hidden state for one window of ``n_samples`` samples."""
        raise NotImplementedError

    def frozen_states(
        self,
        signals: Sequence[np.ndarray],
        *,
        top: int,
        batch_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Frame-level input of the top ``top`` layers and pooled features, from one inference pass.

        What a fine-tune of the top ``top`` layers keeps fixed: the hidden state
        ``frozen_state_index(top)`` (the input of the first trained layer; for Whisper with
        every layer trained, the convolutions' output plus positions), and the pooled
        statistics of every layer (those of the frozen states never change).

        Args:
            signals: 1-D float arrays at 16 kHz.
            top: Number of top layers that will train.
            batch_seconds: Padded audio seconds per forward pass.
            progress: Called with the number of signals finished after each batch.

        Returns:
            Per signal ``(states, pooled)``: float32 ``(n_frames, hidden_size)`` with the
            windows of a long clip concatenated in time (split them with
            :meth:`window_frames`), and float32 ``(n_layers, dim)`` equal to :meth:`features`.

        Raises:
            ValueError: ``top`` out of range, or a signal is not 1-D, empty, too short or not finite.
        """
        index = self.frozen_state_index(top)
        checked = [
            _check_signal(signal, name=f"signals[{i}]", min_samples=self.min_samples)
            for i, signal in enumerate(signals)
        ]
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(checked)
        for i, frames in self._iter_frames(checked, batch_seconds=batch_seconds, progress=progress):
            results[i] = (np.ascontiguousarray(frames[index]), _pool(frames))
        return results  # type: ignore[return-value]

    def top_pooled_features(
        self,
        states: Sequence[np.ndarray | torch.Tensor],
        window_frames: Sequence[Sequence[int]],
        frozen: np.ndarray | torch.Tensor,
        *,
        top: int,
        batch_seconds: float | None = None,
    ) -> torch.Tensor:
        """Pooled statistics of every layer, running only the top ``top`` layers (differentiable).

        The fast path of fine-tuning: the frozen lower layers ran once (:meth:`frozen_states`,
        cached by the feature store), so a step runs the top layers on their cached input,
        windows batched with padding and an attention mask, and pools their outputs as
        :meth:`pooled_features` does. The frozen layers' statistics are taken as given. With
        float32 states this equals :meth:`pooled_features` to float32 rounding; float16 states
        add their own rounding (about 1e-3 relative).

        Args:
            states: Per clip, the hidden state ``frozen_state_index(top)``, ``(n_frames, hidden_size)``
                (any float dtype; computed in float32).
            window_frames: Per clip, :meth:`window_frames` of its length (summing to ``n_frames``).
            frozen: ``(n_clips, n_layers - top, dim)`` pooled statistics of states
                ``0..frozen_state_index(top)``, e.g. ``features(...)[:, :n_layers - top]``.
            top: Number of top layers to run.
            batch_seconds: Padded audio seconds per pass through the top layers.

        Returns:
            float32 tensor ``(n_clips, n_layers, dim)`` on the encoder's device.

        Raises:
            ValueError: ``top`` out of range, the encoder cannot run its top layers alone, or
                shapes that do not fit.
        """
        if not self.can_run_top:
            raise ValueError(
                f"encoder {self.reference!r} ({self.family}) cannot run its top layers from cached states; "
                "use pooled_features (the whole encoder) instead"
            )
        index = self.frozen_state_index(top)
        n_frozen = index + 1
        frozen = torch.as_tensor(frozen, dtype=torch.float32).to(self.device)
        if len(states) != len(window_frames) or tuple(frozen.shape) != (len(states), n_frozen, self.dim):
            raise ValueError(
                f"top_pooled_features: expected {len(states)} window lists and frozen statistics of shape "
                f"({len(states)}, {n_frozen}, {self.dim}), got {len(window_frames)} and {tuple(frozen.shape)}"
            )
        segments: list[tuple[int, int, torch.Tensor]] = []
        for i, (clip, windows) in enumerate(zip(states, window_frames)):
            clip = torch.as_tensor(clip)
            if clip.ndim != 2 or clip.shape[1] != self.hidden_size or clip.shape[0] != sum(windows):
                raise ValueError(
                    f"states[{i}]: expected shape ({sum(windows)}, {self.hidden_size}) (frames of windows "
                    f"{list(windows)}), "
                    f"got {tuple(clip.shape)}; recompute the cached states"
                )
            for w, part in enumerate(torch.split(clip, list(windows))):
                segments.append((i, w, part))
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        lengths = [part.shape[0] * self.samples_per_frame for _, _, part in segments]
        for batch in self._plan_batches(lengths, batch_seconds, can_pad=True):
            parts = [segments[b][2] for b in batch]
            n_frames = torch.tensor([p.shape[0] for p in parts], device=self.device)
            hidden = torch.zeros(len(parts), int(n_frames.max()), self.hidden_size, device=self.device)
            for row, part in enumerate(parts):
                hidden[row, : part.shape[0]] = part.to(device=self.device, dtype=torch.float32)
            stacked = self._run_top(hidden, n_frames, top)
            for row, b in enumerate(batch):
                outputs[segments[b][:2]] = stacked[row, :, : int(n_frames[row])]
        pooled = []
        for i, windows in enumerate(window_frames):
            frames = torch.cat([outputs[(i, w)] for w in range(len(windows))], dim=1)
            pooled.append(torch.cat([frozen[i], pool_frames(frames)], dim=0))
        return torch.stack(pooled)

    def _run_top(self, hidden: torch.Tensor, n_frames: torch.Tensor, top: int) -> torch.Tensor:
        """Top ``top`` layers on a padded batch ``(batch, frames, hidden)``.

        Returns their hidden states, ``(batch, top, frames, hidden)``.
        """
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the encoder (weights, config, feature-extractor config) where :func:`load_encoder` reads it.

        Weights go to ``model.safetensors``; nothing is pickled.
        """
        raise NotImplementedError(f"encoder {self.reference!r} ({self.family}) has no weights to save")


def _check_signal(signal: Any, *, name: str, min_samples: int) -> np.ndarray:
    """Return ``signal`` as a contiguous 1-D float32 array, or raise a ValueError."""
    if isinstance(signal, torch.Tensor):
        signal = signal.detach().cpu().numpy()
    array = np.asarray(signal)
    if array.ndim != 1:
        raise ValueError(
            f"{name}: expected a 1-D array (mono, {SAMPLING_RATE} Hz), got shape {array.shape}; downmix to mono first"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"{name}: expected float samples in [-1, 1], got dtype {array.dtype}; "
            "convert integer PCM with signal / 32768"
        )
    if array.shape[0] < max(1, min_samples):
        raise ValueError(
            f"{name}: expected at least {max(1, min_samples)} samples "
            f"({max(1, min_samples) / SAMPLING_RATE:.3f} s at {SAMPLING_RATE} Hz), got {array.shape[0]}; "
            "drop or pad clips this short"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if n_bad:
        raise ValueError(f"{name}: expected finite samples, got {n_bad} NaN or infinite values")
    return array


def _pool(frames: np.ndarray) -> np.ndarray:
    """Mean over frames followed by std over frames (ddof 0), per layer: (L, T, H) -> (L, 2H).

    float32 throughout, the std from centred frames (relative error ~1e-6): a third of the
    time of float64 reductions, which cost ~5% of Whisper-base's forward pass on a clip.
    """
    mean = frames.mean(axis=1, dtype=np.float32)
    centred = frames - mean[:, None, :]
    np.square(centred, out=centred)
    return np.concatenate([mean, np.sqrt(centred.mean(axis=1))], axis=1).astype(np.float32, copy=False)


def pool_frames(frames: torch.Tensor) -> torch.Tensor:
    """Differentiable :func:`_pool`: mean then std (ddof 0) over frames, ``(L, T, H) -> (L, 2H)``.

    The std's gradient is 0 (not NaN) where all frames are equal.

    >>> pool_frames(torch.tensor([[[1.0, 2.0], [3.0, 2.0]]])).tolist()
    [[2.0, 2.0, 1.0, 0.0]]
    """
    mean = frames.mean(dim=1)
    var = (frames - mean[:, None, :]).pow(2).mean(dim=1)
    positive = var > 0
    std = torch.sqrt(torch.where(positive, var, torch.ones_like(var))) * positive
    return torch.cat([mean, std], dim=1)


def _hash_json(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hash_state_dict(module: torch.nn.Module, *, skip: Iterable[str] = ()) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict.

    ``skip`` names tensors left out: those the checkpoint lacked, which hold fresh random
    values on every load and would otherwise change the hash each time.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    skipped = set(skip)
    for name in sorted(state):
        if name in skipped:
            continue
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _clean_json(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _VOLATILE_KEYS and not k.startswith("_")}


def _read_json(source: str, filename: str) -> dict[str, Any] | None:
    """Read ``filename`` from a local folder or the Hugging Face cache; None when absent."""
    local = Path(source) / filename
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    from transformers.utils import cached_file

    try:
        path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if path is None:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _model_fingerprint(
    *, family: str, source: str, config: Any, extractor: Any, module: torch.nn.Module, skip: Iterable[str] = ()
) -> str:
    raw_config = _read_json(source, "config.json")
    if raw_config is None:
        raw_config = config.to_diff_dict()
    raw_extractor = _read_json(source, "preprocessor_config.json")
    if raw_extractor is None:
        raw_extractor = extractor.to_dict()
    raw_extractor.pop("mel_filters", None)
    return _hash_json(
        {
            "family": family,
            "model_type": config.model_type,
            "config": _clean_json(raw_config),
            "feature_extractor": _clean_json(raw_extractor),
            "weights": _hash_state_dict(module, skip=skip),
        }
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars, restoring the settings after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# Whisper
# ---------------------------------------------------------------------------------------------


class WhisperEncoder(Encoder):
    """The encoder of a Whisper checkpoint, run on variable-length input.

    transformers' own Whisper encoder only accepts 30 s of log-mel frames. Here every clip is
    encoded at its own length: the log-mel spectrogram covers the clip only (its values equal
    those of the 30 s-padded spectrogram on the clip's frames), and the learned absolute
    position table is cut to the frames used. Clips of different lengths share a batch: mel
    frames are zero-padded (as the convolutions' own padding), the first convolution's output is
    zeroed past each clip's end, and an additive attention mask hides padded positions. Inputs
    longer than 30 s are encoded in equal windows of at most 30 s.

    Hidden states, as transformers returns them: the embedding output (convolutions plus
    positions), the output of each layer, the last one after the final layer norm.

    Use :func:`load_encoder` to build one.
    """

    family = "whisper"
    default_batch_seconds = 30.0

    def __init__(
        self,
        *,
        reference: str,
        model: torch.nn.Module,
        feature_extractor: Any,
        fingerprint: str,
        device: torch.device,
    ):
        self.reference = reference
        self.fingerprint = fingerprint
        self.device = device
        self._model = model
        self._extractor = feature_extractor
        config = model.config
        self.hidden_size = int(config.d_model)
        self.n_layers = int(config.encoder_layers) + 1
        self.dim = 2 * self.hidden_size
        self._n_fft = int(feature_extractor.n_fft)
        self._hop_length = int(feature_extractor.hop_length)
        self._n_mels = int(feature_extractor.feature_size)
        self._n_positions = int(model.embed_positions.weight.shape[0])
        strides = model.conv1.stride[0] * model.conv2.stride[0]
        self.max_window_s = min(30.0, self._n_positions * strides * self._hop_length / SAMPLING_RATE)
        self.samples_per_frame = strides * self._hop_length
        mel_filters = np.asarray(feature_extractor.mel_filters)
        self._mel_filters = torch.as_tensor(mel_filters, dtype=torch.float32, device=device)
        self._window = torch.hann_window(self._n_fft, device=device)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate": SAMPLING_RATE,
            "input": "log-mel",
            "n_fft": self._n_fft,
            "hop_length": self._hop_length,
            "n_mels": self._n_mels,
            # no padding to a fixed length; padding inside a batch is masked out
            "padding": "none",
            "max_window_s": self.max_window_s,
            "pooling": "mean+std",
            "std_ddof": 0,
            "implementation": "whisper-variable-length/1",
        }

    def log_mel(self, signal: np.ndarray) -> torch.Tensor:
        """Log-mel spectrogram of one clip, without padding to 30 s.

        Equal to the first ``ceil(len(signal) / hop_length)`` frames of
        ``WhisperFeatureExtractor`` output for the same clip padded to 30 s: the clip is
        followed by zeros (not reflected) and the dynamic-range floor comes from the clip's
        frames, exactly as in the padded computation. (The one exception: the last frame of a
        window of exactly 30 s, where the padded computation has no zeros left and reflects.)

        Args:
            signal: 1-D float32 array at 16 kHz, at most 30 s.

        Returns:
            float32 tensor of shape ``(n_mels, ceil(len(signal) / hop_length))``.
        """
        n = int(signal.shape[0])
        waveform = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)).to(self.device)
        waveform = torch.nn.functional.pad(waveform, (0, self._n_fft))
        stft = torch.stft(waveform, self._n_fft, self._hop_length, window=self._window, return_complex=True)
        # Frames up to here see only the clip and trailing zeros, as in the 30 s-padded input;
        # later frames of the padded input are pure silence and never set the maximum.
        n_reference = (n + self._n_fft // 2) // self._hop_length + 1
        magnitudes = (stft[:, :n_reference].abs() ** 2).contiguous()
        log_spec = torch.clamp(self._mel_filters.T @ magnitudes, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        log_spec = (log_spec + 4.0) / 4.0
        return log_spec[:, : math.ceil(n / self._hop_length)]

    @torch.inference_mode()
    def _forward_segments(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        mels = [self.log_mel(segment) for segment in segments]
        return self._encode_mels(mels)

    @torch.inference_mode()
    def _encode_mels(self, mels: list[torch.Tensor]) -> list[np.ndarray]:
        """Run the encoder on log-mel spectrograms of different lengths (one batch)."""
        stacked, lengths = self._hidden_states(mels)
        array = stacked.float().cpu().numpy()  # (batch, layers, positions, hidden)
        return [array[i, :, : int(lengths[i])] for i in range(len(mels))]

    def _segment_states(self, segments: list[np.ndarray]) -> list[torch.Tensor]:
        stacked, lengths = self._hidden_states([self.log_mel(segment) for segment in segments])
        return [stacked[i, :, : int(lengths[i])] for i in range(len(segments))]

    def _hidden_states(self, mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(batch, n_layers, positions, hidden)`` and valid positions per clip.

        Differentiable: run it under ``inference_mode`` (as :meth:`_encode_mels` does) when
        no gradient is wanted.
        """
        encoder = self._model
        n_mel_frames = torch.tensor([mel.shape[1] for mel in mels], device=self.device)
        max_frames = int(n_mel_frames.max())
        batch = torch.zeros(len(mels), self._n_mels, max_frames, device=self.device)
        for i, mel in enumerate(mels):
            batch[i, :, : mel.shape[1]] = mel
        padded = bool((n_mel_frames < max_frames).any())

        hidden = torch.nn.functional.gelu(encoder.conv1(batch))
        if padded:
            valid = torch.arange(max_frames, device=self.device)[None, :] < n_mel_frames[:, None]
            hidden = hidden * valid[:, None, :]
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        n_positions = hidden.shape[1]
        hidden = hidden + encoder.embed_positions.weight[:n_positions]
        lengths = (n_mel_frames - 1) // encoder.conv2.stride[0] + 1

        mask = self._attention_mask(lengths, n_positions, hidden.dtype) if padded else None

        states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, mask)
            states.append(hidden)
        states[-1] = encoder.layer_norm(hidden)
        return torch.stack(states, dim=1), lengths

    def _attention_mask(self, lengths: torch.Tensor, n_positions: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``(batch, 1, 1, positions)`` hiding positions at or past each clip's length."""
        valid = torch.arange(n_positions, device=self.device)[None, :] < lengths[:, None]
        mask = torch.zeros(len(lengths), 1, 1, n_positions, dtype=dtype, device=self.device)
        return mask.masked_fill_(~valid[:, None, None, :], torch.finfo(dtype).min)

    can_run_top = True

    def _segment_frames(self, n_samples: int) -> int:
        n_mel_frames = math.ceil(n_samples / self._hop_length)
        return (n_mel_frames - 1) // int(self._model.conv2.stride[0]) + 1

    def _run_top(self, hidden: torch.Tensor, n_frames: torch.Tensor, top: int) -> torch.Tensor:
        mask = None
        if bool((n_frames < hidden.shape[1]).any()):
            mask = self._attention_mask(n_frames, hidden.shape[1], hidden.dtype)
        states = []
        for layer in self._model.layers[-top:]:
            hidden = layer(hidden, mask)
            states.append(hidden)
        states[-1] = self._model.layer_norm(hidden)
        return torch.stack(states, dim=1)

    @property
    def n_transformer_layers(self) -> int:
        return len(self._model.layers)

    def _top_layers(self, n: int) -> list[torch.nn.Module]:
        # The final layer norm acts on the last layer's output only: it belongs to the top.
        return [*self._model.layers[-n:], self._model.layer_norm]

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json``, ``preprocessor_config.json`` and ``model.safetensors``.

        The weights are stored as ``encoder.*`` tensors, the layout of an encoder-only
        Whisper checkpoint, which :func:`load_encoder` reads back.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._model.config.save_pretrained(folder)
        self._extractor.save_pretrained(folder)
        tensors = {f"encoder.{k}": v.detach().to("cpu").contiguous() for k, v in self._model.state_dict().items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------
# Self-supervised models (wav2vec 2.0, HuBERT, WavLM, data2vec-audio)
# ---------------------------------------------------------------------------------------------


class SSLEncoder(Encoder):
    """A Hugging Face self-supervised speech model (wav2vec 2.0, HuBERT, WavLM, data2vec-audio).

    Each clip is normalised by the model's feature extractor on its own (so normalisation
    never sees padding). Models whose convolutional front end uses layer norm
    (``feat_extract_norm == "layer"``, e.g. wav2vec2-large-lv60, hubert-large, wavlm-large)
    batch clips of different lengths with an attention mask. Two kinds of model would change
    their output when a clip is padded, mask or not, so they batch only clips of exactly equal
    length (in practice, one clip at a time): group norm in the front end
    (``feat_extract_norm == "group"``, e.g. wav2vec2-base, hubert-base) normalises over time,
    padding included, and data2vec-audio's stacked positional convolutions carry padded frames
    into the last valid ones. ``preprocessing["padding"]`` says which applies.

    Use :func:`load_encoder` to build one.
    """

    family = "ssl"
    default_batch_seconds = 30.0

    def __init__(
        self,
        *,
        reference: str,
        model: torch.nn.Module,
        feature_extractor: Any,
        fingerprint: str,
        device: torch.device,
    ):
        self.reference = reference
        self.fingerprint = fingerprint
        self.device = device
        self._model = model
        self._extractor = feature_extractor
        config = model.config
        self.hidden_size = int(config.hidden_size)
        self.n_layers = int(config.num_hidden_layers) + 1
        self.dim = 2 * self.hidden_size
        self._feat_extract_norm = str(getattr(config, "feat_extract_norm", "layer"))
        self._model_type = str(config.model_type)
        self.min_samples = _min_samples(config)
        self.samples_per_frame = int(np.prod([int(stride) for stride in config.conv_stride]))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate": SAMPLING_RATE,
            "do_normalize": bool(getattr(self._extractor, "do_normalize", False)),
            "padding": "masked" if self._can_pad() else "none",
            "max_window_s": self.max_window_s,
            "pooling": "mean+std",
            "std_ddof": 0,
            "implementation": "ssl/1",
        }

    def _can_pad(self) -> bool:
        # Group norm normalises the first convolution over time, padding included.
        # data2vec-audio's positional embedding stacks several convolutions, so padded frames
        # (zero only before the first) leak into the last valid frames.
        return self._feat_extract_norm != "group" and self._model_type not in _NO_PADDING_MODEL_TYPES

    @torch.inference_mode()
    def _forward_segments(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        stacked, n_frames = self._hidden_states(segments)
        array = stacked.float().cpu().numpy()
        return [array[i, :, : int(n_frames[i])] for i in range(len(segments))]

    def _segment_states(self, segments: list[np.ndarray]) -> list[torch.Tensor]:
        stacked, n_frames = self._hidden_states(segments)
        return [stacked[i, :, : int(n_frames[i])] for i in range(len(segments))]

    def _hidden_states(self, segments: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(batch, n_layers, frames, hidden)`` and valid frames per clip (differentiable)."""
        values = [
            np.asarray(
                self._extractor(segment, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_values"][0],
                dtype=np.float32,
            )
            for segment in segments
        ]
        lengths = torch.tensor([v.shape[0] for v in values], device=self.device)
        max_len = int(lengths.max())
        batch = torch.zeros(len(values), max_len, device=self.device)
        for i, v in enumerate(values):
            batch[i, : v.shape[0]] = torch.from_numpy(v)
        attention_mask = None
        if bool((lengths < max_len).any()):
            if not self._can_pad():  # _iter_frames never builds such a batch
                raise RuntimeError("group-norm models must not be batched with padding")
            attention_mask = (torch.arange(max_len, device=self.device)[None, :] < lengths[:, None]).long()
        with warnings.catch_warnings():
            # WavLM passes a float attention bias and a bool padding mask to torch's attention.
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            outputs = self._model(batch, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(outputs.hidden_states, dim=1), self._frame_lengths(lengths).cpu()

    # WavLM's first layer computes a relative position bias that the layers above reuse: running
    # the top layers alone would need it too, so WavLM fine-tunes through the whole encoder.
    @property
    def can_run_top(self) -> bool:  # type: ignore[override]
        return self._model_type in ("wav2vec2", "hubert", "data2vec-audio")

    def _segment_frames(self, n_samples: int) -> int:
        return int(self._frame_lengths(torch.tensor([int(n_samples)]))[0])

    def _run_top(self, hidden: torch.Tensor, n_frames: torch.Tensor, top: int) -> torch.Tensor:
        # As transformers' encoder runs its layers: a bidirectional mask over valid frames. The
        # hidden states it returns never include the final layer norm of pre-norm models.
        mask = None
        if bool((n_frames < hidden.shape[1]).any()):
            from transformers.masking_utils import create_bidirectional_mask

            valid = torch.arange(hidden.shape[1], device=self.device)[None, :] < n_frames[:, None]
            mask = create_bidirectional_mask(config=self._model.config, inputs_embeds=hidden, attention_mask=valid)
        states = []
        for layer in self._model.encoder.layers[-top:]:
            hidden = layer(hidden, attention_mask=mask)
            states.append(hidden)
        return torch.stack(states, dim=1)

    @property
    def n_transformer_layers(self) -> int:
        return len(self._model.encoder.layers)

    # A key bias adds the same q·b to every attention score of a query; softmax cancels it.
    no_gradient = ("attention.k_proj.bias",)

    def _top_layers(self, n: int) -> list[torch.nn.Module]:
        # Only the layers: the hidden states transformers returns never pass through the
        # encoder's final layer norm of pre-norm ("stable layer norm") models, and post-norm
        # models apply it before the first layer, where it stays frozen.
        return list(self._model.encoder.layers[-n:])

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model (``model.safetensors`` + ``config.json``) and ``preprocessor_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():  # no "Writing model shards" bar
            self._model.save_pretrained(folder)
            self._extractor.save_pretrained(folder)

    def _frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per input length; hidden states come before any adapter, so none is counted."""
        lengths_of = self._model._get_feat_extract_output_lengths
        if "add_adapter" in inspect.signature(lengths_of).parameters:
            return lengths_of(lengths, add_adapter=False)
        return lengths_of(lengths)


def _min_samples(config: Any) -> int:
    """Shortest input that gives one frame through the convolutional front end."""
    length = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        length = (length - 1) * int(stride) + int(kernel)
    return length


# ---------------------------------------------------------------------------------------------
# openSMILE eGeMAPS
# ---------------------------------------------------------------------------------------------


class EgemapsEncoder(Encoder):
    """openSMILE eGeMAPSv02 functionals: 88 hand-crafted features per clip.

    ``features`` returns arrays of shape ``(1, 88)``. openSMILE needs at least 0.06 s
    (960 samples) to compute any functional: shorter signals raise a ValueError. A functional
    that openSMILE still leaves undefined (NaN or infinite) on a longer clip is replaced by 0
    and logged as a warning, so that the store and the classifier only ever see finite
    numbers; this is recorded as ``preprocessing["non_finite"] == "zero"``.

    Use :func:`load_encoder` with ``"egemaps"`` to build one.
    """

    family = "egemaps"
    min_samples = 960
    n_layers = 1
    dim = 88

    def __init__(self, *, reference: str):
        try:
            import opensmile
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "encoder 'egemaps' needs the opensmile package, which is not installed; "
                "run pip install 'speech-emotion[egemaps]'"
            ) from exc
        self.reference = reference
        self.device = torch.device("cpu")
        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self.feature_names = list(self._smile.feature_names)
        if len(self.feature_names) != self.dim:
            raise ValueError(
                f"opensmile {opensmile.__version__}: expected {self.dim} eGeMAPSv02 functionals, "
                f"got {len(self.feature_names)}; install opensmile>=2.5"
            )
        self.fingerprint = _hash_json(
            {
                "family": self.family,
                "reference": "egemaps",
                "opensmile": opensmile.__version__,
                "feature_set": "eGeMAPSv02",
                "feature_names": self.feature_names,
            }
        )

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate": SAMPLING_RATE,
            "feature_set": "eGeMAPSv02",
            "feature_level": "Functionals",
            "non_finite": "zero",
            "implementation": "egemaps/1",
        }

    def _forward_segments(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def features(
        self,
        signals: Sequence[np.ndarray],
        *,
        batch_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[np.ndarray]:
        """eGeMAPSv02 functionals, one ``(1, 88)`` float32 array per signal.

        Args:
            signals: 1-D float arrays at 16 kHz.
            batch_seconds: Ignored (signals are processed one at a time).
            progress: Called with 1 after each signal.

        Returns:
            For each signal a float32 array of shape ``(1, 88)``, in ``feature_names`` order.

        Raises:
            ValueError: A signal is not 1-D, not finite, or shorter than 960 samples.
        """
        checked = [
            _check_signal(signal, name=f"signals[{i}]", min_samples=self.min_samples)
            for i, signal in enumerate(signals)
        ]
        results = []
        for i, signal in enumerate(checked):
            values = np.asarray(self._smile.process_signal(signal, SAMPLING_RATE).to_numpy(), dtype=np.float64)
            values = values.reshape(1, self.dim)
            bad = ~np.isfinite(values)
            if bad.any():
                names = [self.feature_names[j] for j in np.flatnonzero(bad[0])]
                logger.warning(
                    "signals[%d]: openSMILE left %d of %d eGeMAPS functionals undefined (%s); set to 0",
                    i,
                    len(names),
                    self.dim,
                    ", ".join(names[:5]) + (", …" if len(names) > 5 else ""),
                )
                values[bad] = 0.0
            results.append(values.astype(np.float32))
            if progress is not None:
                progress(1)
        return results

    def frames(self, signal: np.ndarray) -> np.ndarray:
        """Not available: eGeMAPS functionals have no frame-level hidden states.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError("encoder 'egemaps' has no frame-level hidden states; use features()")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _looks_like_path(reference: str) -> bool:
    """True when ``reference`` cannot be a Hugging Face hub id (``name`` or ``org/name``)."""
    if reference.startswith(("/", ".", "~", "\\")) or "\\" in reference or reference.count("/") > 1:
        return True
    return len(reference) > 1 and reference[1] == ":"  # a Windows drive


def _remedy() -> str:
    return (
        f"pass a local folder such as {EXAMPLE_FOLDER}, a Hugging Face model id that is in the local "
        "cache, or 'egemaps'"
    )


def load_encoder(reference: str, *, device: str = "cpu") -> Encoder:
    """Load a frozen encoder by reference.

    ``reference`` is ``"egemaps"``, a local folder saved by ``save_pretrained``, or a
    Hugging Face hub id (``"openai/whisper-base"``, ``"facebook/wav2vec2-base"``); folders and
    hub ids go through the same ``from_pretrained`` call. The family comes from the config's
    ``model_type``: ``"whisper"`` gives a :class:`WhisperEncoder`, one of
    ``SSL_MODEL_TYPES`` gives an :class:`SSLEncoder`. Whisper checkpoints may hold only the
    encoder (``encoder.*`` tensors) or a full sequence-to-sequence model.

    Args:
        reference: ``"egemaps"``, a folder, or a hub id.
        device: Torch device for the model, e.g. ``"cpu"`` or ``"cuda"``.

    Returns:
        An :class:`Encoder` in eval mode.

    Raises:
        FileNotFoundError: ``reference`` is a path and no such folder exists.
        ValueError: The folder or hub id cannot be loaded (not a model folder, not available
            offline, weights missing) or its ``model_type`` is not supported.
        ImportError: ``"egemaps"`` without the opensmile package.

    Example:
        >>> load_encoder("./no/such/folder")  # a path that does not exist is an error
        Traceback (most recent call last):
        ...
        FileNotFoundError: ./no/such/folder: no such folder; pass a local folder such as ...

        A folder written by ``save_pretrained`` (here a tiny, randomly initialised wav2vec 2.0):

        >>> import tempfile
        >>> from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
        >>> folder = tempfile.mkdtemp()
        >>> config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                         intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4),
        ...                         conv_kernel=(10, 8), num_conv_pos_embeddings=8,
        ...                         num_conv_pos_embedding_groups=2)
        >>> Wav2Vec2Model(config).save_pretrained(folder)
        >>> _ = Wav2Vec2FeatureExtractor().save_pretrained(folder)
        >>> encoder = load_encoder(folder)
        >>> encoder.family, encoder.n_layers, encoder.dim  # embeddings + 2 layers; mean and std
        ('ssl', 3, 32)
        >>> [f.shape for f in encoder.features([np.zeros(16000), np.zeros(8000)])]
        [(3, 32), (3, 32)]
    """
    if not isinstance(reference, (str, os.PathLike)):
        raise TypeError(f"reference: expected a str (folder, hub id or 'egemaps'), got {type(reference).__name__}")
    reference = os.fspath(reference)
    if reference.strip().lower() == "egemaps":
        return EgemapsEncoder(reference=reference)
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from exc

    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{reference}: expected a model folder holding config.json and weights, got a file; "
                "pass the folder that contains it"
            )
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{reference}: expected config.json in this folder (a model saved with save_pretrained), "
                f"found none; {_remedy()}"
            )
        source = str(path)
    elif _looks_like_path(reference):
        raise FileNotFoundError(f"{reference}: no such folder; {_remedy()}")
    else:
        source = reference

    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if path.exists():
            problem = f"expected a model folder that transformers can read, got an error ({detail})"
        else:
            problem = f"not an existing folder, and not a Hugging Face model available offline ({detail})"
        raise ValueError(f"{reference}: {problem}; {_remedy()}") from exc

    model_type = getattr(config, "model_type", None)
    if model_type == "whisper":
        return _load_whisper(reference, source, config, torch_device)
    if model_type in SSL_MODEL_TYPES:
        return _load_ssl(reference, source, config, torch_device)
    raise ValueError(
        f"{reference}: model_type {model_type!r} is not a supported speech encoder; expected 'whisper' "
        f"or one of {', '.join(repr(t) for t in SSL_MODEL_TYPES)}, or use 'egemaps'"
    )


def _load_feature_extractor(reference: str, source: str) -> Any:
    from transformers import AutoFeatureExtractor

    try:
        with _quiet_transformers():
            extractor = AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{reference}: expected a feature extractor (preprocessor_config.json) beside the model, "
            f"could not load one ({type(exc).__name__}); save it with feature_extractor.save_pretrained "
            "into the same folder"
        ) from exc
    sampling_rate = getattr(extractor, "sampling_rate", SAMPLING_RATE)
    if sampling_rate != SAMPLING_RATE:
        raise ValueError(
            f"{reference}: the feature extractor expects {sampling_rate} Hz, but encoders here take "
            f"{SAMPLING_RATE} Hz input; use a 16 kHz model"
        )
    return extractor


def _check_missing(reference: str, missing: Sequence[str], prefix: str) -> None:
    missing = [k for k in missing if k.startswith(prefix) and not any(s in k for s in _IGNORABLE_MISSING)]
    if missing:
        raise ValueError(
            f"{reference}: expected weights for every encoder tensor, but {len(missing)} are missing "
            f"from the checkpoint (e.g. {', '.join(sorted(missing)[:3])}); they would be random. "
            "Pass a folder saved from a pretrained model"
        )


def _load_whisper(reference: str, source: str, config: Any, device: torch.device) -> WhisperEncoder:
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    extractor = _load_feature_extractor(reference, source)
    if not isinstance(extractor, WhisperFeatureExtractor):
        raise ValueError(
            f"{reference}: expected a WhisperFeatureExtractor for a Whisper model, got {type(extractor).__name__}"
        )
    try:
        # Holds the encoder whether the checkpoint stores encoder.* (encoder only) or
        # model.encoder.* (full sequence-to-sequence model); the classifier head is unused.
        with _quiet_transformers():
            model, info = WhisperForAudioClassification.from_pretrained(
                source, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{reference}: could not load Whisper weights ({type(exc).__name__}: {exc}); {_remedy()}"
        ) from exc
    _check_missing(reference, info.get("missing_keys", []), "encoder.")
    encoder = model.encoder.to(device).eval()
    encoder.requires_grad_(False)
    del model
    fingerprint = _model_fingerprint(
        family="whisper", source=source, config=config, extractor=extractor, module=encoder
    )
    return WhisperEncoder(
        reference=reference, model=encoder, feature_extractor=extractor, fingerprint=fingerprint, device=device
    )


def _load_ssl(reference: str, source: str, config: Any, device: torch.device) -> SSLEncoder:
    from transformers import AutoModel

    extractor = _load_feature_extractor(reference, source)
    try:
        with _quiet_transformers():
            model, info = AutoModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{reference}: could not load model weights ({type(exc).__name__}: {exc}); {_remedy()}"
        ) from exc
    missing = list(info.get("missing_keys", []))
    _check_missing(reference, missing, "")
    model = model.to(device).eval()
    model.requires_grad_(False)
    fingerprint = _model_fingerprint(
        family="ssl", source=source, config=config, extractor=extractor, module=model, skip=missing
    )
    return SSLEncoder(
        reference=reference, model=model, feature_extractor=extractor, fingerprint=fingerprint, device=device
    )
