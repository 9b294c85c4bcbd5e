"""The frozen encoder API: 16 kHz waveforms in, pooled statistics of every layer out.

:class:`Encoder` holds what every PyTorch encoder shares: input checks, windows of long
inputs, batches sorted by length, pooling and ``repr``. Subclasses encode one batch
(:meth:`Encoder._forward_segments`) and describe their ``preprocessing``. The module imports
neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.devices import DEFAULT_BATCH_FRAMES
from speech_emotion.features.signal import check_encoder_input, plan_batches, pool_mean_std, split_segments

if TYPE_CHECKING:
    import torch


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
        device: The torch device the model runs on (a parameter of the encoder: the same code
            runs on every device, and no device is part of the feature-store key).
        precision: ``"fp32"`` or ``"bf16"`` (autocast on the forward pass; recorded in
            ``preprocessing`` because bf16 features are not fp32 features).
        samples_per_frame: Input samples per hidden-state frame (320: 20 ms at 16 kHz).
        batch_frames: Padded hidden-state frames (tokens) per forward pass when ``features`` is
            called without ``batch_seconds``; by default the budget of the device type
            (:data:`~speech_emotion.features.devices.DEFAULT_BATCH_FRAMES`).
        default_batch_seconds: ``batch_frames`` in padded seconds of 16 kHz audio.
        can_pad: Whether segments of different lengths may share a batch (padding masked out).
    """

    family: str = ""
    sampling_rate: int = SAMPLING_RATE
    max_window_s: float = 30.0
    min_samples: int = 1
    precision: str = "fp32"
    samples_per_frame: int = 320
    batch_frames: int = DEFAULT_BATCH_FRAMES["cpu"]

    reference: str
    n_layers: int
    dim: int
    hidden_size: int = 0
    device: torch.device
    fingerprint: str

    @property
    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def default_batch_seconds(self) -> float:
        """Padded audio seconds per forward pass by default: ``batch_frames`` frames of ``samples_per_frame``."""
        return self.batch_frames * self.samples_per_frame / self.sampling_rate

    def _precision_fields(self) -> dict[str, Any]:
        """What ``preprocessing`` records of the precision: nothing for fp32 (keys as they always were), else it."""
        return {} if self.precision == "fp32" else {"precision": self.precision}

    @property
    def can_pad(self) -> bool:
        """Whether segments of different lengths may share a batch (the padding masked out)."""
        return True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reference={self.reference!r}, n_layers={self.n_layers}, "
            f"dim={self.dim}, fingerprint={self.fingerprint[:12]}…, device={str(getattr(self, 'device', 'cpu'))!r}, "
            f"precision={self.precision!r})"
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
                ``default_batch_seconds``, from the device's frame budget). Larger uses more memory.
            progress: Called with the number of signals finished after each batch.

        Returns:
            For each signal a float32 array of shape ``(n_layers, dim)``: per layer, the mean
            over frames followed by the standard deviation over frames (ddof 0).

        Raises:
            ValueError: A signal is not 1-D, is empty, too short or not finite.
        """
        checked = self._check_signals(signals)
        pooled: list[np.ndarray | None] = [None] * len(checked)
        for index, frames in self._iter_frames(checked, batch_seconds=batch_seconds, progress=progress):
            pooled[index] = pool_mean_std(frames)
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
        checked = check_encoder_input(signal, name="signal", min_samples=self.min_samples)
        ((_, frames),) = list(self._iter_frames([checked], batch_seconds=None, progress=None))
        return frames

    # -- machinery -----------------------------------------------------------------------------

    def _check_signals(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every signal checked (:func:`check_encoder_input`), named by its position."""
        return [
            check_encoder_input(signal, name=f"signals[{i}]", min_samples=self.min_samples)
            for i, signal in enumerate(signals)
        ]

    def _segments(self, signals: Sequence[np.ndarray]) -> tuple[list[tuple[int, int, np.ndarray]], list[int]]:
        """Windows of at most ``max_window_s`` of every signal (:func:`split_segments`)."""
        return split_segments(signals, int(self.max_window_s * self.sampling_rate))

    def _batches(
        self, lengths: Sequence[int], batch_seconds: float | None, *, can_pad: bool | None = None
    ) -> list[list[int]]:
        """Forward passes over segments of ``lengths`` samples (:func:`plan_batches`).

        ``can_pad`` overrides :attr:`can_pad` (the top layers alone always take masked padding).
        """
        return plan_batches(
            lengths,
            batch_seconds=self.default_batch_seconds if batch_seconds is None else batch_seconds,
            can_pad=self.can_pad if can_pad is None else can_pad,
        )

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
        segments, n_windows = self._segments(signals)
        pending: dict[int, dict[int, np.ndarray]] = {}
        for batch in self._batches([len(segment) for _, _, segment in segments], batch_seconds):
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
