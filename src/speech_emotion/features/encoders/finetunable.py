"""The fine-tuning API of the neural encoders (Whisper, wav2vec 2.0 family).

:class:`FinetunableEncoder` adds to the frozen :class:`~speech_emotion.features.encoders.base.Encoder`
what fine-tuning needs: the top transformer layers as modules, differentiable pooled features
through the whole encoder (:meth:`FinetunableEncoder.pooled_features`) or through the top
layers alone from cached hidden states (:meth:`FinetunableEncoder.top_pooled_features`), and
``save_pretrained``. eGeMAPS is not a neural network and has none of it: code that fine-tunes
asks :func:`check_finetunable` first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speech_emotion.features.devices import batch_frames_for, check_precision
from speech_emotion.features.encoders.base import Encoder
from speech_emotion.features.encoders.pooling import pool_frames
from speech_emotion.features.signal import pool_mean_std


@contextlib.contextmanager
def fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full fp32 inside the block (no TF32), the previous setting restored after.

    Example:
        >>> with fp32_convolutions():
        ...     torch.backends.cudnn.allow_tf32
        False
    """
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def check_finetunable(encoder: Encoder) -> FinetunableEncoder:
    """``encoder`` itself when it can be fine-tuned, else a ValueError that says what to do instead.

    Args:
        encoder: Any encoder from :func:`~speech_emotion.features.encoders.load_encoder`.

    Returns:
        The same encoder, typed as a :class:`FinetunableEncoder`.

    Raises:
        ValueError: The encoder has no trainable layers (eGeMAPS).
    """
    if not isinstance(encoder, FinetunableEncoder) or encoder.n_transformer_layers == 0:
        raise ValueError(
            f"encoder {encoder.reference!r} ({encoder.family}) has no trainable layers: nothing to fine-tune; "
            "fine-tune a Whisper or wav2vec 2.0-family encoder, or train the head alone (no --finetune)"
        )
    return encoder


class FinetunableEncoder(Encoder):
    """A frozen encoder whose top transformer layers can be trained (Whisper, wav2vec 2.0 family).

    Subclasses implement :attr:`module`, :attr:`feature_extractor`, :attr:`n_transformer_layers`,
    :meth:`save_pretrained` and the hooks ``_top_layers``, ``_segment_states``,
    ``_segment_frames`` and ``_run_top``.
    """

    def __init__(
        self,
        *,
        reference: str,
        model: torch.nn.Module,
        feature_extractor: Any,
        fingerprint: str,
        device: torch.device,
        precision: str,
        hidden_size: int,
        n_layers: int,
    ):
        self.reference = reference
        self.fingerprint = fingerprint
        self.device = device
        self.precision = check_precision(precision)
        self.batch_frames = batch_frames_for(device.type)
        self._model = model
        self._extractor = feature_extractor
        self.hidden_size = hidden_size
        self.n_layers = n_layers  # the embedding output and each transformer layer
        self.dim = 2 * hidden_size  # mean and std pooled

    @property
    def n_transformer_layers(self) -> int:
        """Transformer layers that :meth:`top_layers` can hand out."""
        raise NotImplementedError

    @property
    def module(self) -> torch.nn.Module:
        """The transformers module holding every weight of the encoder (what fine-tuning trains)."""
        raise NotImplementedError

    @property
    def feature_extractor(self) -> Any:
        """The transformers feature extractor loaded beside the model (``preprocessor_config.json``)."""
        raise NotImplementedError

    def precision_context(self) -> contextlib.AbstractContextManager:
        """What the network's forward pass runs under, for :attr:`precision` on :attr:`device`.

        ``bf16``: autocast to bfloat16 on the encoder's device. ``fp32`` on CUDA: cuDNN
        convolutions kept in full fp32 (torch lets them use TF32 on Ampere and later GPUs, about
        1e-3 relative error, more than the stated CPU/GPU tolerance); otherwise nothing changes.
        Log-mel spectrograms, input normalisation and pooling stay fp32 either way.
        """
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self.device.type == "cuda":
            return fp32_convolutions()
        return contextlib.nullcontext()

    def top_layers(self, n: int) -> list[torch.nn.Module]:
        """The modules of the top ``n`` transformer layers (with the final layer norm that follows them).

        Raises:
            ValueError: ``n`` is not in ``1..n_transformer_layers``.
        """
        check_finetunable(self)
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
        checked = self._check_signals(signals)
        segments, n_windows = self._segments(checked)
        frames: dict[tuple[int, int], torch.Tensor] = {}
        for batch in self._batches([len(segment) for _, _, segment in segments], batch_seconds):
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
    position bias the others reuse)."""

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
        placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), (int(n_samples),))  # no memory: only lengths matter
        segments, _ = self._segments([placeholder])
        return [self._segment_frames(len(window)) for _, _, window in segments]

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
        checked = self._check_signals(signals)
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(checked)
        for i, frames in self._iter_frames(checked, batch_seconds=batch_seconds, progress=progress):
            results[i] = (np.ascontiguousarray(frames[index]), pool_mean_std(frames))
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
        for batch in self._batches(lengths, batch_seconds, can_pad=True):
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
        """Write the encoder (weights, config, feature-extractor config) where
        :func:`~speech_emotion.features.encoders.load_encoder` reads it.

        Weights go to ``model.safetensors``; nothing is pickled.
        """
        raise NotImplementedError
