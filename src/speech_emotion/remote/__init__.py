"""Training on another machine over SSH: sync, launch detached, follow, fetch and verify.

Built on the OpenSSH client and rsync (run as subprocesses), so ssh config names, agents,
jump hosts and known_hosts behave as in a terminal.
"""

from speech_emotion.remote.fetch import fetch
from speech_emotion.remote.follow import monitor
from speech_emotion.remote.job import launch
from speech_emotion.remote.ssh import Host
from speech_emotion.remote.ssh import RemoteError
from speech_emotion.remote.state import DEFAULT_REMOTE_DIR
from speech_emotion.remote.state import status

__all__ = ["DEFAULT_REMOTE_DIR", "Host", "RemoteError", "fetch", "launch", "monitor", "status"]
