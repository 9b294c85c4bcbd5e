"""Watching a run: its status file, a snapshot of its folder, a live Rich view or plain lines."""

from speech_emotion.monitor.snapshot import RunSnapshot
from speech_emotion.monitor.snapshot import read_run
from speech_emotion.monitor.snapshot import watch
from speech_emotion.monitor.view import PlainLines
from speech_emotion.monitor.view import render
from speech_emotion.training.run_folder import RunStatus
from speech_emotion.training.run_folder import read_status

__all__ = ["PlainLines", "RunSnapshot", "RunStatus", "read_run", "read_status", "render", "watch"]
