"""Voice activity: where a 16 kHz recording holds speech, streamed block by block.

:class:`SileroVAD` gives a speech probability for every 32 ms frame (the Silero VAD model
shipped inside the ``silero-vad`` package, run offline with onnxruntime, no torch).
:class:`SpeechTracker` turns those probabilities into speech regions with Silero's own
hysteresis: a region opens when the probability reaches ``threshold`` (0.5) and closes after
:data:`MIN_SILENCE` seconds below ``threshold - 0.15``; regions shorter than
:data:`MIN_REGION` are dropped and the rest are padded by :data:`SPEECH_PAD` on each side.
:func:`~speech_emotion.inference.timeline.predict_timeline` cuts its windows inside these
regions.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE

MIN_SILENCE = 0.3
"""Seconds of non-speech that end a speech region; shorter pauses are bridged."""

MIN_REGION = 0.25
"""Speech regions shorter than this, in seconds, are dropped as clicks or noise."""

SPEECH_PAD = 0.1
"""Seconds added on each side of a speech region (never into the previous region)."""

VAD_FRAME = 512
"""Samples per VAD frame at 16 kHz (32 ms)."""

SILERO_VAD_VERSION = "6.2.3"
"""The silero-vad release whose model layout :class:`SileroVAD` was written against."""


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

    The same detector as :func:`~speech_emotion.inference.timeline.predict_timeline` uses, for short
    signals and tests.

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
