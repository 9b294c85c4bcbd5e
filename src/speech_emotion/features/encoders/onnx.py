"""The encoder of an ONNX export (``encoder.onnx``), run with ONNX Runtime and numpy alone.

:class:`OnnxEncoder` has the frozen API of the PyTorch encoders (``features``,
``fingerprint``, ``preprocessing``, ...) and shares their input checks, windows, batch
planning and pooling (:mod:`speech_emotion.features.signal`). Whisper's log-mel spectrogram
is computed here in numpy (:func:`whisper_log_mel`), equal to ``WhisperEncoder.log_mel`` to
float rounding.

This module imports neither torch nor transformers, and onnxruntime only when a session is
opened.

Example:
    >>> filters = np.zeros((201, 80), dtype=np.float32); filters[10:20, :] = 1.0
    >>> whisper_log_mel(np.zeros(16000, dtype=np.float32) + 0.1, filters).shape  # (n_mels, ceil(n / hop))
    (80, 100)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.signal import (
    check_encoder_input,
    merge_window_stats,
    plan_batches,
    split_segments,
    ssl_frames,
    ssl_min_samples,
)

ENCODER_FILE = "encoder.onnx"
"""File name of the exported encoder inside an ONNX export folder."""

MEL_FILTERS_FILE = "mel_filters.npy"
"""File name of the Whisper mel filter bank inside an ONNX export folder."""

WAIT_POLICY = "OMP_WAIT_POLICY"
"""Environment variable for how idle compute threads wait: ``PASSIVE`` (the default set here)
or ``ACTIVE`` (spin). It must be set before torch is imported to reach torch's OpenMP threads;
ONNX Runtime reads it for every session (``allow_spinning``)."""


def onnx_session(path: str | Path, threads: int | None = None, providers: Sequence[Any] | None = None) -> Any:
    """An ONNX Runtime session for ``path`` (CPU by default), set up for inference on a shared machine.

    Graph optimisations on, one inter-op thread, ``threads`` intra-op threads (ONNX Runtime's
    choice when None), and idle threads that sleep unless ``OMP_WAIT_POLICY=ACTIVE``.

    Args:
        path: An ``.onnx`` file.
        threads: Intra-op threads, or None for ONNX Runtime's default (one per physical core).
        providers: Execution providers in order of preference (default: the CPU's alone);
            see :func:`~speech_emotion.inference.backends.onnx_providers`.

    Returns:
        An ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if os.environ.get(WAIT_POLICY, "PASSIVE").strip().upper() != "ACTIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(path), sess_options=options, providers=list(providers) if providers else ["CPUExecutionProvider"]
    )


def whisper_log_mel(
    signal: np.ndarray, mel_filters: np.ndarray, *, n_fft: int = 400, hop_length: int = 160
) -> np.ndarray:
    """Whisper log-mel spectrogram of one clip in numpy, without padding to 30 s.

    The same computation as ``WhisperEncoder.log_mel`` (torch): the clip is followed by
    ``n_fft`` zeros, framed as ``torch.stft(center=True)`` frames it (reflect padding of
    ``n_fft // 2``), windowed with a periodic Hann window; the dynamic-range floor (max − 8)
    comes from the frames that the 30 s-padded computation would see.

    Args:
        signal: 1-D float array at 16 kHz, at most 30 s.
        mel_filters: ``(n_fft // 2 + 1, n_mels)`` filter bank (the feature extractor's).
        n_fft: FFT size in samples.
        hop_length: hop in samples.

    Returns:
        float32 array of shape ``(n_mels, ceil(len(signal) / hop_length))``.
    """
    n = int(signal.shape[0])
    half = n_fft // 2
    waveform = np.concatenate([np.asarray(signal, dtype=np.float64), np.zeros(n_fft)])
    padded = np.pad(waveform, half, mode="reflect")
    n_reference = (n + half) // hop_length + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:n_reference]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann, as torch.hann_window
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    log_spec = np.log10(np.maximum(_apply_filters(power, mel_filters), 1e-10)).T
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return np.ascontiguousarray(log_spec[:, : math.ceil(n / hop_length)], dtype=np.float32)


def _apply_filters(power: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """``power @ filters`` for a sparse filter bank, without BLAS.

    Multithreaded BLAS on a matrix this small is slow on a busy machine (threads wait for
    each other); the filters have a few hundred non-zero weights, so a gather and a segmented
    sum is both faster and independent of the load.
    """
    mels, freqs = np.nonzero(filters.T)  # (mel band, frequency bin) pairs, sorted by band
    weights = filters.T[mels, freqs].astype(np.float64)
    out = np.zeros((power.shape[0], filters.shape[1]), dtype=np.float64)
    if not len(weights):
        return out
    products = power[:, freqs] * weights
    starts = np.flatnonzero(np.r_[True, mels[1:] != mels[:-1]])
    out[:, mels[starts]] = np.add.reduceat(products, starts, axis=1)
    return out


def _zero_mean_unit_var(signal: np.ndarray) -> np.ndarray:
    """Per-clip normalisation of the wav2vec 2.0 feature extractor (``do_normalize``)."""
    return ((signal - signal.mean()) / np.sqrt(signal.var() + 1e-7)).astype(np.float32)


class OnnxEncoder:
    """``encoder.onnx`` of an ONNX export: 16 kHz signals → pooled per-layer statistics.

    The same interface as the PyTorch encoders for ``features`` (sorted, length-bucketed
    batches; results in input order; inputs over ``max_window_s`` encoded in equal windows
    whose statistics are merged). ``fingerprint`` is the sha256 of ``encoder.onnx``, so the
    feature store never mixes its features with the PyTorch encoder's. A quantized encoder
    runs one clip per forward pass: its dynamic quantization scales activations by the range
    of the whole batch, which would make a clip's result depend on its neighbours.

    Args:
        folder: The export folder (``encoder.onnx`` and, for Whisper, ``mel_filters.npy``).
        meta: Its ``model.json``, already checked (``onnx``, ``encoder`` and ``preprocessing`` sections).
        fingerprint: sha256 of ``encoder.onnx``.
        threads: ONNX Runtime intra-op threads (None: ONNX Runtime's choice).
        providers: ONNX Runtime execution providers (default: the CPU's).
    """

    def __init__(
        self,
        folder: Path,
        meta: dict,
        *,
        fingerprint: str,
        threads: int | None = None,
        providers: Sequence[Any] | None = None,
    ):
        folder = Path(folder)
        onnx_meta = meta["onnx"]
        encoder_meta = meta["encoder"]
        self.family: str = encoder_meta["family"]
        self.reference = str(folder / ENCODER_FILE)
        self.fingerprint = fingerprint
        self.n_layers = int(encoder_meta["n_layers"])
        self.dim = int(encoder_meta["dim"])
        self.hidden_size = self.dim // 2
        self.sampling_rate = SAMPLING_RATE
        self.preprocessing: dict = dict(meta.get("preprocessing") or {})
        self.max_window_s = float(self.preprocessing.get("max_window_s", 30.0))
        self.default_batch_seconds = float(onnx_meta.get("batch_seconds", 30.0))
        self.input = onnx_meta["input"]
        self.quantization = str(onnx_meta.get("quantization", "none"))
        # int8 dynamic quantization scales activations by each batch's range: one clip per
        # forward pass keeps a clip's result independent of the clips it is batched with.
        self.one_per_batch = self.quantization != "none"
        self._session = onnx_session(folder / ENCODER_FILE, threads, providers)
        self._input_names = [i.name for i in self._session.get_inputs()]
        if self.family == "whisper":
            self._n_fft = int(self.preprocessing["n_fft"])
            self._hop = int(self.preprocessing["hop_length"])
            self._mel_filters = np.load(folder / MEL_FILTERS_FILE, allow_pickle=False)
            self.min_samples = 1
            self.can_pad = True
        else:
            self._kernels = [int(k) for k in self.input["conv_kernel"]]
            self._strides = [int(s) for s in self.input["conv_stride"]]
            self._normalize = bool(self.input["do_normalize"])
            self.can_pad = bool(self.input["masked"])
            self.min_samples = ssl_min_samples(self._kernels, self._strides)

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder(reference={self.reference!r}, family={self.family!r}, fingerprint={self.fingerprint[:12]}…)"
        )

    def features(
        self,
        signals: Sequence[np.ndarray],
        *,
        batch_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[np.ndarray]:
        """Pooled statistics of every layer, one ``(n_layers, dim)`` float32 array per signal.

        Args:
            signals: 1-D float arrays at 16 kHz.
            batch_seconds: Padded audio seconds per forward pass (default ``default_batch_seconds``).
            progress: Called with the number of signals finished after each batch.

        Returns:
            For each signal, in input order, per layer the mean and std (ddof 0) over frames.

        Raises:
            ValueError: a signal is not 1-D float, is too short or not finite.
        """
        checked = [
            check_encoder_input(s, name=f"signals[{i}]", min_samples=self.min_samples) for i, s in enumerate(signals)
        ]
        segments, n_windows = split_segments(checked, int(self.max_window_s * SAMPLING_RATE))
        batches = plan_batches(
            [len(samples) for _, _, samples in segments],
            batch_seconds=self.default_batch_seconds if batch_seconds is None else batch_seconds,
            can_pad=self.can_pad,
            one_per_batch=self.one_per_batch,
        )
        parts: dict[int, list[tuple[np.ndarray, int]]] = {}
        pooled: list[np.ndarray | None] = [None] * len(checked)
        for batch in batches:
            outputs, counts = self._run([segments[b][2] for b in batch])
            n_done = 0
            for b, out, count in zip(batch, outputs, counts):
                index = segments[b][0]
                # windows arrive shortest first; merging in arrival order keeps results as they were
                parts.setdefault(index, []).append((out, count))
                if len(parts[index]) == n_windows[index]:
                    pooled[index] = merge_window_stats(parts.pop(index))
                    n_done += 1
            if progress is not None and n_done:
                progress(n_done)
        return pooled  # type: ignore[return-value]

    def _run(self, segments: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """One batch through ``encoder.onnx``: pooled features and frames per segment."""
        if self.family == "whisper":
            mels = [whisper_log_mel(s, self._mel_filters, n_fft=self._n_fft, hop_length=self._hop) for s in segments]
            n_frames = np.asarray([m.shape[1] for m in mels], dtype=np.int64)
            batch = np.zeros((len(mels), mels[0].shape[0], int(n_frames.max())), dtype=np.float32)
            for i, mel in enumerate(mels):
                batch[i, :, : mel.shape[1]] = mel
            (features,) = self._session.run(None, {"log_mel": batch, "n_frames": n_frames})
            return features, [int(f - 1) // 2 + 1 for f in n_frames]
        values = [_zero_mean_unit_var(s) if self._normalize else s for s in segments]
        lengths = np.asarray([v.shape[0] for v in values], dtype=np.int64)
        batch = np.zeros((len(values), int(lengths.max())), dtype=np.float32)
        for i, v in enumerate(values):
            batch[i, : v.shape[0]] = v
        feeds = {"input_values": batch}
        if "n_samples" in self._input_names:
            feeds["n_samples"] = lengths
        (features,) = self._session.run(None, feeds)
        return features, [ssl_frames(int(n), self._kernels, self._strides) for n in lengths]
