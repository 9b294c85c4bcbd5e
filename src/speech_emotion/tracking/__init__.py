"""Experiment tracking: mirror a run folder to MLflow (optional dependency, imported lazily)."""

from speech_emotion.tracking.mlflow_run import MlflowTracker
from speech_emotion.tracking.mlflow_run import TrackingError
from speech_emotion.tracking.mlflow_run import tracking_uri

__all__ = ["MlflowTracker", "TrackingError", "tracking_uri"]
