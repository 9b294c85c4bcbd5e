"""Frozen speech encoders and the label-free feature store.

Importing this package does not import torch: the encoders that need it are imported on
first use (see :mod:`speech_emotion.features.encoders`).
"""

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.encoders import Encoder
from speech_emotion.features.encoders import OnnxEncoder
from speech_emotion.features.store import FeatureStore
from speech_emotion.features.store import SignalSource
from speech_emotion.features.store import extract_features
from speech_emotion.features.store import extract_frame_states

__all__ = [
    "SAMPLING_RATE",
    "SSL_MODEL_TYPES",
    "EgemapsEncoder",
    "Encoder",
    "FeatureStore",
    "OnnxEncoder",
    "SSLEncoder",
    "SignalSource",
    "WhisperEncoder",
    "extract_features",
    "extract_frame_states",
    "load_encoder",
]

# Imported from speech_emotion.features.encoders on first use: their modules import torch.
_TORCH_NAMES = frozenset({"SSL_MODEL_TYPES", "EgemapsEncoder", "SSLEncoder", "WhisperEncoder", "load_encoder"})


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from speech_emotion.features import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'speech_emotion.features' has no attribute {name!r}")
