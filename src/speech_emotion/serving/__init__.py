"""The REST service and its web page: ``ser serve`` / :func:`create_app`."""

from speech_emotion.serving.app import create_app
from speech_emotion.serving.limits import ServeLimits
from speech_emotion.serving.server import run_server
from speech_emotion.serving.uploads import UploadError

__all__ = ["ServeLimits", "UploadError", "create_app", "run_server"]
