"""Backends behind :class:`~speech_emotion.inference.predictor.Predictor`: PyTorch and ONNX Runtime.

A backend holds what a predictor needs: ``meta`` (the model's
:class:`~speech_emotion.model.metadata.BundleMeta`) and ``path`` (its folder), ``encoder``
(``features(signals)`` → pooled per-layer features, plus the ``fingerprint``/``preprocessing``
the feature store keys on) and ``predict_features(X)`` → probabilities with the model's
temperature. Which backend a folder needs is written in its ``model.json`` (``kind``).

- :class:`TorchBackend`: a bundle made by ``ser train`` (``model.safetensors``) and the
  encoder it names, loaded with torch and transformers.
- :class:`OnnxBackend`: a folder made by ``ser export --format onnx``. It runs with
  onnxruntime, numpy, soundfile and soxr alone: torch and transformers are never imported
  (the Whisper log-mel spectrogram is computed here in numpy, equal to
  ``WhisperEncoder.log_mel`` to float rounding).

This module imports neither torch nor onnxruntime at import time.

Example:
    >>> import numpy as np
    >>> filters = np.zeros((201, 80), dtype=np.float32); filters[10:20, :] = 1.0
    >>> whisper_log_mel(np.zeros(16000, dtype=np.float32) + 0.1, filters).shape  # (n_mels, ceil(n / hop))
    (80, 100)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.data.audio import split_windows
from speech_emotion.errors import BundleError
from speech_emotion.model.metadata import META_FILE, BundleMeta, EncoderRef

log = logging.getLogger(__name__)

SAMPLING_RATE = 16000
"""Sampling rate in Hz that every encoder expects."""

ENCODER_FILE = "encoder.onnx"
HEAD_FILE = "head.onnx"
MEL_FILTERS_FILE = "mel_filters.npy"


WAIT_POLICY = "OMP_WAIT_POLICY"
"""Environment variable for how idle compute threads wait: ``PASSIVE`` (the default set here)
or ``ACTIVE`` (spin). It must be set before torch is imported to reach torch's OpenMP threads;
ONNX Runtime reads it for every session (``allow_spinning``)."""


def use_passive_waiting() -> None:
    """Make idle compute threads sleep rather than spin, unless ``OMP_WAIT_POLICY`` is set.

    On a machine busy with other work, spinning threads take the CPU from the threads doing
    the work: at a load of 10 on 2 cores, Whisper-base went from 0.9 to 4 clips/s with torch
    and from 3.1 to 4–5 clips/s with ONNX Runtime. Set ``OMP_WAIT_POLICY=ACTIVE`` to spin.
    Reaches torch only when called before torch is imported (``ser`` does so at start-up).
    """
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def _passive_waiting() -> bool:
    return os.environ.get(WAIT_POLICY, "PASSIVE").strip().upper() != "ACTIVE"


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


class TorchBackend:
    """A ``ser train`` bundle (head in safetensors) and its frozen encoder, run with PyTorch.

    Args:
        bundle: a loaded :class:`~speech_emotion.model.bundle.Bundle`.
        encoder: the frozen :class:`~speech_emotion.features.encoders.Encoder` it was trained on.
    """

    name = "torch"

    def __init__(self, bundle: Any, encoder: Any):
        self.bundle = bundle
        self.meta: BundleMeta = bundle.meta
        self.path: Path = bundle.path
        self.encoder = encoder

    @classmethod
    def load(
        cls, model: str | Path, *, encoder: str | None = None, allow_encoder_mismatch: bool = False
    ) -> TorchBackend:
        """Load a bundle and the encoder it names, checking fingerprint and preprocessing.

        Raises:
            BundleError: bundle invalid, encoder not found, or fingerprint mismatch.
        """
        use_passive_waiting()  # before torch is first imported
        from speech_emotion.model.bundle import load_bundle

        threads = _env_threads()
        if threads:
            import torch

            torch.set_num_threads(threads)
        bundle = load_bundle(model)
        loaded = _load_recorded_encoder(bundle.meta.encoder, bundle.path, encoder)
        recorded = bundle.meta.encoder
        if loaded.fingerprint != recorded.fingerprint or loaded.preprocessing != (
            bundle.meta.preprocessing or loaded.preprocessing
        ):
            message = (
                f"{bundle.path}: encoder {loaded.reference!r} has fingerprint {loaded.fingerprint[:12]}…, but the "
                f"model was trained on {recorded.reference!r} with fingerprint {str(recorded.fingerprint)[:12]}… "
                "(other weights, config or preprocessing)"
            )
            if not allow_encoder_mismatch:
                raise BundleError(
                    f"{message}; pass the original encoder, or allow_encoder_mismatch=True (--allow-encoder-mismatch) "
                    "to force it"
                )
            log.warning(message + "; continuing because the mismatch was allowed")
        return cls(bundle, loaded)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled features (n, n_layers, dim)."""
        from speech_emotion.model.head import predict_proba

        return predict_proba(self.bundle.head, features, temperature=self.meta.temperature)


def _load_recorded_encoder(recorded: EncoderRef, bundle: Path, given: str | None):
    """The encoder a bundle names: ``given`` if any, else the one inside the bundle, else the recorded folder or id.

    Raises:
        BundleError: none of them loads (every attempt's error is listed).
    """
    from speech_emotion.features.encoders import load_encoder

    inside = recorded.bundled_folder(bundle)  # a fine-tuned encoder travels inside the bundle
    if given:
        candidates = [given]
    elif inside is not None:
        candidates = [str(inside)]
    else:
        candidates = [c for c in (recorded.path, recorded.reference) if c]
    errors = []
    for candidate in candidates:
        try:
            return load_encoder(candidate)
        except (OSError, ValueError) as error:
            errors.append(f"{candidate}: {error}")
    raise BundleError(
        f"{bundle}: cannot load the encoder this model was trained on:\n  "
        + "\n  ".join(errors)
        + "\npass encoder=... (--encoder) pointing to a copy of it"
    )


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if _passive_waiting():
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _ssl_frames(n_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Frames out of an SSL model's convolutional front end for ``n_samples`` input samples."""
    length = n_samples
    for kernel, stride in zip(kernels, strides):
        length = (length - kernel) // stride + 1
    return length


def _merge_pooled(parts: list[tuple[np.ndarray, int]], hidden: int) -> np.ndarray:
    """Combine per-window (mean ‖ std, n_frames) into the statistics over all frames."""
    if len(parts) == 1:
        return parts[0][0]
    means = np.stack([p[0][:, :hidden] for p in parts]).astype(np.float64)
    stds = np.stack([p[0][:, hidden:] for p in parts]).astype(np.float64)
    counts = np.asarray([p[1] for p in parts], dtype=np.float64)[:, None, None]
    total = counts.sum()
    mean = (counts * means).sum(axis=0) / total
    var = (counts * (stds**2 + (means - mean) ** 2)).sum(axis=0) / total
    return np.concatenate([mean, np.sqrt(var)], axis=1).astype(np.float32)


class OnnxEncoder:
    """``encoder.onnx`` of an ONNX export: 16 kHz signals → pooled per-layer statistics.

    The same interface as the PyTorch encoders for ``features`` (sorted, length-bucketed
    batches; results in input order; inputs over ``max_window_s`` encoded in equal windows
    whose statistics are merged). ``fingerprint`` is the sha256 of ``encoder.onnx``, so the
    feature store never mixes its features with the PyTorch encoder's. A quantized encoder
    runs one clip per forward pass: its dynamic quantization scales activations by the range
    of the whole batch, which would make a clip's result depend on its neighbours.
    """

    def __init__(self, folder: Path, meta: dict, *, fingerprint: str, threads: int | None = None):
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
        # int8 dynamic quantization scales activations by each batch's range: one clip per
        # forward pass keeps a clip's result independent of the clips it is batched with.
        self.quantization = str(onnx_meta.get("quantization", "none"))
        self._one_per_batch = self.quantization != "none"
        self._session = _session(folder / ENCODER_FILE, threads)
        self._input_names = [i.name for i in self._session.get_inputs()]
        if self.family == "whisper":
            self._n_fft = int(self.preprocessing["n_fft"])
            self._hop = int(self.preprocessing["hop_length"])
            self._mel_filters = np.load(folder / MEL_FILTERS_FILE, allow_pickle=False)
            self.min_samples = 1
            self._can_pad = True
        else:
            self._kernels = [int(k) for k in self.input["conv_kernel"]]
            self._strides = [int(s) for s in self.input["conv_stride"]]
            self._normalize = bool(self.input["do_normalize"])
            self._can_pad = bool(self.input["masked"])
            length = 1
            for kernel, stride in reversed(list(zip(self._kernels, self._strides))):
                length = (length - 1) * stride + kernel
            self.min_samples = length

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

        Raises:
            ValueError: a signal is not 1-D float, is too short or not finite.
        """
        checked = [_check_signal(s, name=f"signals[{i}]", min_samples=self.min_samples) for i, s in enumerate(signals)]
        max_window = int(self.max_window_s * SAMPLING_RATE)
        segments: list[tuple[int, np.ndarray]] = []
        n_windows = []
        for i, signal in enumerate(checked):
            windows = split_windows(signal, max_window)
            n_windows.append(len(windows))
            segments.extend((i, w) for w in windows)
        budget = (self.default_batch_seconds if batch_seconds is None else batch_seconds) * SAMPLING_RATE
        if budget <= 0:
            raise ValueError(f"batch_seconds: expected a positive number of seconds, got {batch_seconds}")
        order = sorted(range(len(segments)), key=lambda s: (len(segments[s][1]), s))
        parts: dict[int, list[tuple[np.ndarray, int]]] = {}
        pooled: list[np.ndarray | None] = [None] * len(checked)
        batch: list[int] = []
        for position, s in enumerate(order):
            batch.append(s)
            if position < len(order) - 1:
                next_len = len(segments[order[position + 1]][1])
                fits = next_len * (len(batch) + 1) <= budget
                if not self._can_pad:
                    fits = fits and next_len == len(segments[s][1])
                if fits and not self._one_per_batch:
                    continue
            outputs, counts = self._run([segments[b][1] for b in batch])
            n_done = 0
            for b, out, count in zip(batch, outputs, counts):
                index = segments[b][0]
                parts.setdefault(index, []).append((out, count))
                if len(parts[index]) == n_windows[index]:
                    pooled[index] = _merge_pooled(parts.pop(index), self.hidden_size)
                    n_done += 1
            batch = []
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
        return features, [_ssl_frames(int(n), self._kernels, self._strides) for n in lengths]


def _zero_mean_unit_var(signal: np.ndarray) -> np.ndarray:
    """Per-clip normalisation of the wav2vec 2.0 feature extractor (``do_normalize``)."""
    return ((signal - signal.mean()) / np.sqrt(signal.var() + 1e-7)).astype(np.float32)


def _check_signal(signal: Any, *, name: str, min_samples: int) -> np.ndarray:
    """``signal`` as a contiguous 1-D float32 array, or a ValueError naming the problem."""
    array = np.asarray(signal)
    if array.ndim != 1:
        raise ValueError(
            f"{name}: expected a 1-D array (mono, {SAMPLING_RATE} Hz), got shape {array.shape}; downmix to mono first"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"{name}: expected float samples in [-1, 1], got dtype {array.dtype}; convert integer PCM with signal / "
            "32768"
        )
    if array.shape[0] < max(1, min_samples):
        raise ValueError(
            f"{name}: expected at least {max(1, min_samples)} samples ({max(1, min_samples) / SAMPLING_RATE:.3f} s at "
            f"{SAMPLING_RATE} Hz), got {array.shape[0]}; drop or pad clips this short"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: expected finite samples, got NaN or infinite values")
    return array


class OnnxBackend:
    """A folder written by ``ser export --format onnx``, run with ONNX Runtime (no torch).

    Args:
        folder: the export folder (``model.json``, ``encoder.onnx``, ``head.onnx`` and, for
            Whisper, ``mel_filters.npy``).
        threads: ONNX Runtime intra-op threads (default: ``SER_THREADS`` or ONNX Runtime's
            choice, one per physical core). Idle threads sleep unless ``OMP_WAIT_POLICY=ACTIVE``.
    """

    name = "onnx"

    def __init__(self, folder: str | Path, *, threads: int | None = None):
        self.meta, self.path = BundleMeta.read(folder)
        if self.meta.kind != "onnx":
            raise BundleError(
                f"{self.path / META_FILE}: a model of kind {self.meta.kind!r}, not an ONNX export; export it with "
                "`ser export --format onnx`, or load it with Predictor.from_pretrained"
            )
        threads = threads or _env_threads()
        hashes = _check_files(self.path, self.meta.onnx)
        self.encoder = OnnxEncoder(self.path, self.meta.to_dict(), fingerprint=hashes[ENCODER_FILE], threads=threads)
        self._head = _session(self.path / HEAD_FILE, 1)
        n_outputs = self._head.get_outputs()[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != self.meta.n_classes:
            raise BundleError(
                f"Cannot assign {self.meta.n_classes} labels to a head with {n_outputs} outputs "
                f"({self.path / HEAD_FILE})"
            )

    @classmethod
    def load(
        cls, model: str | Path, *, encoder: str | None = None, allow_encoder_mismatch: bool = False
    ) -> "OnnxBackend":
        """Load an ONNX export; ``encoder`` cannot apply (the encoder is inside the export)."""
        if encoder:
            raise BundleError(
                f"{model}: an ONNX export carries its encoder ({ENCODER_FILE}); encoder=... (--encoder) applies to "
                "models made by `ser train` only — drop it, or pass the run folder instead of the export"
            )
        return cls(model)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled features (n, n_layers, dim) through ``head.onnx``."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        expected = (self.encoder.n_layers, self.encoder.dim)
        if features.ndim != 3 or features.shape[1:] != expected:
            raise ValueError(f"expected features of shape (n, {expected[0]}, {expected[1]}), got {features.shape}")
        if not len(features):
            return np.zeros((0, self.meta.n_classes), dtype=np.float32)
        return self._head.run(None, {"features": features})[0]


def _env_threads() -> int | None:
    value = os.environ.get("SER_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def _check_files(folder: Path, onnx: dict) -> dict[str, str]:
    """Every file listed under ``onnx.files`` exists and has its recorded sha256; returns the hashes."""
    files = onnx.get("files") or {}
    for required in (ENCODER_FILE, HEAD_FILE):
        if required not in files:
            raise BundleError(
                f"{folder / META_FILE}: onnx.files does not list {required}; re-export with `ser export --format onnx`"
            )
    hashes = {}
    for name, recorded in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise BundleError(f"{path}: missing; the ONNX export is incomplete (copy the whole folder)")
        actual = file_sha256(path)
        if actual != recorded.get("sha256"):
            raise BundleError(
                f"{path}: sha256 {actual[:12]}… differs from {str(recorded.get('sha256'))[:12]}… recorded in "
                f"{META_FILE} "
                "(the file was changed or replaced); re-export the model"
            )
        hashes[name] = actual
    return hashes
