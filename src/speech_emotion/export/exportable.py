"""What no export can carry, refused before any work with the fix named: one check for ONNX and Hugging Face."""

from __future__ import annotations

from typing import TYPE_CHECKING

from speech_emotion.errors import BundleError
from speech_emotion.inference.backends import trained_precision

if TYPE_CHECKING:  # the predictor module loads torch; this check needs only what the predictor holds
    from speech_emotion.inference.predictor import Predictor

EXPORTABLE_FAMILIES = ("whisper", "ssl")
"""Encoder families with a neural network to trace and a stock transformers class (eGeMAPS has neither)."""


def check_exportable(predictor: Predictor, *, target: str) -> None:
    """Refuse a model that an export to ``target`` (``"ONNX"``, ``"Hugging Face"``) would change or cannot hold.

    Raises:
        BundleError: bf16 features (exports compute fp32 ones), an encoder family other than
            Whisper or wav2vec 2.0, per-speaker standardisation (``--speaker-norm``), or speaker
            statistics from ``ser adapt --per-speaker`` (an export labels single clips of nobody in particular).
    """
    bundle = predictor.backend.bundle
    precision = trained_precision(predictor.meta)
    if precision != "fp32":
        raise BundleError(
            f"{bundle.path}: the model was trained on {precision} features, and a {target} export computes fp32 ones; "
            "train it with --precision fp32 to export it"
        )
    family = bundle.meta.encoder.family
    if family not in EXPORTABLE_FAMILIES:
        raise BundleError(
            f"{bundle.path}: encoder family {family!r} cannot be exported to {target} (openSMILE is neither a neural "
            "network nor a transformers model); train on a Whisper or wav2vec 2.0-family encoder to export"
        )
    if bundle.meta.speaker_norm:
        raise BundleError(
            f"{bundle.path}: the model standardises features per speaker (--speaker-norm) and cannot label single "
            "clips; retrain without --speaker-norm to export it"
        )
    if bundle.speakers:
        adapted_from = bundle.meta.adaptation.get("adapted_from")
        raise BundleError(
            f"{bundle.path}: the model keeps statistics of {len(bundle.speakers)} speaker(s) (ser adapt "
            "--per-speaker), which an export over single clips is never told to use, so an export would drop them; "
            "export the model it was adapted from"
            + (f" ({adapted_from})" if adapted_from else "")
            + ", or keep this one for `ser predict --speaker`"
        )
