"""Long recordings → a timeline of emotion segments, in bounded memory.

:func:`predict_timeline` streams a file of any length (a call, a meeting, an hour-long
interview) and yields one segment per window of speech::

    {"start": 12.384, "end": 16.384, "label": "angry", "probabilities": {...}}

How it works, block by block (nothing holds the whole file):

1. **Decode** (:func:`~speech_emotion.data.audio.stream_audio`) ``soundfile`` blocks of
   :data:`~speech_emotion.data.audio.BLOCK_SECONDS`, downmix to mono, resample to 16 kHz
   with a streaming ``soxr`` resampler.
2. **Voice activity** (:mod:`speech_emotion.inference.vad`): the Silero VAD model (shipped
   inside the ``silero-vad`` package, run offline) gives a speech probability for every
   32 ms frame. A speech region opens when the probability reaches ``threshold`` (0.5) and
   closes after :data:`~speech_emotion.inference.vad.MIN_SILENCE` seconds below
   ``threshold - 0.15`` (Silero's own hysteresis); regions shorter than
   :data:`~speech_emotion.inference.vad.MIN_REGION` are dropped and the rest are padded by
   :data:`~speech_emotion.inference.vad.SPEECH_PAD` on each side.
3. **Windows are cut inside speech regions**, never across a silence: each region is cut
   into windows that start at the region's start every ``hop`` seconds, are ``window``
   seconds long and stop at the region's end. With ``hop <= window`` a last piece shorter
   than half a window is merged into the window before it (so no window is shorter than
   half a window unless its whole region is, and none is longer than ``hop + window / 2``).
   Windows holding less than ``min_speech`` seconds of speech are skipped. A 2.5 s
   utterance is one 2.5 s segment; a 9 s turn with ``window=4`` gives [0, 4] and [4, 9].
   With ``vad=False`` the whole recording is one region (only digital silence is skipped).
4. **Context**: the model hears each window with ``context`` seconds (:data:`CONTEXT`) of
   the audio around it; the segment's ``start``/``end`` stay those of the speech. Models
   trained on whole clips, which begin and end in silence, misjudge speech cut out tight:
   a whisper-tiny head trained on RAVDESS clips called every VAD-trimmed neutral clip
   'angry', and a whisper-base one labelled 37% of clips right at their midpoint without
   context, 65% with 0.5 s (its accuracy on the whole clips: 67%).
5. **Batches** of windows (up to ``batch_seconds`` of audio) go through
   ``predictor.predict``; segments come out in time order.

Memory stays flat: the buffers hold one decoded block, the audio of the speech region
being cut (at most about ``1.5 * window`` beyond the last cut, plus the context) and one
batch of windows.

Work is bounded too: ``hop`` is at least :data:`MIN_HOP_FRACTION` of ``window``, and a file
is cut into at most ``max_windows`` windows (:data:`MAX_WINDOWS` by default). The count is
checked from the header before any decoding (an upper bound: every second speech) and again
while windows are cut (for a header that declares no length); beyond it,
:class:`~speech_emotion.errors.TimelineLimitError`. Without these, ``hop=0.001`` turned a
120 s clip into 116,001 windows, 161 hours of audio to encode.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE, SILENCE_PEAK, StreamBuffer, declared_duration, stream_audio
from speech_emotion.data.decode_limits import DecodeLimits
from speech_emotion.errors import TimelineLimitError
from speech_emotion.inference.vad import SPEECH_PAD, VAD_FRAME, SileroVAD, SpeechTracker

MIN_WINDOW = 0.5
"""Shortest ``window`` accepted, in seconds, and the default ``min_speech``."""

WINDOW = 4.0
"""Default window length in seconds."""

CONTEXT = 0.5
"""Seconds of audio on each side of a segment that the model hears with it."""

MIN_HOP_FRACTION = 0.1
"""Shortest ``hop`` accepted, as a fraction of ``window`` (windows overlap by at most 90%)."""

MAX_WINDOWS = 20_000
"""Most windows one file is cut into by default: 22 hours of speech at the default 4 s window and hop."""


def check_timeline_options(
    *,
    window: float,
    hop: float | None,
    context: float = CONTEXT,
    min_speech: float = MIN_WINDOW,
    max_windows: int = MAX_WINDOWS,
) -> float:
    """Check the timeline's options before any work; return the hop (``window`` when ``hop`` is ``None``).

    Raises:
        ValueError: an option out of range, with the accepted range.

    Example:
        >>> check_timeline_options(window=4.0, hop=None)
        4.0
        >>> check_timeline_options(window=4.0, hop=0.001)
        Traceback (most recent call last):
        ...
        ValueError: hop: expected at least 0.1 × window = 0.4 s (windows overlapping by at most 90%), got 0.001 s
    """
    hop = window if hop is None else hop
    if not window >= MIN_WINDOW:
        raise ValueError(f"window: expected at least {MIN_WINDOW} s, got {window} s")
    if not math.isfinite(window):
        raise ValueError(f"window: expected a finite number of seconds, got {window}")
    if not hop > 0:
        raise ValueError(f"hop: expected a positive number of seconds, got {hop} s")
    if not hop >= MIN_HOP_FRACTION * window:
        raise ValueError(
            f"hop: expected at least {MIN_HOP_FRACTION:g} × window = {MIN_HOP_FRACTION * window:g} s (windows "
            f"overlapping by at most {1 - MIN_HOP_FRACTION:.0%}), got {hop:g} s"
        )
    if not context >= 0:
        raise ValueError(f"context: expected seconds >= 0, got {context} s")
    if not 0 < min_speech <= window:
        raise ValueError(f"min_speech: expected between 0 and window={window} s, got {min_speech} s")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise ValueError(f"max_windows: expected a positive integer, got {max_windows!r}")
    return hop


def check_window_count(duration: float, *, hop: float, max_windows: int, where: str = "recording") -> int:
    """The most windows ``duration`` seconds can be cut into ``hop`` seconds apart; refuse more than ``max_windows``.

    An upper bound: with the VAD only speech is cut, but the audio may be speech throughout.

    Raises:
        TimelineLimitError: the bound is above ``max_windows``.

    Example:
        >>> check_window_count(120.0, hop=4.0, max_windows=100)
        30
        >>> check_window_count(120.0, hop=0.5, max_windows=100, where="call.wav")
        Traceback (most recent call last):
        ...
        speech_emotion.errors.TimelineLimitError: call.wav: 120.0 s cut every 0.5 s makes up to 240 windows, more than
        max_windows=100; pass a larger hop or a shorter recording, or raise max_windows
    """
    n_windows = max(1, math.ceil(duration / hop - 1e-9))
    if n_windows > max_windows:
        raise TimelineLimitError(
            f"{where}: {duration:.1f} s cut every {hop:g} s makes up to {n_windows} windows, more than "
            f"max_windows={max_windows}; pass a larger hop or a shorter recording, or raise max_windows",
            n_windows=n_windows,
            max_windows=max_windows,
        )
    return n_windows


# ---------------------------------------------------------------------------------------------
# Windows inside speech regions
# ---------------------------------------------------------------------------------------------


class Windower:
    """Cuts windows inside one speech region as it grows (see the module docstring, step 3).

    Args:
        window: window length in seconds.
        hop: seconds between window starts.
        min_speech: windows shorter than this are skipped.

    Example:
        >>> w = Windower(window=4.0, hop=4.0, min_speech=0.5)
        >>> w.open(0.0); w.cut(known_end=5.0, closed=False)
        []
        >>> w.cut(known_end=9.0, closed=True)
        [(0.0, 4.0), (4.0, 9.0)]
    """

    def __init__(self, *, window: float, hop: float, min_speech: float) -> None:
        self.window, self.hop, self.min_speech = window, hop, min_speech
        self.region: float | None = None  # start of the region being cut
        self.cursor: float | None = None  # start of its next window; None once it is done

    def open(self, start: float) -> None:
        """A region starts at ``start`` seconds."""
        self.region = self.cursor = start

    def cut(self, *, known_end: float, closed: bool) -> list[tuple[float, float]]:
        """Windows that can be cut now that speech is known up to ``known_end``.

        When ``closed``, ``known_end`` is the region's end: every remaining window is cut
        and the region is done.
        """
        windows: list[tuple[float, float]] = []
        window, hop = self.window, self.hop
        while self.cursor is not None and self.cursor < known_end:
            start = self.cursor
            end = start + window
            if not closed:
                # Cut only when the next window is sure to be at least half a window long,
                # so that no short tail will need to be merged into this one.
                if known_end < (end if hop > window else max(end, start + hop + window / 2)):
                    break
            elif end >= known_end or (hop <= window and known_end - (start + hop) < window / 2):
                if known_end - start >= self.min_speech:
                    windows.append((start, known_end))
                self.cursor = None
                break
            windows.append((start, end))
            self.cursor = start + hop
        if closed:
            self.cursor = None
        return windows


# ---------------------------------------------------------------------------------------------
# The timeline
# ---------------------------------------------------------------------------------------------


def predict_timeline(
    predictor,
    path: str | Path,
    *,
    window: float = WINDOW,
    hop: float | None = None,
    vad: bool = True,
    progress: Callable[[float], Any] | None = None,
    context: float = CONTEXT,
    min_speech: float = MIN_WINDOW,
    threshold: float = 0.5,
    min_confidence: float | None = None,
    batch_seconds: float = 30.0,
    max_windows: int = MAX_WINDOWS,
    limits: DecodeLimits | None = None,
) -> Iterator[dict]:
    """Emotion segments over a recording of any length, streamed in bounded memory.

    Windows are cut inside speech regions found by Silero VAD (the module docstring tells
    exactly how); each window becomes one segment.

    Args:
        predictor: a :class:`~speech_emotion.inference.predictor.Predictor` (anything with
            ``predict(list_of_16k_signals)``).
        path: audio file in any format libsndfile reads, any rate and channel count.
        window: window length in seconds (at least 0.5).
        hop: seconds between window starts inside a region, at least
            :data:`MIN_HOP_FRACTION` of ``window``; ``None`` means ``window`` (windows do not
            overlap).
        vad: skip non-speech with the voice-activity detector; ``False`` cuts windows over
            the whole recording.
        progress: called with the seconds of audio newly finished (decoded and every
            segment before it yielded); the calls add up to the duration.
        context: seconds of audio around each segment that the model hears with it (the
            segment's ``start``/``end`` stay those of the speech; 0 sends the speech alone).
            Models trained on whole clips, which begin and end in silence, misjudge speech
            cut out tight.
        min_speech: windows with fewer seconds of speech are skipped.
        threshold: VAD speech probability threshold.
        min_confidence: below this top probability the label is ``None`` (``uncertain``).
        batch_seconds: seconds of windowed audio sent to the model at once.
        max_windows: most windows the file may be cut into (see the module docstring).
        limits: sampling rate and channels the decoder accepts (default
            :class:`~speech_emotion.data.decode_limits.DecodeLimits()`; the length is not limited).

    Yields:
        ``{"start", "end", "label", "probabilities"}`` with times in seconds rounded to the
        millisecond, in time order (plus ``"uncertain"`` with ``min_confidence``).

    Raises:
        AudioError: the file is missing or unreadable (possibly after some segments were
            yielded, for a file corrupt in the middle); ``AudioLimitError`` for a sampling
            rate or channel count over ``limits``.
        ImportError: ``vad=True`` without the ``silero-vad`` package.
        TimelineLimitError: the file would make more than ``max_windows`` windows (before any
            segment when the header declares the length; otherwise when the count passes it).
        ValueError: ``window``, ``hop``, ``context``, ``min_speech`` or ``max_windows`` out of range.

    Example:
        >>> import numpy as np, soundfile as sf, tempfile, os
        >>> class Constant:  # any object with predict(signals) works
        ...     def predict(self, signals):
        ...         return [{"label": "neutral", "probabilities": {"neutral": 1.0}} for _ in signals]
        >>> path = os.path.join(tempfile.mkdtemp(), "noise.wav")
        >>> sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(16000 * 9), 16000)
        >>> [(s["start"], s["end"]) for s in predict_timeline(Constant(), path, vad=False)]
        [(0.0, 4.0), (4.0, 9.0)]
    """
    hop = check_timeline_options(
        window=window, hop=hop, context=context, min_speech=min_speech, max_windows=max_windows
    )
    blocks = stream_audio(path, limits=limits)
    first = next(blocks, None)  # raise on an unreadable file before loading the VAD
    if first is None:
        return
    duration = declared_duration(path)
    if duration is not None:
        check_window_count(duration, hop=hop, max_windows=max_windows, where=str(path))
    detector = SileroVAD() if vad else None
    tracker = SpeechTracker(threshold=threshold) if vad else None
    windower = Windower(window=window, hop=hop, min_speech=min_speech)
    samples = StreamBuffer()
    vad_pending = np.zeros(0, dtype=np.float32)  # samples not yet passed to the VAD (< one frame)
    waiting: deque[tuple[float, float, float, float]] = deque()  # (start, end, audio from, audio to)
    batch: list[tuple[float, float, np.ndarray]] = []
    batch_samples = 0
    reported = 0.0
    n_windows = 0
    if not vad:
        windower.open(0.0)

    def add(windows: list[tuple[float, float]]) -> None:
        nonlocal n_windows
        n_windows += len(windows)
        if n_windows > max_windows:  # a header without a length, or more regions than the bound counts
            raise TimelineLimitError(
                f"{path}: more than max_windows={max_windows} windows (stopped at {windows[-1][0]:.1f} s); pass a "
                "larger hop or a shorter recording, or raise max_windows",
                n_windows=n_windows,
                max_windows=max_windows,
            )
        for start, end in windows:
            waiting.append((start, end, max(0.0, start - context), end + context))

    def release(final: bool) -> Iterator[dict]:
        """Windows whose audio is all decoded go to the batch; full batches are predicted."""
        nonlocal batch_samples
        while waiting and (final or waiting[0][3] <= samples.end / SAMPLING_RATE):
            start, end, audio_from, audio_to = waiting.popleft()
            if float(np.abs(samples.slice(start, end)).max(initial=0.0)) < SILENCE_PEAK:
                continue  # digital silence (possible with vad=False)
            signal = samples.slice(audio_from, audio_to)
            batch.append((start, end, signal))
            batch_samples += signal.shape[0]
            if batch_samples >= batch_seconds * SAMPLING_RATE:
                yield from flush()

    def flush() -> Iterator[dict]:
        nonlocal batch, batch_samples
        if not batch:
            return
        signals = [signal for _, _, signal in batch]
        results = (
            predictor.predict(signals)
            if min_confidence is None
            else predictor.predict(signals, min_confidence=min_confidence)
        )
        for (start, end, _), result in zip(batch, results):
            yield {"start": round(start, 3), "end": round(end, 3)} | result
        batch, batch_samples = [], 0

    def run_vad(signal: np.ndarray, *, final: bool) -> None:
        closed = tracker.feed(detector(signal))
        if final:
            closed += tracker.finish(samples.end / SAMPLING_RATE)
        for start, end in closed:  # regions that ended: cut them whole
            if windower.region != start:
                windower.open(start)
            add(windower.cut(known_end=end, closed=True))
        if tracker.start is not None:  # the region still open: cut what is certain
            if windower.region != tracker.start:
                windower.open(tracker.start)
            add(windower.cut(known_end=tracker.known_end, closed=False))

    def report(done: float) -> None:
        nonlocal reported
        if progress is not None and done > reported:
            progress(done - reported)
            reported = done

    for block in _chain(first, blocks):
        samples.append(block)
        now = samples.end / SAMPLING_RATE
        if vad:
            vad_input = np.concatenate([vad_pending, block])
            n_frames = vad_input.shape[0] // VAD_FRAME
            vad_pending = vad_input[n_frames * VAD_FRAME :]
            run_vad(vad_input[: n_frames * VAD_FRAME], final=False)
            # Still to be cut: the open region from its next window on, or a region opening
            # at the next frame (its start is padded back by SPEECH_PAD).
            vad_time = tracker.n_frames * VAD_FRAME / SAMPLING_RATE
            uncut = windower.cursor if tracker.start is not None else vad_time - SPEECH_PAD - 0.05
        else:
            add(windower.cut(known_end=now, closed=False))
            uncut = windower.cursor
        yield from release(final=False)
        samples.drop_before(max(0.0, min([uncut] + [w[2] for w in waiting]) - context))
        report(min(now, uncut, waiting[0][0] if waiting else math.inf, batch[0][0] if batch else math.inf))
    if vad:
        run_vad(
            np.concatenate([vad_pending, np.zeros(-vad_pending.shape[0] % VAD_FRAME, dtype=np.float32)]), final=True
        )
    else:
        add(windower.cut(known_end=samples.end / SAMPLING_RATE, closed=True))
    yield from release(final=True)
    yield from flush()
    report(samples.end / SAMPLING_RATE)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
