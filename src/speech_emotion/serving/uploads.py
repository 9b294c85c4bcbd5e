"""Uploaded audio bytes → a checked 16 kHz signal, or an :class:`UploadError` with its HTTP status.

The server trusts nothing about an upload: its format is read from the first bytes (not
from the file name or the declared content type), its size and duration are held to
:class:`ServeLimits`, and decoding goes through :func:`speech_emotion.data.audio.load_audio`,
the loader ``ser predict`` uses, so both see the same samples.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from speech_emotion.data.audio import MIN_DURATION, SAMPLING_RATE, load_audio
from speech_emotion.errors import AudioError, UploadError

KNOWN_FORMATS = ("wav", "flac", "ogg", "mp3", "aiff")
"""Formats the server can be told to accept (all decoded by libsndfile)."""

DEFAULT_FORMATS = ("wav", "flac", "ogg", "mp3")
"""Formats accepted unless the user says otherwise."""

AUDIO_CONTENT_TYPES = ("application/octet-stream", "application/ogg")
"""Declared content types accepted besides ``audio/*`` (and none at all)."""


@dataclass(frozen=True)
class ServeLimits:
    """What the server accepts.

    Attributes:
        max_bytes: largest upload in bytes.
        max_duration: longest clip in seconds.
        min_duration: shortest clip in seconds.
        formats: accepted audio formats, a subset of :data:`KNOWN_FORMATS`.
        max_concurrent: inferences that run at once (the rest wait their turn).
        max_queue: requests that may wait for a turn; more get 503 until the queue drains.

    Example:
        >>> ServeLimits(formats=("wav", "webm"))
        Traceback (most recent call last):
        ...
        ValueError: formats: 'webm' is not a format the server can decode; choose from wav, flac, ogg, mp3, aiff
    """

    max_bytes: int = 20_000_000
    max_duration: float = 120.0
    min_duration: float = MIN_DURATION
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_concurrent: int = 1
    max_queue: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError(
                f"expected 0 < min_duration <= max_duration, got min_duration={self.min_duration}, "
                f"max_duration={self.max_duration}"
            )
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {self.max_concurrent}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {self.max_queue}")

    def to_dict(self) -> dict:
        """Plain JSON-able limits, as ``GET /health`` reports them."""
        data = asdict(self)
        data["formats"] = list(self.formats)
        return data


def parse_formats(formats: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"wav,flac"`` or ``["wav", "flac"]`` → ``("wav", "flac")``, checked against :data:`KNOWN_FORMATS`.

    Example:
        >>> parse_formats(" WAV, ogg ")
        ('wav', 'ogg')
    """
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    parsed = tuple(dict.fromkeys(item.strip().lower().lstrip(".") for item in items if item.strip()))
    if not parsed:
        raise ValueError(f"formats: expected at least one of {', '.join(KNOWN_FORMATS)}, got {formats!r}")
    for item in parsed:
        if item not in KNOWN_FORMATS:
            raise ValueError(
                f"formats: {item!r} is not a format the server can decode; choose from {', '.join(KNOWN_FORMATS)}"
            )
    return parsed


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


def check_format(data: bytes, limits: ServeLimits, *, filename: str = "upload") -> str:
    """Size and format checks on raw bytes; returns the sniffed format.

    Raises:
        UploadError: 400 empty, 413 over ``max_bytes``, 415 unrecognised or not accepted.
    """
    if not data:
        raise UploadError(400, "empty", f"{filename}: empty upload (0 bytes); send the audio file's bytes")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413,
            "too_large",
            f"{filename}: {len(data)} bytes, more than this server's limit of {limits.max_bytes} bytes; send a shorter "
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


@contextlib.contextmanager
def upload_on_disk(data: bytes, limits: ServeLimits, *, filename: str = "upload") -> Iterator[Path]:
    """Check ``data`` (:func:`check_format`) and its declared duration, and yield it as a temporary file.

    The file is removed on exit. Duration is read from the header before any decoding,
    so an over-long clip costs nothing.

    Raises:
        UploadError: as :func:`check_format`; 422 when the header cannot be read; 413 when
            the header declares more than ``max_duration`` seconds.
    """
    fmt = check_format(data, limits, filename=filename)
    handle, name = tempfile.mkstemp(prefix="ser-upload-", suffix=f".{fmt}")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        try:
            info = sf.info(str(path))
        except Exception as error:  # libsndfile raises several types for bad headers
            detail = _first_line(error).replace(str(path), filename)
            raise UploadError(
                422,
                "unreadable_audio",
                f"{filename}: cannot read the {fmt} header ({detail}); is the file corrupt or truncated?",
            ) from None
        if info.samplerate > 0 and info.frames / info.samplerate > limits.max_duration:
            raise UploadError(
                413,
                "too_long",
                f"{filename}: {info.frames / info.samplerate:.1f} s long, more than this server's limit of "
                f"{limits.max_duration:g} s; send a shorter clip",
            )
        yield path
    finally:
        path.unlink(missing_ok=True)


def decode_file(path: Path, limits: ServeLimits, *, filename: str = "upload") -> np.ndarray:
    """Decode a checked upload with :func:`load_audio` into a mono float32 signal at 16 kHz.

    Raises:
        UploadError: 422 for audio that does not decode into usable samples (corrupt,
            truncated, NaN, silent, too short); 413 when longer than ``max_duration``.
    """
    try:
        signal, _ = load_audio(path, min_duration=limits.min_duration)
    except AudioError as error:
        reason = error.reason.replace(str(path), filename)  # the temporary name means nothing to the client
        raise UploadError(422, "unreadable_audio", f"{filename}: {reason}") from None
    duration = len(signal) / SAMPLING_RATE
    if duration > limits.max_duration:
        raise UploadError(
            413,
            "too_long",
            f"{filename}: {duration:.1f} s long, more than this server's limit of {limits.max_duration:g} s; send a "
            "shorter clip",
        )
    return signal


def decode_upload(data: bytes, *, limits: ServeLimits, filename: str = "upload") -> np.ndarray:
    """Uploaded bytes → mono float32 signal at 16 kHz (all checks of this module).

    Raises:
        UploadError: with the status and a message naming ``filename`` and the fix.
    """
    with upload_on_disk(data, limits, filename=filename) as path:
        return decode_file(path, limits, filename=filename)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
