"""Classifier heads and model bundles."""

from speech_emotion.model.head import EmotionHead
from speech_emotion.model.head import HeadConfig

__all__ = ["EmotionHead", "HeadConfig"]
