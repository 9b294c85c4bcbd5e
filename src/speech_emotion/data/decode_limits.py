"""How much audio one file may decode to: :class:`DecodeLimits`, the loader's limits, in one place.

:func:`~speech_emotion.data.audio.load_audio` and :func:`~speech_emotion.data.audio.stream_audio`
take a ``limits=`` argument (default ``DecodeLimits()``, the constants below); the REST service
passes its own, tighter ones (:class:`~speech_emotion.serving.limits.ServeLimits`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_emotion.errors import AudioLimitError

MAX_SAMPLING_RATE = 192_000
"""Highest sampling rate accepted by default, in Hz (studio audio goes to 192 kHz; speech needs 16)."""

MAX_CHANNELS = 8
"""Most channels accepted by default (7.1 surround; a speech recording has one or two)."""

MAX_SAMPLES = 57_600_000
"""Most samples (frames × channels) one file read whole may decode to, by default: 10 minutes of
48 kHz stereo or an hour of 16 kHz mono, 230 MB as float32. Longer recordings go through
:func:`~speech_emotion.data.audio.stream_audio` (``ser predict --timeline``)."""


@dataclass(frozen=True)
class DecodeLimits:
    """How much audio one file may decode to, checked from its header before any decoding.

    A compressed file is small on disk and large decoded: 17 KB of FLAC can declare 3 s at
    655,350 Hz over 8 channels (16 million samples). These limits refuse such files with an
    :class:`~speech_emotion.errors.AudioLimitError` that names the file, the limit and the fix.

    Attributes:
        max_sampling_rate: highest sampling rate in Hz.
        max_channels: most channels.
        max_samples: most decoded samples (frames × channels) of a file read whole
            (:func:`~speech_emotion.data.audio.load_audio`); ``stream_audio`` decodes any length
            in blocks.

    Example:
        >>> DecodeLimits().check("bomb.flac", frames=1_966_050, channels=8, sampling_rate=655_350)
        Traceback (most recent call last):
        ...
        speech_emotion.errors.AudioLimitError: bomb.flac: sampling rate 655350 Hz is above the limit of 192000 Hz
        (max_sampling_rate); resample it (e.g. `ffmpeg -i FILE -ar 48000 out.flac`) or raise the limit
        >>> DecodeLimits(max_channels=0)
        Traceback (most recent call last):
        ...
        ValueError: max_channels: expected a positive integer, got 0
    """

    max_sampling_rate: int = MAX_SAMPLING_RATE
    max_channels: int = MAX_CHANNELS
    max_samples: int = MAX_SAMPLES

    def __post_init__(self) -> None:
        for name in ("max_sampling_rate", "max_channels", "max_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")

    def check(
        self,
        path: str | Path,
        *,
        frames: int,
        channels: int,
        sampling_rate: float,
        streamed: bool = False,
        resample_to: float | None = None,
    ) -> None:
        """Refuse audio beyond these limits (``streamed``: the total length is not limited).

        With ``resample_to``, the resampled signal is held to ``max_samples`` too: a file
        at a low rate grows when resampled up (100 Hz to 16 kHz: 160 times).

        Raises:
            AudioLimitError: the sampling rate, channel count or decoded size is over its limit
                (or the rate is not positive).
        """
        if not 0 < sampling_rate <= self.max_sampling_rate:
            raise AudioLimitError(
                path,
                f"sampling rate {sampling_rate:g} Hz is "
                + (
                    f"above the limit of {self.max_sampling_rate} Hz (max_sampling_rate); resample it (e.g. "
                    "`ffmpeg -i FILE -ar 48000 out.flac`) or raise the limit"
                    if sampling_rate > 0
                    else "not a positive number; the header is corrupt, re-export the file"
                ),
                limit="max_sampling_rate",
            )
        if channels > self.max_channels:
            raise AudioLimitError(
                path,
                f"{channels} channels, more than the limit of {self.max_channels} (max_channels); downmix it (e.g. "
                "`ffmpeg -i FILE -ac 1 out.flac`) or raise the limit",
                limit="max_channels",
            )
        if not streamed and frames * channels > self.max_samples:
            raise AudioLimitError(
                path,
                f"{frames} frames × {channels} channels = {frames * channels} samples to decode "
                f"({frames / sampling_rate:.1f} s), more than the limit of {self.max_samples} (max_samples); label "
                "long recordings window by window (`ser predict --timeline`, streamed), split the file, or raise "
                "the limit",
                limit="max_samples",
            )
        if not streamed and resample_to and frames * resample_to / sampling_rate > self.max_samples:
            n_out = math.ceil(frames * resample_to / sampling_rate)
            raise AudioLimitError(
                path,
                f"{frames} frames at {sampling_rate:g} Hz resample to {n_out} samples at {resample_to:g} Hz "
                f"({frames / sampling_rate:.1f} s), more than the limit of {self.max_samples} (max_samples); "
                "label long recordings window by window (`ser predict --timeline`, streamed), split the file, or "
                "raise the limit",
                limit="max_samples",
            )
