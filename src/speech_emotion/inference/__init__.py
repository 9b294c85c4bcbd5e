"""Prediction and evaluation with trained bundles."""

from speech_emotion.inference.predictor import Predictor

__all__ = ["Predictor"]
