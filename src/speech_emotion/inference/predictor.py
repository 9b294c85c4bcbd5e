"""Predictor: one line from a trained model to a prediction.

``Predictor.from_pretrained(MODEL)(path_or_array, sampling_rate=...)`` returns
``{"label": ..., "probabilities": {label: p}}`` with the bundle's class names. The same
object serves ``ser predict``, ``ser evaluate`` and the REST service.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE, check_signal, load_audio
from speech_emotion.errors import BundleError
from speech_emotion.model.bundle import Bundle, load_bundle
from speech_emotion.training.loop import predict_proba

log = logging.getLogger(__name__)


class Predictor:
    """Encoder + head of a bundle, run as ``preprocess → _forward → postprocess``.

    Args:
        bundle: a loaded bundle.
        encoder: the frozen encoder the bundle was trained on.
    """

    def __init__(self, bundle: Bundle, encoder):
        self.bundle = bundle
        self.encoder = encoder
        self.classes = bundle.classes

    @classmethod
    def from_pretrained(cls, model: str | Path, *, encoder: str | None = None, allow_encoder_mismatch: bool = False) -> "Predictor":
        """Load a run folder or bundle folder and the encoder it names.

        Args:
            model: a run folder made by ``ser train``, or its ``model/`` folder.
            encoder: where to find the encoder when it has moved (a folder or hub id);
                by default the path recorded at training, then the reference as given.
            allow_encoder_mismatch: load even when the encoder's fingerprint differs from
                the one the head was trained on (predictions are then unreliable).

        Raises:
            BundleError: bundle invalid, encoder not found, or fingerprint mismatch.
        """
        from speech_emotion.features.encoders import load_encoder

        bundle = load_bundle(model)
        recorded = bundle.meta["encoder"]
        candidates = [encoder] if encoder else [c for c in (recorded.get("path"), recorded["reference"]) if c]
        errors = []
        for candidate in candidates:
            try:
                loaded = load_encoder(candidate)
                break
            except (OSError, ValueError) as error:
                errors.append(f"{candidate}: {error}")
        else:
            raise BundleError(
                f"{bundle.path}: cannot load the encoder this model was trained on:\n  " + "\n  ".join(errors)
                + "\npass encoder=... (--encoder) pointing to a copy of it"
            )
        if loaded.fingerprint != recorded["fingerprint"] or loaded.preprocessing != bundle.meta.get("preprocessing", loaded.preprocessing):
            message = (
                f"{bundle.path}: encoder {loaded.reference!r} has fingerprint {loaded.fingerprint[:12]}…, but the model was "
                f"trained on {recorded['reference']!r} with fingerprint {recorded['fingerprint'][:12]}… (other weights, "
                "config or preprocessing)"
            )
            if not allow_encoder_mismatch:
                raise BundleError(message + "; pass the original encoder, or allow_encoder_mismatch=True (--allow-encoder-mismatch) to force it")
            log.warning(message + "; continuing because the mismatch was allowed")
        return cls(bundle, loaded)

    def preprocess(self, inputs: str | Path | np.ndarray, sampling_rate: int | None = None) -> np.ndarray:
        """A file path or an array → mono float32 signal at 16 kHz.

        Raises:
            AudioError: unreadable, empty, too short, silent or non-finite audio.
            ValueError: an array without ``sampling_rate``.
        """
        if isinstance(inputs, (str, Path)):
            return load_audio(inputs)[0]
        if sampling_rate is None:
            raise ValueError(f"an array input needs sampling_rate=...; this model expects {SAMPLING_RATE} Hz and resamples others")
        return check_signal(np.asarray(inputs), sampling_rate)[0]

    def _forward(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities, shape (n, K), for decoded signals."""
        if self.bundle.meta.get("speaker_norm"):
            raise ValueError(
                f"{self.bundle.path}: this model standardises features per speaker (--speaker-norm) and cannot label "
                "single clips; score it with `ser evaluate` on several clips per speaker, or train without --speaker-norm"
            )
        features = np.stack(self.encoder.features(list(signals)))
        return self.predict_features(features)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled encoder features (n, n_layers, dim)."""
        return predict_proba(self.bundle.head, features, temperature=self.bundle.temperature)

    def postprocess(self, probabilities: np.ndarray, min_confidence: float | None = None) -> dict:
        """``{"label", "probabilities"}`` for one row; ``label`` is ``None`` and ``uncertain`` true below ``min_confidence``."""
        best = int(np.argmax(probabilities))
        result = {"label": self.classes[best], "probabilities": {c: float(p) for c, p in zip(self.classes, probabilities)}}
        if min_confidence is not None:
            result["uncertain"] = bool(probabilities[best] < min_confidence)
            if result["uncertain"]:
                result["label"] = None
        return result

    def __call__(self, inputs: str | Path | np.ndarray, sampling_rate: int | None = None, *, min_confidence: float | None = None) -> dict:
        """Predict one clip (a file path, or an array with its ``sampling_rate``)."""
        return self.postprocess(self._forward([self.preprocess(inputs, sampling_rate)])[0], min_confidence)

    def predict(self, signals: Sequence[np.ndarray], *, min_confidence: float | None = None) -> list[dict]:
        """Predict many decoded 16 kHz signals at once (batched by length inside the encoder)."""
        return [self.postprocess(p, min_confidence) for p in self._forward(signals)]
