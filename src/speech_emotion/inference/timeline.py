"""Long recordings → a timeline of emotion segments, in bounded memory.

:func:`predict_timeline` streams a file of any length (a call, a meeting, an hour-long
interview) and yields one segment per window of speech::

    {"start": 12.384, "end": 16.384, "label": "angry", "probabilities": {...}}

How it works, block by block (nothing holds the whole file):

1. **Decode** ``soundfile`` blocks of :data:`BLOCK_SECONDS`, downmix to mono, resample to
   16 kHz with a streaming ``soxr`` resampler.
2. **Voice activity**: the Silero VAD model (shipped inside the ``silero-vad`` package, run
   offline) gives a speech probability for every 32 ms frame. A speech region opens when
   the probability reaches ``threshold`` (0.5) and closes after :data:`MIN_SILENCE` seconds
   below ``threshold - 0.15`` (Silero's own hysteresis); regions shorter than
   :data:`MIN_REGION` are dropped and the rest are padded by :data:`SPEECH_PAD` on each side.
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
"""

from __future__ import annotations

import importlib.util
import math
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from speech_emotion.data.audio import SAMPLING_RATE, check_complete
from speech_emotion.errors import AudioError

BLOCK_SECONDS = 10.0
"""Seconds of audio decoded, resampled and passed through the VAD at a time."""

MIN_WINDOW = 0.5
"""Shortest ``window`` accepted, in seconds, and the default ``min_speech``."""

MIN_SILENCE = 0.3
"""Seconds of non-speech that end a speech region; shorter pauses are bridged."""

MIN_REGION = 0.25
"""Speech regions shorter than this, in seconds, are dropped as clicks or noise."""

SPEECH_PAD = 0.1
"""Seconds added on each side of a speech region (never into the previous region)."""

CONTEXT = 0.5
"""Seconds of audio on each side of a segment that the model hears with it."""

VAD_FRAME = 512
"""Samples per VAD frame at 16 kHz (32 ms)."""

SILERO_VAD_VERSION = "6.2.3"
"""The silero-vad release whose model layout :class:`SileroVAD` was written against."""

_SILENCE_PEAK = 1e-5  # the audio loader's definition of digital silence (-100 dBFS)


# ---------------------------------------------------------------------------------------------
# Voice activity
# ---------------------------------------------------------------------------------------------


class SileroVAD:
    """Silero VAD on 16 kHz audio, streaming: speech probability per 32 ms frame.

    The model is the sequence ONNX file inside the ``silero-vad`` package (no download), run
    with onnxruntime: neither torch nor the package's Python code is imported, so the
    torch-free ONNX backend stays torch-free with ``--timeline``. It scores all frames of a
    block in one call (its LSTM runs over the block as one sequence), which gives the same
    numbers as Silero's frame-by-frame loop (within 1e-5) at a hundred times its speed. State
    (the LSTM's and the last 64 samples of context) carries over between calls, so a
    recording can be fed in blocks of any multiple of :data:`VAD_FRAME` samples.

    Raises:
        ImportError: ``silero-vad`` or ``onnxruntime`` is not installed
            (``ModuleNotFoundError``), or the model file is not where release
            :data:`SILERO_VAD_VERSION` keeps it.

    Example:
        >>> import numpy as np
        >>> vad = SileroVAD()
        >>> p = vad(np.zeros(16 * 512, dtype=np.float32))
        >>> p.shape, bool(p.max() < 0.5)
        ((16,), True)
    """

    frame_samples = VAD_FRAME
    sampling_rate = SAMPLING_RATE
    context_samples = 64
    """Samples of the previous frame that the model sees before each frame (its input is 576 wide)."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("silero_vad")
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(
                "voice-activity detection needs the silero-vad package: "
                f"pip install 'silero-vad=={SILERO_VAD_VERSION}' (or 'speech-emotion[all]'), or pass vad=False "
                "(--no-vad)"
            )
        try:
            import onnxruntime
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "voice-activity detection runs Silero's ONNX model with onnxruntime: "
                "pip install onnxruntime (or 'speech-emotion[all]'), or pass vad=False (--no-vad)"
            ) from error

        # Read the file, not the package: importing silero_vad imports torch and sets it to
        # one thread for the whole process.
        model_file = Path(spec.origin).parent / "data" / "silero_vad_16k_sequence.onnx"
        if not model_file.is_file():
            raise ImportError(
                f"{model_file}: Silero VAD model not found; this code expects silero-vad=={SILERO_VAD_VERSION}: "
                f"pip install 'silero-vad=={SILERO_VAD_VERSION}'"
            )
        options = onnxruntime.SessionOptions()
        # One thread: the LSTM is hundreds of tiny sequential steps, and waking other threads
        # at each costs more than it gains. Its gates underflow into denormal floats on quiet
        # input, which makes CPU arithmetic up to a thousand times slower: flush them to zero.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        self._session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        """Forget the state: the next call starts a new recording."""
        self._context = np.zeros(self.context_samples, dtype=np.float32)
        self._state = (np.zeros((1, 1, 128), dtype=np.float32), np.zeros((1, 1, 128), dtype=np.float32))

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        """Speech probabilities of consecutive frames.

        Args:
            signal: float32 samples at 16 kHz continuing the previous call's; its length
                must be a multiple of :data:`VAD_FRAME`.

        Returns:
            float32 array of ``len(signal) // 512`` probabilities in [0, 1].
        """
        signal = np.asarray(signal, dtype=np.float32)
        if signal.ndim != 1 or signal.shape[0] % self.frame_samples:
            raise ValueError(
                f"expected a 1-D signal whose length is a multiple of {self.frame_samples} samples, got shape "
                f"{signal.shape}"
            )
        if signal.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.concatenate([self._context, signal])
        width = self.frame_samples + self.context_samples
        frames = np.lib.stride_tricks.sliding_window_view(padded, width)[:: self.frame_samples]
        h, c = self._state
        probabilities, h, c = self._session.run(None, {"input": np.ascontiguousarray(frames), "h": h, "c": c})
        self._state = (h, c)
        self._context = signal[-self.context_samples :].copy()
        return probabilities.astype(np.float32, copy=False)


class SpeechTracker:
    """Silero's hysteresis over frame probabilities, incrementally: frames in, regions out.

    Args:
        threshold: probability at which speech starts.
        min_silence: seconds below ``threshold - 0.15`` that end a region.
        min_region: regions shorter than this (before padding) are dropped.
        pad: seconds added on each side of a region, never overlapping the previous one.
        frame_seconds: duration of one frame.

    Attributes:
        start: start of the open region in seconds, or ``None``.
        known_end: seconds up to which the open region is known to be speech.

    Example:
        >>> tracker = SpeechTracker(frame_seconds=0.1, min_silence=0.3, pad=0.0)
        >>> tracker.feed([0.1, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])
        [(0.1, 0.5)]
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_silence: float = MIN_SILENCE,
        min_region: float = MIN_REGION,
        pad: float = SPEECH_PAD,
        frame_seconds: float = VAD_FRAME / SAMPLING_RATE,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: expected a probability between 0 and 1, got {threshold}")
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_silence = min_silence
        self.min_region = min_region
        self.pad = pad
        self.frame_seconds = frame_seconds
        self.n_frames = 0
        self.start: float | None = None
        self.known_end = 0.0
        self._speech_start = 0.0
        self._silence_start: float | None = None
        self._previous_end = 0.0

    def feed(self, probabilities) -> list[tuple[float, float]]:
        """Regions ``(start, end)`` in seconds closed by these frames, in time order."""
        closed = []
        for p in probabilities:
            t = self.n_frames * self.frame_seconds
            self.n_frames += 1
            if p >= self.threshold:
                self._silence_start = None
                if self.start is None:
                    self._speech_start = t
                    self.start = round(max(t - self.pad, self._previous_end), 6)
                self.known_end = t + self.frame_seconds
            elif self.start is not None and p < self.neg_threshold:
                if self._silence_start is None:
                    self._silence_start = t
                if t + self.frame_seconds - self._silence_start >= self.min_silence - 1e-9:
                    region = self._close(self._silence_start)
                    if region:
                        closed.append(region)
            elif self.start is not None and self._silence_start is None:
                self.known_end = t + self.frame_seconds
        return closed

    def finish(self, duration: float) -> list[tuple[float, float]]:
        """Close the open region at the end of a recording ``duration`` seconds long."""
        if self.start is None:
            return []
        end = self._silence_start if self._silence_start is not None else duration
        region = self._close(min(end, duration), limit=duration)
        return [region] if region else []

    def _close(self, speech_end: float, limit: float = math.inf) -> tuple[float, float] | None:
        start, speech_start = self.start, self._speech_start
        self.start, self._silence_start = None, None
        if speech_end - speech_start < self.min_region - 1e-9:
            return None
        end = round(min(speech_end + self.pad, limit), 6)
        self._previous_end = end
        return (start, end)


def speech_regions(signal: np.ndarray, *, threshold: float = 0.5) -> list[tuple[float, float]]:
    """Speech regions ``(start, end)`` in seconds of a whole 16 kHz signal in memory.

    The same detector as :func:`predict_timeline` uses, for short signals and tests.

    Example:
        >>> import numpy as np
        >>> speech_regions(np.zeros(32000, dtype=np.float32))
        []
    """
    signal = np.asarray(signal, dtype=np.float32)
    n = signal.shape[0]
    padded = np.concatenate([signal, np.zeros(-n % VAD_FRAME, dtype=np.float32)])
    tracker = SpeechTracker(threshold=threshold)
    return tracker.feed(SileroVAD()(padded)) + tracker.finish(n / SAMPLING_RATE)


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
# Streaming decode
# ---------------------------------------------------------------------------------------------


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
        AudioError: missing, empty, undecodable, truncated, or NaN/inf samples; the message
            names the file, the reason and, for a failure mid-file, the time.

    Example:
        >>> import numpy as np, soundfile as sf, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
        >>> sf.write(path, np.zeros((48000 * 25, 2), dtype=np.float32), 48000)
        >>> lengths = [len(block) for block in stream_audio(path)]
        >>> len(lengths), sum(lengths)  # 25 s at 48 kHz stereo → 16 kHz mono, in 10 s blocks
        (3, 400000)
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty: the file is 0 bytes")
    try:
        sound = sf.SoundFile(str(path))
    except Exception as error:
        raise AudioError(path, f"cannot decode audio ({_short(error)}); is the file truncated or not audio?") from error
    check_complete(path)
    with sound:
        file_rate = sound.samplerate
        resampler = (
            soxr.ResampleStream(file_rate, SAMPLING_RATE, 1, dtype="float32", quality="HQ")
            if file_rate != SAMPLING_RATE
            else None
        )
        block_frames = max(1, int(block_seconds * file_rate))
        position = 0
        n_read = 0
        while True:
            try:
                data = sound.read(block_frames, dtype="float32", always_2d=True)
            except Exception as error:
                raise AudioError(
                    path,
                    f"cannot decode audio after {position / file_rate:.1f} s ({_short(error)}); is the file truncated?",
                ) from error
            last = data.shape[0] < block_frames
            if data.shape[0] and not np.isfinite(data).all():
                bad = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
                raise AudioError(path, f"holds NaN or infinite samples at {(position + bad) / file_rate:.3f} s")
            position += data.shape[0]
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if resampler is not None:
                mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
            if mono.shape[0]:
                n_read += mono.shape[0]
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break
        if position == 0:
            raise AudioError(path, "empty: the file holds no samples")


class _Samples:
    """The recent part of a 16 kHz stream: append at the end, drop from the start, slice by time."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.float32)
        self.offset = 0  # sample index of data[0]

    @property
    def end(self) -> int:
        return self.offset + self.data.shape[0]

    def append(self, block: np.ndarray) -> None:
        self.data = np.concatenate([self.data, block])

    def slice(self, start: float, end: float) -> np.ndarray:
        a = max(int(round(start * SAMPLING_RATE)), self.offset)
        b = min(int(round(end * SAMPLING_RATE)), self.end)
        return self.data[a - self.offset : max(a, b) - self.offset].copy()

    def drop_before(self, seconds: float) -> None:
        keep = int(seconds * SAMPLING_RATE) - self.offset
        if keep > 0:
            self.data = self.data[keep:].copy()
            self.offset += keep


# ---------------------------------------------------------------------------------------------
# The timeline
# ---------------------------------------------------------------------------------------------


def predict_timeline(
    predictor,
    path: str | Path,
    *,
    window: float = 4.0,
    hop: float | None = None,
    vad: bool = True,
    progress: Callable[[float], Any] | None = None,
    context: float = CONTEXT,
    min_speech: float = MIN_WINDOW,
    threshold: float = 0.5,
    min_confidence: float | None = None,
    batch_seconds: float = 30.0,
) -> Iterator[dict]:
    """Emotion segments over a recording of any length, streamed in bounded memory.

    Windows are cut inside speech regions found by Silero VAD (the module docstring tells
    exactly how); each window becomes one segment.

    Args:
        predictor: a :class:`~speech_emotion.inference.predictor.Predictor` (anything with
            ``predict(list_of_16k_signals)``).
        path: audio file in any format libsndfile reads, any rate and channel count.
        window: window length in seconds (at least 0.5).
        hop: seconds between window starts inside a region; ``None`` means ``window``
            (windows do not overlap).
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

    Yields:
        ``{"start", "end", "label", "probabilities"}`` with times in seconds rounded to the
        millisecond, in time order (plus ``"uncertain"`` with ``min_confidence``).

    Raises:
        AudioError: the file is missing or unreadable (possibly after some segments were
            yielded, for a file corrupt in the middle).
        ImportError: ``vad=True`` without the ``silero-vad`` package.
        ValueError: ``window``, ``hop`` or ``min_speech`` out of range.

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
    hop = window if hop is None else hop
    if not window >= MIN_WINDOW:
        raise ValueError(f"window: expected at least {MIN_WINDOW} s, got {window} s")
    if not hop > 0:
        raise ValueError(f"hop: expected a positive number of seconds, got {hop} s")
    if not context >= 0:
        raise ValueError(f"context: expected seconds >= 0, got {context} s")
    if not 0 < min_speech <= window:
        raise ValueError(f"min_speech: expected between 0 and window={window} s, got {min_speech} s")
    blocks = stream_audio(path)
    first = next(blocks, None)  # raise on an unreadable file before loading the VAD
    if first is None:
        return
    detector = SileroVAD() if vad else None
    tracker = SpeechTracker(threshold=threshold) if vad else None
    windower = Windower(window=window, hop=hop, min_speech=min_speech)
    samples = _Samples()
    vad_pending = np.zeros(0, dtype=np.float32)  # samples not yet passed to the VAD (< one frame)
    waiting: deque[tuple[float, float, float, float]] = deque()  # (start, end, audio from, audio to)
    batch: list[tuple[float, float, np.ndarray]] = []
    batch_samples = 0
    reported = 0.0
    if not vad:
        windower.open(0.0)

    def add(windows: list[tuple[float, float]]) -> None:
        for start, end in windows:
            waiting.append((start, end, max(0.0, start - context), end + context))

    def release(final: bool) -> Iterator[dict]:
        """Windows whose audio is all decoded go to the batch; full batches are predicted."""
        nonlocal batch_samples
        while waiting and (final or waiting[0][3] <= samples.end / SAMPLING_RATE):
            start, end, audio_from, audio_to = waiting.popleft()
            if float(np.abs(samples.slice(start, end)).max(initial=0.0)) < _SILENCE_PEAK:
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


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
