"""Decode audio files into mono float32 signals at the model's sampling rate.

Example:
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
    >>> t = np.arange(48000) / 48000
    >>> sf.write(path, np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 48000)
    >>> signal, sampling_rate = load_audio(path)
    >>> signal.shape, signal.dtype, sampling_rate
    ((16000,), dtype('float32'), 16000)
"""

from __future__ import annotations

import hashlib
import math
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speech_emotion.errors import AudioError

SAMPLING_RATE = 16000
"""Sampling rate in Hz that every encoder receives."""

MIN_DURATION = 0.25
"""Shortest accepted clip, in seconds."""

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au"})
"""File extensions treated as audio when a folder is scanned."""

_SILENCE_PEAK = 1e-5  # below -100 dBFS every sample: a dead channel, not speech


def load_audio(
    path: str | Path,
    *,
    sampling_rate: int = SAMPLING_RATE,
    min_duration: float = MIN_DURATION,
) -> tuple[np.ndarray, int]:
    """Decode a file, downmix to mono and resample.

    Args:
        path: audio file in any format libsndfile reads (WAV, FLAC, OGG, MP3, ...).
        sampling_rate: target rate in Hz; other rates are resampled with soxr.
        min_duration: shortest accepted duration in seconds.

    Returns:
        ``(signal, sampling_rate)``: a 1-D float32 array in [-1, 1] and the rate in Hz.

    Raises:
        AudioError: the file is missing, unreadable, empty, truncated (a WAV
            holding fewer bytes than its header declares, an Ogg stream without
            its end page), shorter than ``min_duration``, silent, or holds NaN/inf
            samples. The message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty: the file is 0 bytes")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises several types for bad files
        raise AudioError(path, f"cannot decode audio ({_short(error)}); is the file truncated or not audio?") from error
    check_complete(path)
    return check_signal(data, file_rate, path=path, sampling_rate=sampling_rate, min_duration=min_duration)


def check_signal(
    data: np.ndarray,
    file_rate: int,
    *,
    path: str | Path = "<array>",
    sampling_rate: int = SAMPLING_RATE,
    min_duration: float = MIN_DURATION,
) -> tuple[np.ndarray, int]:
    """Validate and convert an in-memory signal as :func:`load_audio` does.

    Args:
        data: samples, shape ``(n,)`` or ``(n, channels)``.
        file_rate: sampling rate of ``data`` in Hz.
        path: name used in error messages.
        sampling_rate: target rate in Hz.
        min_duration: shortest accepted duration in seconds.

    Returns:
        ``(signal, sampling_rate)`` as :func:`load_audio`.

    Raises:
        AudioError: empty, too short, silent or non-finite input.

    Example:
        >>> import numpy as np
        >>> check_signal(np.zeros(100), 16000)
        Traceback (most recent call last):
        ...
        speech_emotion.errors.AudioError: <array>: too short: 0.006 s, expected at least 0.25 s
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise AudioError(path, f"expected samples of shape (n,) or (n, channels), got {data.shape}")
    if data.shape[0] == 0:
        raise AudioError(path, "empty: the file holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "holds NaN or infinite samples")
    duration = data.shape[0] / file_rate
    if duration < min_duration:
        raise AudioError(path, f"too short: {duration:.3f} s, expected at least {min_duration} s")
    signal = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if float(np.abs(signal).max()) < _SILENCE_PEAK:
        raise AudioError(path, "silent: every sample is below -100 dBFS")
    if file_rate != sampling_rate:
        signal = soxr.resample(signal, file_rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(signal, dtype=np.float32), sampling_rate


def split_windows(signal: np.ndarray, max_window: int) -> list[np.ndarray]:
    """Split a signal into equal windows of at most ``max_window`` samples.

    Every encoder path (PyTorch and ONNX) windows long inputs this one way.

    Example:
        >>> [len(w) for w in split_windows(np.zeros(10), 4)]
        [4, 4, 2]
    """
    n = signal.shape[0]
    if n <= max_window:
        return [signal]
    n_windows = math.ceil(n / max_window)
    size = math.ceil(n / n_windows)
    return [signal[start : start + size] for start in range(0, n, size)]


def audio_hash(signal: np.ndarray) -> str:
    """Content hash of decoded samples, independent of file name and container.

    Samples are quantised to 16 bits first, so a lossless re-encoding of the same
    recording (WAV → FLAC) hashes the same.

    Example:
        >>> import numpy as np
        >>> audio_hash(np.zeros(4, dtype=np.float32))[:12]
        'af5570f5a181'
    """
    quantised = np.round(np.clip(signal, -1.0, 1.0) * 32767).astype("<i2")
    return hashlib.sha256(quantised.tobytes()).hexdigest()


def check_complete(path: Path) -> None:
    """Refuse a WAV or Ogg file cut short, which libsndfile would quietly read in part.

    A truncated FLAC fails to decode; a truncated WAV or Ogg decodes to the samples that
    remain. WAV: the data chunk holds fewer bytes than its header declares (sizes 0 and
    0xFFFFFFFF are placeholders left by streaming writers, not truncation). Ogg: the last
    page lacks the end-of-stream flag.
    """
    with open(path, "rb") as stream:
        header = stream.read(12)
        file_size = path.stat().st_size
        if header[:4] == b"OggS":
            stream.seek(max(0, file_size - 65536))
            tail = stream.read()
            last = tail.rfind(b"OggS")
            if last < 0 or last + 5 >= len(tail) or not tail[last + 5] & 0x04:
                raise AudioError(
                    path, "truncated: the Ogg stream ends without its end-of-stream page; re-export or re-copy the file"
                )
            return
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        offset = 12
        while offset + 8 <= file_size:
            stream.seek(offset)
            chunk_id, size = struct.unpack("<4sI", stream.read(8))
            if chunk_id == b"data":
                available = file_size - offset - 8
                if size not in (0, 0xFFFFFFFF) and size > available:
                    raise AudioError(
                        path,
                        f"truncated: the WAV header declares {size} bytes of samples, the file holds {available}; "
                        "re-export or re-copy the file",
                    )
                return
            offset += 8 + size + (size & 1)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
