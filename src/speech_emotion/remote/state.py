"""A run on the host: where it lives, the sh that reads its state, and :func:`status`.

Example:
    >>> RemoteRun("ser-remote", "runs/a").job, RemoteRun("~/x", "/abs/run").from_home
    ('runs/a.job', '/abs/run')
    >>> RemoteRun("ser-remote", "runs/../..")
    Traceback (most recent call last):
    ...
    ValueError: run 'runs/../..': expected a folder inside --remote-dir (or an absolute path) without '..' parts, ...
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Mapping

from speech_emotion.remote.ssh import Host, RemoteError, home_relative

DEFAULT_REMOTE_DIR = "ser-remote"


@dataclass(frozen=True)
class RemoteRun:
    """A run folder on the host: ``run`` is absolute or relative to ``remote_dir``."""

    remote_dir: str
    run: str

    def __post_init__(self) -> None:
        if not self.run or self.run.strip("/.") == "":
            raise ValueError(f"run {self.run!r}: expected a run folder name such as runs/base")
        if "\0" in self.run:
            raise ValueError(f"run {self.run!r}: a NUL character cannot be part of a folder name; remove it")
        if ".." in self.run.split("/"):
            # `ser train --force` empties its --out: runs/.. would be the whole remote dir.
            raise ValueError(
                f"run {self.run!r}: expected a folder inside --remote-dir (or an absolute path) without '..' parts, "
                "e.g. runs/base"
            )
        if not self.remote_dir or any(ord(char) < 32 or ord(char) == 127 for char in self.remote_dir):
            raise ValueError(
                f"--remote-dir {self.remote_dir!r}: expected a folder name without control characters (newline, tab, "
                "NUL), e.g. ~/ser-remote"
            )

    @property
    def dir(self) -> str:
        """``remote_dir`` relative to the remote home (or absolute); every script cds there first."""
        return home_relative(self.remote_dir)

    @property
    def job(self) -> str:
        return self.run.rstrip("/") + ".job"

    @property
    def from_home(self) -> str:
        """The run folder as rsync needs it (relative to the remote home, or absolute)."""
        return self.run if posixpath.isabs(self.run) else posixpath.join(self.dir, self.run)


def parse_sections(text: str) -> dict[str, str]:
    """Split script output into sections started by lines ``@@name``.

    >>> parse_sections("@@pid\\n42\\n@@exit\\n")
    {'pid': '42', 'exit': ''}
    """
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@") and re.fullmatch(r"@@[a-z_]+", line.strip()):
            current = line.strip()[2:]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def state_script(run: RemoteRun, *, log_lines: int = 15) -> str:
    """sh that prints the job's files and run folder state as ``@@`` sections (cwd: remote dir).

    Each marker starts a line of its own (a file without a final newline cannot swallow it),
    and what others wrote line by line (file names, the log) is prefixed with '|', so no line
    of it can pose as a marker.
    """
    q = shlex.quote
    job, path = run.job, run.run
    return f"""
echo; echo @@pid; cat -- {q(job + "/pid")} 2>/dev/null
echo; echo @@alive; p=$(cat -- {q(job + "/pid")} 2>/dev/null) && ps -o args= -p "$p" 2>/dev/null
echo; echo @@exit; cat -- {q(job + "/exit_code")} 2>/dev/null
echo; echo @@now; date +%s
echo; echo @@started; cat -- {q(job + "/started")} 2>/dev/null
echo; echo @@ended; cat -- {q(job + "/ended")} 2>/dev/null
echo; echo @@job; cat -- {q(job + "/job.json")} 2>/dev/null
echo; echo @@job_exists; [ -d {q(job)} ] && echo yes
echo; echo @@run_entries; ls -A -- {q(path)} 2>/dev/null | head -n 5 | sed 's/^/|/'
echo; echo @@epochs; [ -f {q(path + "/metrics.jsonl")} ] && wc -l < {q(path + "/metrics.jsonl")}
echo; echo @@last_epoch; tail -n 1 -- {q(path + "/metrics.jsonl")} 2>/dev/null
echo; echo @@results; cat -- {q(path + "/results.json")} 2>/dev/null
echo; echo @@log; tail -n {int(log_lines)} -- {q(job + "/train.log")} 2>/dev/null | sed 's/^/|/'
echo; echo @@end
"""


def unprefixed(text: str) -> list[str]:
    """Lines of a section that :func:`state_script` prefixed with '|' (file names, log lines).

    The prefix keeps a log line such as ``@@exit`` from starting a section of its own.

    >>> unprefixed("|@@exit\\n|0\\n|")
    ['@@exit', '0', '']
    """
    return [line[1:] if line.startswith("|") else line for line in text.splitlines()]


def read_state(host: Host, run: RemoteRun, sections: Mapping[str, str]) -> dict:
    """Turn :func:`state_script` output into the status dict (see :func:`status`)."""
    pid = int(sections["pid"]) if sections.get("pid", "").isdigit() else None
    exit_text = sections.get("exit", "")
    exit_code = int(exit_text) if re.fullmatch(r"-?\d+", exit_text) else None
    alive = pid is not None and "run.sh" in sections.get("alive", "")
    run_entries = [line for line in unprefixed(sections.get("run_entries", "")) if line]
    results = json.loads(sections["results"]) if sections.get("results") else None
    if exit_code is not None:
        state = "finished" if exit_code == 0 else "failed"
    elif alive:
        state = "running"
    elif pid is not None:
        state = "died"  # the wrapper itself is gone without writing an exit code (reboot, kill -9 of the group)
    elif sections.get("job_exists"):
        state = "starting"
    elif results is not None:
        state = "finished"  # trained on the host by hand: no job files, but a complete run
    elif run_entries:
        state = "unknown"
    else:
        raise RemoteError(
            f"no run {run.run!r} under {run.remote_dir} on {host} (neither {run.run}/ nor {run.job}/ exists); "
            f"check RUN and --remote-dir"
        )
    now = int(sections["now"]) if sections.get("now", "").isdigit() else None
    started = int(sections["started"]) if sections.get("started", "").isdigit() else None
    ended = int(sections["ended"]) if sections.get("ended", "").isdigit() else None
    epochs = int(sections["epochs"]) if sections.get("epochs", "").strip().isdigit() else 0
    last = sections.get("last_epoch")
    return {
        "host": str(host),
        "run": run.run,
        "path": run.from_home,
        "state": state,
        "pid": pid,
        "exit_code": exit_code,
        "elapsed_s": (ended or now) - started if started is not None and (ended or now) else None,
        "epochs": epochs,
        "last_epoch": json.loads(last) if last else None,
        "results": summarize_results(results) if results else None,
        "job": json.loads(sections["job"]) if sections.get("job") else None,
        "log_tail": "\n".join(unprefixed(sections.get("log", ""))).strip().splitlines(),
    }


def summarize_results(results: dict) -> dict:
    """The parts of results.json a status line needs (metrics per part, best epoch)."""
    summary = {key: results[key] for key in ("protocol", "best_epoch", "epochs_run", "classes") if key in results}
    for part in ("val", "test"):
        if isinstance(results.get(part), dict):
            summary[part] = {k: results[part][k] for k in ("accuracy", "uar", "macro_f1", "n") if k in results[part]}
    return summary


def status(host: Host, run: str, *, remote_dir: str = DEFAULT_REMOTE_DIR, log_lines: int = 15) -> dict:
    """State of a run on the host: running, finished, failed (exit code), died, starting.

    One ssh call. Reads ``RUN.job/`` (pid, exit code, log) and ``RUN/`` (last line of
    ``metrics.jsonl``, ``results.json``).

    Returns:
        ``{"state", "pid", "exit_code", "elapsed_s", "epochs", "last_epoch", "results",
        "log_tail", "job", "host", "run", "path"}``; ``last_epoch`` is the latest
        metrics.jsonl record, ``results`` the final metrics once finished.

    Raises:
        RemoteError: the connection failed, or neither ``RUN/`` nor ``RUN.job/`` exists.
    """
    remote = RemoteRun(remote_dir, run)
    script = f"cd -- {shlex.quote(remote.dir)} 2>/dev/null || {{ echo @@no_dir; exit 0; }}\n" + state_script(
        remote, log_lines=log_lines
    )
    sections = parse_sections(host.run(script).stdout)
    if "no_dir" in sections:
        raise RemoteError(
            f"{remote.dir} does not exist on {host}; nothing was launched there with --remote-dir {remote_dir}"
        )
    return read_state(host, remote, sections)
