"""Frozen speech encoders and the label-free feature store."""

from speech_emotion.features.encoders import SAMPLING_RATE
from speech_emotion.features.encoders import SSL_MODEL_TYPES
from speech_emotion.features.encoders import EgemapsEncoder
from speech_emotion.features.encoders import Encoder
from speech_emotion.features.encoders import SSLEncoder
from speech_emotion.features.encoders import WhisperEncoder
from speech_emotion.features.encoders import load_encoder
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
    "SSLEncoder",
    "SignalSource",
    "WhisperEncoder",
    "extract_features",
    "extract_frame_states",
    "load_encoder",
]
