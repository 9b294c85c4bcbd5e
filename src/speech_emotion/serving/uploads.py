"""An uploaded audio file → a checked 16 kHz signal, or an :class:`UploadError` with its HTTP status.

The server trusts nothing about an upload: its format is read from the first bytes (not
from the file name or the declared content type); its size, duration, sampling rate,
channel count and decoded size are held to :class:`ServeLimits` from the header, before
anything is decoded (:func:`check_upload`); decoding goes through
:func:`speech_emotion.data.audio.load_audio` with the server's
:class:`~speech_emotion.data.decode_limits.DecodeLimits`, in blocks, so no request decodes
more than ``max_samples``. ``ser predict`` uses the same loader, so both see the same samples.

Example:
    >>> import io, numpy as np, soundfile as sf
    >>> buffer = io.BytesIO()
    >>> sf.write(buffer, 0.1 * np.ones(8000, dtype=np.float32), 16000, format="WAV")
    >>> sniff_format(buffer.getvalue())
    'wav'
    >>> signal = decode_upload(buffer.getvalue(), limits=ServeLimits(), filename="clip.wav")
    >>> signal.shape, signal.dtype
    ((8000,), dtype('float32'))
    >>> decode_upload(b"", limits=ServeLimits(), filename="clip.wav")
    Traceback (most recent call last):
    ...
    speech_emotion.errors.UploadError: clip.wav: empty upload (0 bytes); send the audio file's bytes
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from speech_emotion.data.audio import SAMPLING_RATE, UNKNOWN_LENGTH, load_audio
from speech_emotion.errors import AudioError, AudioLimitError, UploadError
from speech_emotion.serving.limits import DEFAULT_FORMATS, KNOWN_FORMATS, ServeLimits, parse_formats

__all__ = [  # the limits moved to speech_emotion.serving.limits; their names still import from here
    "AUDIO_CONTENT_TYPES",
    "DEFAULT_FORMATS",
    "KNOWN_FORMATS",
    "ServeLimits",
    "UploadInfo",
    "check_content_type",
    "check_format",
    "check_upload",
    "decode_file",
    "decode_upload",
    "parse_formats",
    "sniff_format",
    "upload_on_disk",
]

AUDIO_CONTENT_TYPES = ("application/octet-stream", "application/ogg")
"""Declared content types accepted besides ``audio/*`` (and none at all)."""

SNIFF_BYTES = 16
"""Bytes :func:`sniff_format` needs."""


@dataclass(frozen=True)
class UploadInfo:
    """An upload on disk whose header passed :func:`check_upload`.

    Attributes:
        path: the temporary file.
        format: the format read from its first bytes (``"wav"``, ``"flac"``, …).
        duration: seconds the header declares, or ``None`` when it declares no length.
        sampling_rate: the file's rate in Hz.
        channels: the file's channel count.
    """

    path: Path
    format: str
    duration: float | None
    sampling_rate: int
    channels: int


def sniff_format(data: bytes) -> str | None:
    """The audio format from the first bytes, or ``None`` when unrecognised.

    Also names a few formats the server cannot decode (``"webm"``, ``"mp4"``) so that the
    error can say what arrived.

    Example:
        >>> sniff_format(b"fLaC\\x00\\x00"), sniff_format(b"\\x1aE\\xdf\\xa3...."), sniff_format(b"hello")
        ('flac', 'webm', None)
    """
    head = data[:16]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "mp4"
    return None


def check_content_type(content_type: str | None, *, what: str = "body") -> None:
    """Refuse a declared content type that is not audio (415).

    ``None``/empty, ``audio/*`` and :data:`AUDIO_CONTENT_TYPES` pass; the bytes decide the
    format later.

    Example:
        >>> check_content_type("audio/wav; codecs=1")
        >>> check_content_type("text/plain")
        Traceback (most recent call last):
        ...
        speech_emotion.errors.UploadError: body: content type 'text/plain' is not audio; send audio/* or
        application/octet-stream (the format is read from the file's bytes)
    """
    if not content_type:
        return
    media_type = content_type.split(";")[0].strip().lower()
    if media_type.startswith("audio/") or media_type in AUDIO_CONTENT_TYPES:
        return
    raise UploadError(
        415,
        "unsupported_media_type",
        f"{what}: content type {media_type!r} is not audio; send audio/* or application/octet-stream (the format is "
        "read from the file's bytes)",
    )


def check_format(data: bytes, limits: ServeLimits, *, filename: str = "upload", size: int | None = None) -> str:
    """Size and format checks on raw bytes (or on the first :data:`SNIFF_BYTES` of a file of ``size``
    bytes); returns the sniffed format.

    Raises:
        UploadError: 400 empty, 413 over ``max_bytes``, 415 unrecognised or not accepted.
    """
    size = len(data) if size is None else size
    if not size:
        raise UploadError(400, "empty", f"{filename}: empty upload (0 bytes); send the audio file's bytes")
    if size > limits.max_bytes:
        raise UploadError(
            413,
            "too_large",
            f"{filename}: {size} bytes, more than this server's limit of {limits.max_bytes} bytes; send a shorter "
            "or compressed clip",
        )
    fmt = sniff_format(data)
    accepted = ", ".join(limits.formats)
    if fmt is None:
        raise UploadError(
            415,
            "unsupported_format",
            f"{filename}: not a recognised audio file (first bytes {data[:8]!r}); send one of: {accepted}",
        )
    if fmt in ("webm", "mp4"):
        raise UploadError(
            415,
            "unsupported_format",
            f"{filename}: {fmt} audio cannot be decoded here; convert it to one of: {accepted} (the web page converts "
            "microphone recordings to WAV)",
        )
    if fmt not in limits.formats:
        raise UploadError(
            415, "unsupported_format", f"{filename}: {fmt} is not accepted by this server; send one of: {accepted}"
        )
    return fmt


def check_upload(path: Path, limits: ServeLimits, *, filename: str = "upload") -> UploadInfo:
    """Check an upload on disk from its first bytes and its header, before any decoding.

    Size and format as :func:`check_format`; then the header's duration, sampling rate,
    channel count and decoded size (frames × channels) against ``limits``: a 17 KB FLAC that
    declares 655,350 Hz over 8 channels is refused here, not decoded.

    Raises:
        UploadError: as :func:`check_format`; 422 when the header cannot be read; 413 when
            it declares more than ``max_duration`` seconds, ``max_sampling_rate``,
            ``max_channels`` or ``max_samples``.
    """
    with open(path, "rb") as stream:
        head = stream.read(SNIFF_BYTES)
    fmt = check_format(head, limits, filename=filename, size=path.stat().st_size)
    try:
        info = sf.info(str(path))
    except Exception as error:  # libsndfile raises several types for bad headers
        detail = _first_line(error).replace(str(path), filename)
        raise UploadError(
            422,
            "unreadable_audio",
            f"{filename}: cannot read the {fmt} header ({detail}); is the file corrupt or truncated?",
        ) from None
    declared = 0 <= info.frames < UNKNOWN_LENGTH
    duration = info.frames / info.samplerate if declared and info.samplerate > 0 else None
    try:
        limits.decode_limits.check(
            path,
            frames=info.frames,
            channels=info.channels,
            sampling_rate=info.samplerate,
            streamed=not declared,
            resample_to=SAMPLING_RATE,
        )
    except AudioLimitError as error:
        raise _over_budget(
            error, limits, filename=filename, frames=info.frames, channels=info.channels, sampling_rate=info.samplerate
        ) from None
    if duration is not None and duration > limits.max_duration:
        raise _too_long(filename, duration, limits)
    return UploadInfo(path, fmt, duration, int(info.samplerate), int(info.channels))


def decode_file(path: Path, limits: ServeLimits, *, filename: str = "upload") -> np.ndarray:
    """Decode a checked upload with :func:`load_audio` into a mono float32 signal at 16 kHz.

    Raises:
        UploadError: 422 for audio that does not decode into usable samples (corrupt,
            truncated, NaN, silent, too short); 413 when longer than ``max_duration`` or
            beyond the decode limits (a header that declares no length is held to
            ``max_samples`` while decoding).
    """
    try:
        signal, _ = load_audio(path, min_duration=limits.min_duration, limits=limits.decode_limits)
    except AudioLimitError as error:
        raise _over_budget(error, limits, filename=filename) from None
    except AudioError as error:
        reason = error.reason.replace(str(path), filename)  # the temporary name means nothing to the client
        raise UploadError(422, "unreadable_audio", f"{filename}: {reason}") from None
    duration = len(signal) / SAMPLING_RATE
    if duration > limits.max_duration:
        raise _too_long(filename, duration, limits)
    return signal


@contextlib.contextmanager
def upload_on_disk(data: bytes, limits: ServeLimits, *, filename: str = "upload") -> Iterator[Path]:
    """Write ``data`` to a temporary file, check it (:func:`check_upload`) and yield its path.

    The file is removed on exit.

    Raises:
        UploadError: as :func:`check_upload`.
    """
    check_format(data[:SNIFF_BYTES], limits, filename=filename, size=len(data))  # before writing anything
    handle, name = tempfile.mkstemp(prefix="ser-upload-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        yield check_upload(path, limits, filename=filename).path
    finally:
        path.unlink(missing_ok=True)


def decode_upload(data: bytes, *, limits: ServeLimits, filename: str = "upload") -> np.ndarray:
    """Uploaded bytes → mono float32 signal at 16 kHz (all checks of this module).

    Raises:
        UploadError: with the status and a message naming ``filename`` and the fix.
    """
    with upload_on_disk(data, limits, filename=filename) as path:
        return decode_file(path, limits, filename=filename)


def _too_long(filename: str, duration: float, limits: ServeLimits) -> UploadError:
    return UploadError(
        413,
        "too_long",
        f"{filename}: {duration:.1f} s long, more than this server's limit of {limits.max_duration:g} s; send a "
        "shorter clip",
    )


def _over_budget(
    error: AudioLimitError,
    limits: ServeLimits,
    *,
    filename: str,
    frames: int | None = None,
    channels: int | None = None,
    sampling_rate: float | None = None,
) -> UploadError:
    """The server's 413 for a loader limit: what arrived, the server's limit, what to send instead."""
    if error.limit == "max_sampling_rate" and sampling_rate is not None:
        return UploadError(
            413,
            "sampling_rate_too_high",
            f"{filename}: sampling rate {sampling_rate:g} Hz, more than this server's limit of "
            f"{limits.max_sampling_rate} Hz (or not positive); resample the clip to 16 or 48 kHz",
        )
    if error.limit == "max_channels" and channels is not None:
        return UploadError(
            413,
            "too_many_channels",
            f"{filename}: {channels} channels, more than this server's limit of {limits.max_channels}; send mono or "
            "stereo",
        )
    if frames is not None and channels is not None and frames < UNKNOWN_LENGTH:
        return UploadError(
            413,
            "too_many_samples",
            f"{filename}: {frames} frames × {channels} channels = {frames * channels} samples to decode, more than "
            f"this server's limit of {limits.max_samples} (max_samples); send a shorter clip, in mono, or at a lower "
            "sampling rate",
        )
    return UploadError(
        413,
        "too_many_samples",
        f"{filename}: a stream of undeclared length that decodes to more than this server's limit of "
        f"{limits.max_samples} samples (max_samples); send a shorter clip",
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
