"""Decode audio files into mono float32 signals at the model's sampling rate.

:func:`load_audio` decodes a whole clip; :func:`stream_audio` decodes a recording of any
length block by block. Both refuse the same files for the same reasons (missing, empty,
undecodable, truncated, NaN/inf samples, a name that is not UTF-8), and both hold every
file to :class:`DecodeLimits` from its header, before decoding: a small compressed file
cannot make them allocate gigabytes (see :class:`DecodeLimits`).

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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speech_emotion.data.completeness import check_complete
from speech_emotion.data.decode_limits import DecodeLimits
from speech_emotion.errors import AudioError, AudioLimitError, undecodable_name

SAMPLING_RATE = 16000
"""Sampling rate in Hz that every encoder receives."""

MIN_DURATION = 0.25
"""Shortest accepted clip, in seconds."""

SILENCE_PEAK = 1e-5
"""Peak amplitude below which a signal is digital silence (-100 dBFS): a dead channel, not speech."""

BLOCK_SECONDS = 10.0
"""Seconds of audio :func:`stream_audio` decodes and resamples at a time."""

DECODE_BLOCK_SAMPLES = 1 << 20
"""Samples (frames × channels) :func:`load_audio` decodes at a time before downmixing (4 MB as float32)."""

UNKNOWN_LENGTH = 1 << 62
"""Frame counts from here up mean "not declared": libsndfile reports its largest count for a stream
whose header has no length (a FLAC written to a pipe). Such files are decoded under the
``max_samples`` budget block by block, not trusted."""

_NO_SAMPLES = "empty: the file holds no samples"


def load_audio(
    path: str | Path,
    *,
    sampling_rate: int = SAMPLING_RATE,
    min_duration: float = MIN_DURATION,
    limits: DecodeLimits | None = None,
) -> tuple[np.ndarray, int]:
    """Decode a file, downmix to mono and resample.

    The header is held to ``limits`` first; the file is then decoded in blocks of
    :data:`DECODE_BLOCK_SAMPLES`, each downmixed at once, so decoding never holds more than
    the mono signal and one block.

    Args:
        path: audio file in any format libsndfile reads (WAV, FLAC, OGG, MP3, ...).
        sampling_rate: target rate in Hz; other rates are resampled with soxr.
        min_duration: shortest accepted duration in seconds.
        limits: sampling rate, channels and decoded size allowed (default :class:`DecodeLimits()`).

    Returns:
        ``(signal, sampling_rate)``: a 1-D float32 array in [-1, 1] and the rate in Hz.

    Raises:
        AudioLimitError: the header declares more than ``limits`` allow.
        AudioError: the file is missing, its name is not valid UTF-8, it is unreadable,
            empty, truncated (see :mod:`speech_emotion.data.completeness`; also a file
            that decodes to fewer frames than its header declares), shorter than
            ``min_duration``, silent, or holds NaN/inf samples. The message names the
            file and the reason.
    """
    path = Path(path)
    limits = limits or DecodeLimits()
    with _open_audio(path) as sound:
        frames, channels, file_rate = sound.frames, sound.channels, sound.samplerate
        declared = frames < UNKNOWN_LENGTH
        limits.check(
            path,
            frames=frames,
            channels=channels,
            sampling_rate=file_rate,
            streamed=not declared,
            resample_to=sampling_rate,
        )
        check_complete(path, frames=frames if declared else None)
        # A stream without a declared length is decoded up to the budget, before and after resampling.
        budget = min(limits.max_samples // channels, int(limits.max_samples * file_rate / sampling_rate))
        mono, first_bad = _decode_mono(sound, path, frames if declared else None, budget, limits)
        if declared and mono.shape[0] < frames and sound.format != "MP3":  # MP3: checked by check_complete
            raise _short_of_header(path, frames, mono.shape[0], file_rate)
    if first_bad is not None:
        raise AudioError(path, "holds NaN or infinite samples")
    return _finish(mono, file_rate, path=path, sampling_rate=sampling_rate, min_duration=min_duration)


def check_signal(
    data: np.ndarray,
    file_rate: int,
    *,
    path: str | Path = "<array>",
    sampling_rate: int = SAMPLING_RATE,
    min_duration: float = MIN_DURATION,
    limits: DecodeLimits | None = None,
) -> tuple[np.ndarray, int]:
    """Validate and convert an in-memory signal as :func:`load_audio` does.

    Args:
        data: float samples in [-1, 1], shape ``(n,)`` or ``(n, channels)``.
        file_rate: sampling rate of ``data`` in Hz.
        path: name used in error messages.
        sampling_rate: target rate in Hz.
        min_duration: shortest accepted duration in seconds.
        limits: sampling rate, channels and size allowed (default :class:`DecodeLimits()`).

    Returns:
        ``(signal, sampling_rate)`` as :func:`load_audio`.

    Raises:
        AudioLimitError: a rate that is not positive or over the limit, more channels than
            the limit (often an array of shape ``(channels, n)``), or too many samples.
        AudioError: integer samples (which would be read as amplitudes in the thousands),
            empty, too short, silent or non-finite input.

    Example:
        >>> import numpy as np
        >>> check_signal(np.zeros(100), 16000)
        Traceback (most recent call last):
        ...
        speech_emotion.errors.AudioError: <array>: too short: 0.006 s, expected at least 0.25 s
        >>> check_signal(np.zeros((2, 16000)), 16000)
        Traceback (most recent call last):
        ...
        speech_emotion.errors.AudioLimitError: <array>: 16000 channels, more than the limit of 8 (max_channels); ...
        an array of shape (channels, n)? pass it transposed, shape (n, channels)
    """
    data = np.asarray(data)
    if data.dtype.kind != "f" and data.size:
        raise AudioError(
            path,
            f"expected float samples in [-1, 1], got dtype {data.dtype}; convert integer PCM with signal / "
            f"{2 ** (8 * data.dtype.itemsize - 1)}",
        )
    data = data.astype(np.float32, copy=False)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise AudioError(path, f"expected samples of shape (n,) or (n, channels), got {data.shape}")
    try:
        (limits or DecodeLimits()).check(
            path, frames=data.shape[0], channels=data.shape[1], sampling_rate=file_rate, resample_to=sampling_rate
        )
    except AudioLimitError as error:
        if error.limit == "max_channels" and data.shape[0] < data.shape[1]:
            raise AudioLimitError(
                path,
                f"{error.reason}; an array of shape (channels, n)? pass it transposed, shape (n, channels)",
                limit=error.limit,
            ) from None
        raise
    if data.shape[0] == 0:
        raise AudioError(path, _NO_SAMPLES)
    _check_finite(data, path)
    signal = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return _finish(signal, file_rate, path=path, sampling_rate=sampling_rate, min_duration=min_duration)


def _decode_mono(
    sound: sf.SoundFile, path: Path, frames: int | None, budget: int, limits: DecodeLimits
) -> tuple[np.ndarray, int | None]:
    """The frames of an open file (``None``: as many as decode, up to ``budget`` frames), downmixed
    block by block; and the index of the first frame holding NaN or inf."""
    channels = sound.channels
    buffer = np.empty((max(1, DECODE_BLOCK_SAMPLES // channels), channels), dtype=np.float32)  # reused by every read
    mono = np.empty(frames if frames is not None else 0, dtype=np.float32)
    pieces: list[np.ndarray] = []  # blocks of a file of undeclared length
    position = 0
    first_bad = None
    while frames is None or position < frames:
        wanted = len(buffer) if frames is None else min(len(buffer), frames - position)
        try:
            data = sound.read(dtype="float32", always_2d=True, out=buffer[:wanted])
        except Exception as error:  # libsndfile raises several types for bad files
            raise _undecodable(path, error, after=position / sound.samplerate if position else None) from error
        n = data.shape[0]
        if n == 0:
            break
        if frames is None and position + n > budget:
            raise AudioLimitError(
                path,
                f"its header declares no length and it decodes to more than {limits.max_samples} samples "
                f"(max_samples, {budget / sound.samplerate:.1f} s here); label long "
                "recordings window by window (`ser predict --timeline`, streamed), split the file, or raise the limit",
                limit="max_samples",
            )
        if first_bad is None and not np.isfinite(data).all():
            first_bad = position + int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
        # Row by row the same mean as over the whole array: the decoded signal does not depend on the block size.
        downmixed = data.mean(axis=1) if channels > 1 else data[:, 0]
        if frames is None:
            pieces.append(downmixed.copy())
        else:
            mono[position : position + n] = downmixed
        position += n
        if n < wanted:
            break
    return (np.concatenate(pieces) if pieces else mono[:position]), first_bad


def _finish(
    signal: np.ndarray, file_rate: float, *, path: str | Path, sampling_rate: int, min_duration: float
) -> tuple[np.ndarray, int]:
    """The checks and conversion after downmixing: empty, too short, silent; resample."""
    if signal.shape[0] == 0:
        raise AudioError(path, _NO_SAMPLES)
    duration = signal.shape[0] / file_rate
    if duration < min_duration:
        raise AudioError(path, f"too short: {duration:.3f} s, expected at least {min_duration} s")
    if max(float(signal.max()), -float(signal.min())) < SILENCE_PEAK:  # the peak, without an |signal| copy
        raise AudioError(path, "silent: every sample is below -100 dBFS")
    if file_rate != sampling_rate:
        signal = soxr.resample(signal, file_rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(signal, dtype=np.float32), sampling_rate


def _short_of_header(path: Path, declared: int, decoded: int, file_rate: float) -> AudioError:
    return AudioError(
        path,
        f"truncated: the header declares {declared} frames ({declared / file_rate:.2f} s), the file decodes to "
        f"{decoded} ({decoded / file_rate:.2f} s); re-export or re-copy the file",
    )


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


def audio_duration(path: str | Path) -> float:
    """Duration of an audio file in seconds, from its header (nothing is decoded).

    Raises:
        AudioError: the file is missing, its name is not valid UTF-8, or it is not audio
            that libsndfile reads.
    """
    _check_name(Path(path))
    try:
        return float(sf.info(str(path)).duration)
    except Exception as error:  # libsndfile raises several types for bad files
        raise AudioError(
            path, f"cannot read the audio header ({_short(error)}); is the file truncated or not audio?"
        ) from error


def declared_duration(path: str | Path) -> float | None:
    """Duration in seconds that the header declares, or ``None`` when it declares no length.

    Raises:
        AudioError: as :func:`audio_duration`.

    Example:
        >>> import numpy as np, soundfile as sf, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
        >>> sf.write(path, np.zeros(24000), 16000)
        >>> declared_duration(path)
        1.5
    """
    _check_name(Path(path))
    try:
        info = sf.info(str(path))
    except Exception as error:  # libsndfile raises several types for bad files
        raise AudioError(
            path, f"cannot read the audio header ({_short(error)}); is the file truncated or not audio?"
        ) from error
    return info.frames / info.samplerate if 0 <= info.frames < UNKNOWN_LENGTH and info.samplerate > 0 else None


def stream_audio(
    path: str | Path, *, block_seconds: float = BLOCK_SECONDS, limits: DecodeLimits | None = None
) -> Iterator[np.ndarray]:
    """Decode a file block by block as mono float32 at 16 kHz.

    Args:
        path: audio file in any format libsndfile reads.
        block_seconds: seconds of the file decoded at a time.
        limits: sampling rate and channels allowed (default :class:`DecodeLimits()`); the
            length is not limited (``max_samples`` does not apply), each block is.

    Yields:
        1-D float32 arrays at 16 kHz whose concatenation is the whole recording.

    Raises:
        AudioLimitError: a sampling rate or channel count over ``limits``.
        AudioError: missing, empty, undecodable, truncated, or NaN/inf samples, as
            :func:`load_audio`; the message names the file, the reason and, for a failure
            mid-file, the time. A file that decodes to fewer frames than its header
            declares is refused after its last block.

    Example:
        >>> import numpy as np, soundfile as sf, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
        >>> sf.write(path, np.zeros((48000 * 25, 2), dtype=np.float32), 48000)
        >>> lengths = [len(block) for block in stream_audio(path)]
        >>> len(lengths), sum(lengths)  # 25 s at 48 kHz stereo → 16 kHz mono, in 10 s blocks
        (3, 400000)
    """
    path = Path(path)
    limits = limits or DecodeLimits()
    with _open_audio(path) as sound:
        limits.check(path, frames=sound.frames, channels=sound.channels, sampling_rate=sound.samplerate, streamed=True)
        check_complete(path, frames=sound.frames if sound.frames < UNKNOWN_LENGTH else None)
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
        if position < sound.frames < UNKNOWN_LENGTH and sound.format != "MP3":  # MP3: checked by check_complete
            raise _short_of_header(path, sound.frames, position, file_rate)


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
    _check_name(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty: the file is 0 bytes")
    try:
        return sf.SoundFile(str(path))
    except Exception as error:  # libsndfile raises several types for bad files
        raise _undecodable(path, error) from error


def _check_name(path: Path) -> None:
    """Refuse a path that is not valid UTF-8 (its bad bytes arrive as lone surrogates).

    libsndfile cannot open it by name, and every report, manifest and JSON line that
    names it would fail to write; saying so beats "not audio".
    """
    reason = undecodable_name(path)
    if reason is not None:
        raise AudioError(path, reason)


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
