"""Follow a run on the host: `ser monitor RUN` over ssh, or its metrics.jsonl where the host lacks it."""

from __future__ import annotations

import inspect
import shlex
import subprocess
import sys

from speech_emotion.remote.job import SER
from speech_emotion.remote.ssh import Host, RemoteError, check_no_nul, last_lines
from speech_emotion.remote.state import DEFAULT_REMOTE_DIR, RemoteRun

MONITOR_FILE = "cli/monitor.py"
"""Where `ser monitor` lives; when the host's package lacks it, monitor follows metrics.jsonl."""


def format_epoch(record: dict) -> str:
    """One metrics.jsonl record as a line for people (self-contained: it also runs on the host).

    >>> format_epoch({"epoch": 3, "train_loss": 0.41234, "val_uar": 0.5, "alarms": []})
    'epoch 3  train_loss 0.4123  val_uar 50.0%'
    """
    parts = [f"epoch {record.get('epoch')}"]
    for key, value in record.items():
        if key == "epoch" or value is None or value == [] or value == {}:
            continue
        if isinstance(value, float):
            value = f"{value:.1%}" if any(word in key for word in ("accuracy", "uar", "f1")) else f"{value:.4f}"
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        parts.append(f"{key} {value}")
    return "  ".join(parts)


FORMAT_LINES = inspect.getsource(format_epoch) + (
    "\nimport json, sys\nfor line in sys.stdin:\n"
    "    try:\n        print(format_epoch(json.loads(line)), flush=True)\n"
    "    except ValueError:\n        print(line, end='', flush=True)\n"
)
"""``tail metrics.jsonl | python -c FORMAT_LINES``: per-epoch lines without importing speech_emotion."""


def monitor_script(run: RemoteRun, python: str, *, follow: bool = True) -> str:
    """sh for :func:`monitor`: `ser monitor RUN` if the host has it, else follow metrics.jsonl."""
    q = shlex.quote
    metrics, pid_file, exit_file = q(run.run + "/metrics.jsonl"), q(run.job + "/pid"), q(run.job + "/exit_code")
    find_monitor = (  # a file check: importing speech_emotion just to look would take seconds
        "import importlib.util, pathlib, sys; spec = importlib.util.find_spec('speech_emotion'); "
        f"sys.exit(not (spec and any((pathlib.Path(p) / {MONITOR_FILE!r}).is_file() for p in "
        "spec.submodule_search_locations or ())))"
    )
    formatter = f"{q(python)} -u -c {q(FORMAT_LINES)}"
    where = f"{run.run} under {run.remote_dir}"
    return (
        f"cd -- {q(run.dir)} || {{ echo {q(f'no folder {run.dir} on this host; check --remote-dir')} >&2; exit 3; }}\n"
        f"if [ ! -d {q(run.run)} ] && [ ! -d {q(run.job)} ]; then echo "
        f"{q(f'no run {where} (neither {run.run}/ nor {run.job}/); check RUN and --remote-dir')} >&2; exit 3; fi\n"
        f"if [ ! -d {q(run.run)} ] && [ -f {exit_file} ]; then printf '%s%s%s\\n' 'the job ended with exit code ' "
        f'"$(cat -- {exit_file})" '
        f"{q(f' before creating {run.run}/; `ser remote status` shows the end of its log')} >&2; exit 1; fi\n"
        f"if {q(python)} -c {q(find_monitor)} 2>/dev/null; then exec {q(python)} -c {q(SER)} monitor "
        f"{q(run.run)}{'' if follow else ' --no-follow'}; fi\n"
        f"echo {q(f'(ser monitor is not available on this host: following {run.run}/metrics.jsonl)')} >&2\n"
        f"pid=$(cat -- {pid_file} 2>/dev/null)\n"
        f'if {"false" if follow else "true"} || [ -f {exit_file} ] || [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; '
        f"then cat -- {metrics} | {formatter}; exit; fi\n"
        f'tail -n +1 -F --pid="$pid" -- {metrics} 2>/dev/null | {formatter}\n'
    )


def monitor(
    host: Host,
    run: str,
    *,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    python: str | None = None,
    follow: bool = True,
    tty: bool | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess:
    """Follow a run on the host: runs `ser monitor RUN` there over ssh.

    With a terminal here (``tty``, default: whether stdout is one) ssh allocates one there,
    so `ser monitor` shows its live view; otherwise it prints plain lines. When the host's
    speech_emotion has no `ser monitor`, the run's ``metrics.jsonl`` is followed with
    ``tail -F`` until the job ends (a note on stderr says so). Ends when the run ends or on Ctrl-C;
    with ``follow=False`` it prints the run's state once.

    The exit code is `ser monitor`'s (0: finished, 1: failed or died), 1 when the job ended
    before creating RUN, 3 when there is no such run.

    Returns:
        The completed ssh process (``stdout``/``stderr`` text when ``capture``).
    """
    remote = RemoteRun(remote_dir, run)
    python = check_no_nul("--python", python or sys.executable)
    tty = sys.stdout.isatty() if tty is None else tty
    script = monitor_script(remote, python, follow=follow)
    args = host.ssh_args(tty=tty) + [f"sh -c {shlex.quote(script)}"]
    done = subprocess.run(args, capture_output=capture, text=True)
    if done.returncode == 255:
        raise RemoteError(
            f"ssh {host}: monitor failed: {last_lines(done.stderr) if capture else 'see the message above'}"
        )
    return done
