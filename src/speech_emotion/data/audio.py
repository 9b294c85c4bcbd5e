"""Decode audio files into mono float32 signals at the model's sampling rate.

:func:`load_audio` decodes a whole clip; :func:`stream_audio` decodes a recording of any
length block by block. Both refuse the same files for the same reasons (missing, empty,
undecodable, truncated, NaN/inf samples).

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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speech_emotion.errors import AudioError

SAMPLING_RATE = 16000
"""Sampling rate in Hz that every encoder receives."""

MIN_DURATION = 0.25
"""Shortest accepted clip, in seconds."""

SILENCE_PEAK = 1e-5
"""Peak amplitude below which a signal is digital silence (-100 dBFS): a dead channel, not speech."""

BLOCK_SECONDS = 10.0
"""Seconds of audio :func:`stream_audio` decodes and resamples at a time."""

_NO_SAMPLES = "empty: the file holds no samples"


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
    sound = _open_audio(path)
    try:
        with sound:
            data = sound.read(sound.frames, dtype="float32", always_2d=True)  # the header's count, as sf.read
            file_rate = sound.samplerate
    except Exception as error:  # libsndfile raises several types for bad files
        raise _undecodable(path, error) from error
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
        raise AudioError(path, _NO_SAMPLES)
    _check_finite(data, path)
    duration = data.shape[0] / file_rate
    if duration < min_duration:
        raise AudioError(path, f"too short: {duration:.3f} s, expected at least {min_duration} s")
    signal = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if float(np.abs(signal).max()) < SILENCE_PEAK:
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


def audio_duration(path: str | Path) -> float:
    """Duration of an audio file in seconds, from its header (nothing is decoded).

    Raises:
        AudioError: the file is missing or not audio that libsndfile reads.
    """
    try:
        return float(sf.info(str(path)).duration)
    except Exception as error:  # libsndfile raises several types for bad files
        raise AudioError(
            path, f"cannot read the audio header ({_short(error)}); is the file truncated or not audio?"
        ) from error


def stream_audio(path: str | Path, *, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Decode a file block by block as mono float32 at 16 kHz.

    Args:
        path: audio file in any format libsndfile reads.
        block_seconds: seconds of the file decoded at a time.

    Yields:
        1-D float32 arrays at 16 kHz whose concatenation is the whole recording.

    Raises:
        AudioError: missing, empty, undecodable, truncated, or NaN/inf samples, as
            :func:`load_audio`; the message names the file, the reason and, for a failure
            mid-file, the time.

    Example:
        >>> import numpy as np, soundfile as sf, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
        >>> sf.write(path, np.zeros((48000 * 25, 2), dtype=np.float32), 48000)
        >>> lengths = [len(block) for block in stream_audio(path)]
        >>> len(lengths), sum(lengths)  # 25 s at 48 kHz stereo → 16 kHz mono, in 10 s blocks
        (3, 400000)
    """
    path = Path(path)
    with _open_audio(path) as sound:
        check_complete(path)
        file_rate = sound.samplerate
        resampler = (
            soxr.ResampleStream(file_rate, SAMPLING_RATE, 1, dtype="float32", quality="HQ")
            if file_rate != SAMPLING_RATE
            else None
        )
        block_frames = max(1, int(block_seconds * file_rate))
        position = 0
        while True:
            try:
                data = sound.read(block_frames, dtype="float32", always_2d=True)
            except Exception as error:
                raise _undecodable(path, error, after=position / file_rate) from error
            last = data.shape[0] < block_frames
            _check_finite(data, path, position=position, file_rate=file_rate)
            position += data.shape[0]
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if resampler is not None:
                mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
            if mono.shape[0]:
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break
        if position == 0:
            raise AudioError(path, _NO_SAMPLES)


class StreamBuffer:
    """The recent part of a 16 kHz stream: append blocks at the end, drop from the start, slice by time.

    Attributes:
        data: the samples held, float32.
        offset: index in the whole stream of ``data[0]``.

    Example:
        >>> buffer = StreamBuffer()
        >>> buffer.append(np.ones(32000, dtype=np.float32))
        >>> buffer.drop_before(1.5)
        >>> buffer.offset, buffer.end, buffer.slice(1.0, 1.75).shape  # audio before 1.5 s is gone
        (24000, 32000, (4000,))
    """

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.float32)
        self.offset = 0

    @property
    def end(self) -> int:
        """Index in the whole stream of the sample after the last one held."""
        return self.offset + self.data.shape[0]

    def append(self, block: np.ndarray) -> None:
        """Add the samples that follow the last ones held."""
        self.data = np.concatenate([self.data, block])

    def slice(self, start: float, end: float) -> np.ndarray:
        """A copy of the samples held between ``start`` and ``end`` seconds."""
        a = max(int(round(start * SAMPLING_RATE)), self.offset)
        b = min(int(round(end * SAMPLING_RATE)), self.end)
        return self.data[a - self.offset : max(a, b) - self.offset].copy()

    def drop_before(self, seconds: float) -> None:
        """Forget the samples before ``seconds``."""
        keep = int(seconds * SAMPLING_RATE) - self.offset
        if keep > 0:
            self.data = self.data[keep:].copy()
            self.offset += keep


def _open_audio(path: Path) -> sf.SoundFile:
    """Open a file for decoding, after the checks that every reader makes first."""
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty: the file is 0 bytes")
    try:
        return sf.SoundFile(str(path))
    except Exception as error:  # libsndfile raises several types for bad files
        raise _undecodable(path, error) from error


def _undecodable(path: Path, error: Exception, *, after: float | None = None) -> AudioError:
    if after is None:
        return AudioError(path, f"cannot decode audio ({_short(error)}); is the file truncated or not audio?")
    return AudioError(path, f"cannot decode audio after {after:.1f} s ({_short(error)}); is the file truncated?")


def _check_finite(
    data: np.ndarray, path: str | Path, *, position: int | None = None, file_rate: int | None = None
) -> None:
    """Refuse NaN or infinite samples in ``(n, channels)`` data.

    Given the ``position`` (in frames) of ``data`` in a file read at ``file_rate``, the message
    says when the first bad sample is.
    """
    finite = np.isfinite(data)
    if finite.all():
        return
    where = ""
    if position is not None and file_rate is not None:
        first = int(np.flatnonzero(~finite.all(axis=1))[0])
        where = f" at {(position + first) / file_rate:.3f} s"
    raise AudioError(path, f"holds NaN or infinite samples{where}")


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
