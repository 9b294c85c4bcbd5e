"""What every encoder path does to signals before and after the network, in numpy alone.

The PyTorch encoders (:mod:`speech_emotion.features.encoders`) and the ONNX Runtime encoder
(:class:`~speech_emotion.features.encoders.onnx.OnnxEncoder`) share these steps, so that the
two paths check inputs, window long clips, batch and pool the same way:

- :func:`check_encoder_input`: a signal as a 1-D float32 array of at least ``min_samples``
  finite samples, or a ValueError that says which signal and why;
- :func:`split_segments`: long signals cut into equal windows (:func:`~speech_emotion.data.audio.split_windows`);
- :func:`plan_batches`: segments sorted by length and grouped into forward passes;
- :func:`ssl_min_samples` / :func:`ssl_frames`: the convolutional front end of a wav2vec 2.0-family model;
- :func:`pool_mean_std`: per-layer mean and standard deviation over frames;
- :func:`merge_window_stats`: per-window statistics merged into those of the whole clip.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE, split_windows

Segment = tuple[int, int, np.ndarray]
"""``(signal index, window index, samples)``: one window of one signal, the unit of a forward pass."""


def check_encoder_input(signal: Any, *, name: str, min_samples: int = 1) -> np.ndarray:
    """``signal`` as a contiguous 1-D float32 array, or a ValueError naming the problem.

    Args:
        signal: 1-D float array at 16 kHz (a numpy array, a list, or a torch tensor).
        name: How the signal is named in errors, e.g. ``"signals[3]"``.
        min_samples: Fewest samples the encoder accepts (at least 1).

    Returns:
        The signal as a contiguous float32 array (the input itself when it already is one).

    Raises:
        ValueError: The signal is not 1-D, not float, shorter than ``min_samples`` or holds
            NaN or infinite values.

    Example:
        >>> check_encoder_input([0.0, 0.5], name="signals[0]").dtype
        dtype('float32')
        >>> check_encoder_input(np.zeros(10), name="signals[1]", min_samples=400)
        Traceback (most recent call last):
        ...
        ValueError: signals[1]: expected at least 400 samples (0.025 s at 16000 Hz), got 10; drop or pad ...
    """
    # A tensor can only arrive when torch is already imported, so looking it up never imports torch.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(signal, torch.Tensor):
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
    shortest = max(1, min_samples)
    if array.shape[0] < shortest:
        raise ValueError(
            f"{name}: expected at least {shortest} samples "
            f"({shortest / SAMPLING_RATE:.3f} s at {SAMPLING_RATE} Hz), got {array.shape[0]}; "
            "drop or pad clips this short"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if n_bad:
        raise ValueError(f"{name}: expected finite samples, got {n_bad} NaN or infinite values")
    return array


def split_segments(signals: Sequence[np.ndarray], max_window: int) -> tuple[list[Segment], list[int]]:
    """Every window of every signal, in order, and the number of windows per signal.

    Args:
        signals: 1-D arrays.
        max_window: Longest window in samples (:func:`~speech_emotion.data.audio.split_windows`).

    Returns:
        ``(segments, n_windows)``: ``(signal index, window index, samples)`` for each window,
        and for each signal how many windows it was cut into.

    Example:
        >>> segments, n_windows = split_segments([np.zeros(10), np.zeros(3)], 4)
        >>> [(i, w, len(samples)) for i, w, samples in segments], n_windows
        ([(0, 0, 4), (0, 1, 4), (0, 2, 2), (1, 0, 3)], [3, 1])
    """
    segments: list[Segment] = []
    n_windows = []
    for i, signal in enumerate(signals):
        windows = split_windows(signal, max_window)
        n_windows.append(len(windows))
        segments.extend((i, w, window) for w, window in enumerate(windows))
    return segments, n_windows


def plan_batches(
    lengths: Sequence[int], *, batch_seconds: float, can_pad: bool, one_per_batch: bool = False
) -> list[list[int]]:
    """Group segments, given by their lengths in samples, into forward passes.

    Segments are sorted by length (ties in input order); a batch grows while its padded size,
    ``longest length × number of segments``, stays within ``batch_seconds`` of 16 kHz audio.
    A segment longer than the budget still gets a batch of its own.

    Args:
        lengths: Length in samples of each segment.
        batch_seconds: Padded audio seconds per forward pass.
        can_pad: False for models whose output changes when a segment is padded: they only
            batch segments of exactly equal length.
        one_per_batch: One segment per forward pass (int8 ONNX encoders, whose dynamic
            quantization scales activations by the range of the whole batch).

    Returns:
        Batches of segment indices, shortest segments first.

    Raises:
        ValueError: ``batch_seconds`` is not positive.

    Example:
        >>> plan_batches([8000, 16000, 8000, 4000], batch_seconds=1.5, can_pad=True)  # 24000 samples a batch
        [[3, 0, 2], [1]]
        >>> plan_batches([8000, 16000, 8000, 4000], batch_seconds=1.5, can_pad=False)  # equal lengths only
        [[3], [0, 2], [1]]
        >>> plan_batches([8000, 8000], batch_seconds=30.0, can_pad=True, one_per_batch=True)
        [[0], [1]]
    """
    budget = batch_seconds * SAMPLING_RATE
    if not budget > 0:
        raise ValueError(f"batch_seconds: expected a positive number of seconds, got {batch_seconds}")
    order = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    batches: list[list[int]] = []
    batch: list[int] = []
    for position, s in enumerate(order):
        batch.append(s)
        if position < len(order) - 1 and not one_per_batch:
            next_len = lengths[order[position + 1]]
            fits = next_len * (len(batch) + 1) <= budget
            if not can_pad:
                fits = fits and next_len == lengths[s]
            if fits:
                continue
        batches.append(batch)
        batch = []
    return batches


def ssl_min_samples(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Shortest input, in samples, that gives one frame through an SSL model's convolutional front end.

    Args:
        kernels: ``conv_kernel`` of the model's config, first layer first.
        strides: ``conv_stride`` of the model's config.

    Example:
        >>> ssl_min_samples([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])  # wav2vec 2.0: 25 ms
        400
    """
    length = 1
    for kernel, stride in reversed(list(zip(kernels, strides))):
        length = (length - 1) * int(stride) + int(kernel)
    return length


def ssl_frames(n_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Frames out of an SSL model's convolutional front end for ``n_samples`` input samples.

    Args:
        n_samples: Input length in samples (at least :func:`ssl_min_samples`).
        kernels: ``conv_kernel`` of the model's config, first layer first.
        strides: ``conv_stride`` of the model's config.

    Example:
        >>> ssl_frames(16000, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])  # 20 ms frames
        49
    """
    length = int(n_samples)
    for kernel, stride in zip(kernels, strides):
        length = (length - int(kernel)) // int(stride) + 1
    return length


def pool_mean_std(frames: np.ndarray) -> np.ndarray:
    """Mean over frames followed by standard deviation over frames (ddof 0), per layer.

    float32 throughout, the std from centred frames (relative error ~1e-6): a third of the
    time of float64 reductions, which cost ~5% of Whisper-base's forward pass on a clip.

    Args:
        frames: float32 array ``(n_layers, n_frames, hidden)``.

    Returns:
        float32 array ``(n_layers, 2 * hidden)``.

    Example:
        >>> pool_mean_std(np.array([[[1.0, 2.0], [3.0, 2.0]]], dtype=np.float32)).tolist()
        [[2.0, 2.0, 1.0, 0.0]]
    """
    mean = frames.mean(axis=1, dtype=np.float32)
    centred = frames - mean[:, None, :]
    np.square(centred, out=centred)
    return np.concatenate([mean, np.sqrt(centred.mean(axis=1))], axis=1).astype(np.float32, copy=False)


def merge_window_stats(parts: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Statistics over all frames of a clip from those of its windows.

    Args:
        parts: Per window, in any order, ``(pooled, n_frames)``: the window's
            :func:`pool_mean_std` output ``(n_layers, 2 * hidden)`` and its number of frames.

    Returns:
        float32 ``(n_layers, 2 * hidden)``: mean and std (ddof 0) over the frames of every
        window, computed in float64. A single window is returned as it is.

    Example:
        >>> a = np.array([[[1.0], [1.0], [1.0]]], dtype=np.float32)  # one layer, 3 frames, hidden 1
        >>> b = np.array([[[5.0], [5.0], [5.0]]], dtype=np.float32)
        >>> merge_window_stats([(pool_mean_std(a), 3), (pool_mean_std(b), 3)]).tolist()  # each window's std is 0
        [[3.0, 2.0]]
    """
    if len(parts) == 1:
        return parts[0][0]
    hidden = parts[0][0].shape[-1] // 2
    means = np.stack([p[0][:, :hidden] for p in parts]).astype(np.float64)
    stds = np.stack([p[0][:, hidden:] for p in parts]).astype(np.float64)
    counts = np.asarray([p[1] for p in parts], dtype=np.float64)[:, None, None]
    total = counts.sum()
    mean = (counts * means).sum(axis=0) / total
    var = (counts * (stds**2 + (means - mean) ** 2)).sum(axis=0) / total
    return np.concatenate([mean, np.sqrt(var)], axis=1).astype(np.float32)
