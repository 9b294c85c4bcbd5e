"""openSMILE eGeMAPSv02 functionals: the classic hand-crafted baseline (frozen API only)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.encoders.base import Encoder
from speech_emotion.features.encoders.fingerprint import hash_json

logger = logging.getLogger(__name__)


class EgemapsEncoder(Encoder):
    """openSMILE eGeMAPSv02 functionals: 88 hand-crafted features per clip.

    ``features`` returns arrays of shape ``(1, 88)``. openSMILE needs at least 0.06 s
    (960 samples) to compute any functional: shorter signals raise a ValueError. A functional
    that openSMILE still leaves undefined (NaN or infinite) on a longer clip is replaced by 0
    and logged as a warning, so that the store and the classifier only ever see finite
    numbers; this is recorded as ``preprocessing["non_finite"] == "zero"``.

    It implements the frozen API only: there is nothing to fine-tune
    (:func:`~speech_emotion.features.encoders.finetunable.check_finetunable` says so).

    Use :func:`~speech_emotion.features.encoders.load_encoder` with ``"egemaps"`` to build one.
    """

    family = "egemaps"
    min_samples = 960
    n_layers = 1
    dim = 88

    def __init__(self, *, reference: str):
        try:
            import opensmile
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "encoder 'egemaps' needs the opensmile package, which is not installed; "
                "run pip install 'speech-emotion[egemaps]'"
            ) from exc
        self.reference = reference
        self.device = torch.device("cpu")
        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self.feature_names = list(self._smile.feature_names)
        if len(self.feature_names) != self.dim:
            raise ValueError(
                f"opensmile {opensmile.__version__}: expected {self.dim} eGeMAPSv02 functionals, "
                f"got {len(self.feature_names)}; install opensmile>=2.5"
            )
        self.fingerprint = hash_json(
            {
                "family": self.family,
                "reference": "egemaps",
                "opensmile": opensmile.__version__,
                "feature_set": "eGeMAPSv02",
                "feature_names": self.feature_names,
            }
        )

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate": SAMPLING_RATE,
            "feature_set": "eGeMAPSv02",
            "feature_level": "Functionals",
            "non_finite": "zero",
            "implementation": "egemaps/1",
        }

    def features(
        self,
        signals: Sequence[np.ndarray],
        *,
        batch_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[np.ndarray]:
        """eGeMAPSv02 functionals, one ``(1, 88)`` float32 array per signal.

        Args:
            signals: 1-D float arrays at 16 kHz.
            batch_seconds: Ignored (signals are processed one at a time).
            progress: Called with 1 after each signal.

        Returns:
            For each signal a float32 array of shape ``(1, 88)``, in ``feature_names`` order.

        Raises:
            ValueError: A signal is not 1-D, not finite, or shorter than 960 samples.
        """
        checked = self._check_signals(signals)
        results = []
        for i, signal in enumerate(checked):
            values = np.asarray(self._smile.process_signal(signal, SAMPLING_RATE).to_numpy(), dtype=np.float64)
            values = values.reshape(1, self.dim)
            bad = ~np.isfinite(values)
            if bad.any():
                names = [self.feature_names[j] for j in np.flatnonzero(bad[0])]
                logger.warning(
                    "signals[%d]: openSMILE left %d of %d eGeMAPS functionals undefined (%s); set to 0",
                    i,
                    len(names),
                    self.dim,
                    ", ".join(names[:5]) + (", …" if len(names) > 5 else ""),
                )
                values[bad] = 0.0
            results.append(values.astype(np.float32))
            if progress is not None:
                progress(1)
        return results

    def frames(self, signal: np.ndarray) -> np.ndarray:
        """Not available: eGeMAPS functionals have no frame-level hidden states.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError("encoder 'egemaps' has no frame-level hidden states; use features()")
