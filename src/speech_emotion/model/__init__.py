"""Classifier heads, model bundles and what they record: metadata, calibration, metrics.

The torch-free parts (:mod:`~speech_emotion.model.metadata`, calibration, metrics) import without
torch; the head and the bundle loader (torch) are imported on first use.
"""

from speech_emotion.model.metadata import BundleMeta
from speech_emotion.model.metadata import EncoderRef

__all__ = ["Bundle", "BundleMeta", "EmotionHead", "EncoderRef", "HeadConfig", "load_bundle", "save_bundle"]

_TORCH_NAMES = {
    "EmotionHead": "speech_emotion.model.head",
    "HeadConfig": "speech_emotion.model.head",
    "Bundle": "speech_emotion.model.bundle",
    "load_bundle": "speech_emotion.model.bundle",
    "save_bundle": "speech_emotion.model.bundle",
}


def __getattr__(name: str):
    # The head and the bundle need torch: import them only when asked for, so that the ONNX
    # backend, which reads model.json through this package, never loads torch.
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'speech_emotion.model' has no attribute {name!r}")
