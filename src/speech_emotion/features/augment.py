"""Training-time augmentation of the audio: speed perturbation and additive noise at a given SNR.

Each augmentation is computed once per clip and cached in the feature store under its own key
(the clip's content hash, the encoder, and the augmentation's own description), so a changed
augmentation is a new entry, never a stale one (DESIGN invariant 2). Noise is drawn from a
generator seeded by the clip's content hash and the augmentation: the same clip always gets the
same noise.

Example:
    >>> import numpy as np
    >>> clip = 0.3 * np.sin(np.arange(16000) / 10).astype(np.float32)
    >>> Augmentation.parse("speed:1.1").apply(clip, "ab" * 32).shape  # 10% faster: 10% fewer samples
    (14545,)
    >>> noisy = Augmentation.parse("noise:10").apply(clip, "ab" * 32)
    >>> round(float(10 * np.log10(np.mean(clip ** 2) / np.mean((noisy - clip) ** 2))), 1)  # the SNR asked for
    10.0
    >>> Augmentation.parse("reverb:3")
    Traceback (most recent call last):
    ...
    ValueError: --augment 'reverb:3': expected speed:FACTOR (e.g. speed:0.9, 0.5 to 2) or noise:SNR_DB
    (e.g. noise:10, -10 to 60)
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only where a clip is altered: parsing stays cheap for the command line
    import numpy as np

KINDS = {"speed": (0.5, 2.0), "noise": (-10.0, 60.0)}
"""Each kind of augmentation and the range of its value (a speed factor, an SNR in dB)."""


@dataclass(frozen=True)
class Augmentation:
    """One way to alter a clip: ``speed`` (resampled by ``value``: tempo and pitch together, as Kaldi's speed
    perturbation) or ``noise`` (white Gaussian noise at ``value`` dB signal-to-noise ratio)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """``speed:0.9`` or ``noise:10``.

        Raises:
            ValueError: another kind, or a value out of range.
        """
        kind, _, value = str(text).strip().partition(":")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        low, high = KINDS.get(kind, (0, -1))
        if not low <= number <= high:
            raise ValueError(
                f"--augment {text!r}: expected speed:FACTOR (e.g. speed:0.9, 0.5 to 2) or noise:SNR_DB "
                "(e.g. noise:10, -10 to 60)"
            )
        return cls(kind, number)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def to_dict(self) -> dict:
        """What the feature store keys the augmented clip's entry with."""
        return {"augmentation": asdict(self), "implementation": "augment/1"}

    def apply(self, signal: np.ndarray, audio_hash: str) -> np.ndarray:
        """The altered clip (float32, 16 kHz); noise is seeded by the clip's ``audio_hash``."""
        import numpy as np

        signal = np.asarray(signal, dtype=np.float32)
        if self.kind == "speed":
            import soxr

            # Played `value` times faster: the clip resampled as if recorded at rate * value.
            return soxr.resample(signal, 16000 * self.value, 16000, quality="HQ").astype(np.float32)
        seed = int.from_bytes(hashlib.sha256(f"{audio_hash}|{self}".encode()).digest()[:8], "little")
        noise = np.random.default_rng(seed).standard_normal(len(signal))
        power = float(np.mean(signal.astype(np.float64) ** 2))
        noise *= np.sqrt(power / 10 ** (self.value / 10) / np.mean(noise**2))
        return np.clip(signal + noise, -1.0, 1.0).astype(np.float32)
