"""What the REST service accepts: :class:`ServeLimits` (sizes, formats, decode budget, work, time, load).

Every limit is an option of ``ser serve`` with the same name (``--max-bytes`` …) and a safe
default. Refusals are 4xx answers: 413 beyond a size or decode limit, 422 beyond the timeline's
window count, 408 for a body slower than ``body_timeout``, 503 beyond ``max_queue``.

Example:
    >>> limits = ServeLimits(max_duration=30)
    >>> limits.decode_limits
    DecodeLimits(max_sampling_rate=192000, max_channels=8, max_samples=11520000)
    >>> ServeLimits(body_timeout=0)
    Traceback (most recent call last):
    ...
    ValueError: body_timeout: expected a positive number of seconds, got 0
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from speech_emotion.data.audio import MIN_DURATION
from speech_emotion.data.decode_limits import MAX_CHANNELS, MAX_SAMPLING_RATE, DecodeLimits

KNOWN_FORMATS = ("wav", "flac", "ogg", "mp3", "aiff")
"""Formats the server can be told to accept (all decoded by libsndfile)."""

DEFAULT_FORMATS = ("wav", "flac", "ogg", "mp3")
"""Formats accepted unless the user says otherwise."""

HEALTH_FIELDS = ("max_bytes", "max_duration", "min_duration", "formats", "max_concurrent", "max_queue")
"""The limits ``GET /health`` reports (the web page reads them); :meth:`ServeLimits.to_dict` has all."""


@dataclass(frozen=True)
class ServeLimits:
    """What the server accepts.

    Attributes:
        max_bytes: largest upload in bytes.
        max_duration: longest clip in seconds.
        min_duration: shortest clip in seconds.
        formats: accepted audio formats, a subset of :data:`KNOWN_FORMATS`.
        max_concurrent: inferences that run at once (the rest wait their turn).
        max_queue: requests that may wait for a turn (counted from the moment they are
            admitted, before their body is read); more get 503 until the queue drains.
        max_sampling_rate: highest sampling rate of an upload, in Hz.
        max_channels: most channels of an upload.
        max_samples: most samples (frames × channels) an upload may decode to: the decode
            budget of one request (default: 120 s of 48 kHz stereo, 46 MB as float32).
        max_windows: most windows a ``?timeline=1`` request may cut its clip into.
        body_timeout: seconds the whole request body may take to arrive (408 after).

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
    max_sampling_rate: int = MAX_SAMPLING_RATE
    max_channels: int = MAX_CHANNELS
    max_samples: int = 120 * 48_000 * 2
    max_windows: int = 120
    body_timeout: float = 30.0

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
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {self.max_windows}")
        if not (self.body_timeout > 0 and math.isfinite(self.body_timeout)):
            raise ValueError(f"body_timeout: expected a positive number of seconds, got {self.body_timeout}")
        self.decode_limits  # raises ValueError for a bad max_sampling_rate, max_channels or max_samples

    @property
    def decode_limits(self) -> DecodeLimits:
        """The loader's limits for one upload."""
        return DecodeLimits(
            max_sampling_rate=self.max_sampling_rate, max_channels=self.max_channels, max_samples=self.max_samples
        )

    @property
    def max_admitted(self) -> int:
        """Requests admitted at once: running plus waiting (receiving their body, or their turn)."""
        return self.max_concurrent + self.max_queue

    def to_dict(self) -> dict:
        """Every limit, plain JSON (``ServeLimits(**limits.to_dict())`` round-trips)."""
        data = asdict(self)
        data["formats"] = list(self.formats)
        return data

    def health_dict(self) -> dict:
        """The limits ``GET /health`` reports (:data:`HEALTH_FIELDS`)."""
        data = self.to_dict()
        return {name: data[name] for name in HEALTH_FIELDS}


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
