"""Training jobs on a remote host: launch detached, ask their status, follow them.

A launched run lives on the host under ``REMOTE_DIR`` (default ``~/ser-remote``)::

    REMOTE_DIR/project/              this package's source (pyproject.toml, README.md, src/)
    REMOTE_DIR/data/NAME-HASH/       the --data folder, mirrored
    REMOTE_DIR/encoders/NAME-HASH/   a local --encoder folder, mirrored
    REMOTE_DIR/inputs/HASH-NAME      a local --labels / --split file
    REMOTE_DIR/RUN/                  the run folder `ser train` writes (train.log copied in at the end)
    REMOTE_DIR/RUN.job/              run.sh, job.json, pid, started, train.log, ended, exit_code

HASH is taken from the local absolute path, so two local folders with the same name never
share a remote copy, and a second launch from the same folder sends only what changed.
The job files sit beside the run folder, not in it, because `ser train` refuses to write
into a folder that is not empty.

Example:
    >>> RemoteRun("ser-remote", "runs/a").job, RemoteRun("~/x", "/abs/run").from_home
    ('runs/a.job', '/abs/run')
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import posixpath
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from speech_emotion.remote.ssh import Host, RemoteError, SyncStats, home_relative, last_lines, rsync

log = logging.getLogger(__name__)

DEFAULT_REMOTE_DIR = "ser-remote"
INSTALL_MODES = ("auto", "always", "never")

SER = 'import sys; sys.argv[0] = "ser"; from speech_emotion.cli.app import main; main()'
"""``python -c SER ARGS`` runs the `ser` command with that Python, whatever PATH holds."""

MONITOR_FILE = "cli/monitor.py"
"""Where `ser monitor` lives; when the host's package lacks it, monitor follows metrics.jsonl."""

Report = Callable[[str], None]


@dataclass(frozen=True)
class RemoteRun:
    """A run folder on the host: ``run`` is absolute or relative to ``remote_dir``."""

    remote_dir: str
    run: str

    def __post_init__(self) -> None:
        if not self.run or self.run.strip("/.") == "":
            raise ValueError(f"run {self.run!r}: expected a run folder name such as runs/base")

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


def describe_python() -> dict:
    """This Python and the speech_emotion it imports: version, location, source fingerprint.

    The function is self-contained: its source is also sent to the remote Python, so both
    sides compute the fingerprint (sha256 over the package's ``*.py`` files) the same way.

    >>> info = describe_python(); sorted(info)[:3], len(info["fingerprint"])
    (['executable', 'fingerprint', 'location'], 64)
    """
    import hashlib
    import pathlib
    import sys

    info = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        import speech_emotion
    except Exception as error:  # any import failure: missing package, missing dependency
        info["error"] = f"{type(error).__name__}: {error}"
        return info
    root = pathlib.Path(speech_emotion.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    info.update(
        version=getattr(speech_emotion, "__version__", None), location=str(root), fingerprint=digest.hexdigest()
    )
    return info


DESCRIBE = inspect.getsource(describe_python) + "\nimport json\nprint(json.dumps(describe_python()))\n"


def project_root() -> Path | None:
    """The source checkout this speech_emotion was imported from (src layout), if any."""
    import speech_emotion

    root = Path(speech_emotion.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "speech_emotion").is_dir() else None


def remote_slug(path: Path) -> str:
    """A stable remote folder name for a local path: its name plus a hash of where it is.

    >>> remote_slug(Path("/data/ravdess"))
    'ravdess-ffa62ca7'
    """
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


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
    """sh that prints the job's files and run folder state as ``@@`` sections (cwd: remote dir)."""
    q = shlex.quote
    job, path = run.job, run.run
    return f"""
echo @@pid; cat -- {q(job + "/pid")} 2>/dev/null
echo @@alive; p=$(cat -- {q(job + "/pid")} 2>/dev/null) && ps -o args= -p "$p" 2>/dev/null
echo @@exit; cat -- {q(job + "/exit_code")} 2>/dev/null
echo @@now; date +%s
echo @@started; cat -- {q(job + "/started")} 2>/dev/null
echo @@ended; cat -- {q(job + "/ended")} 2>/dev/null
echo @@job; cat -- {q(job + "/job.json")} 2>/dev/null
echo @@job_exists; [ -d {q(job)} ] && echo yes
echo @@run_entries; ls -A -- {q(path)} 2>/dev/null | head -n 5
echo @@epochs; [ -f {q(path + "/metrics.jsonl")} ] && wc -l < {q(path + "/metrics.jsonl")}
echo @@last_epoch; tail -n 1 -- {q(path + "/metrics.jsonl")} 2>/dev/null
echo @@results; cat -- {q(path + "/results.json")} 2>/dev/null
echo @@log; tail -n {int(log_lines)} -- {q(job + "/train.log")} 2>/dev/null
echo @@end
"""


def read_state(host: Host, run: RemoteRun, sections: Mapping[str, str]) -> dict:
    """Turn :func:`state_script` output into the status dict (see :func:`status`)."""
    pid = int(sections["pid"]) if sections.get("pid", "").isdigit() else None
    exit_text = sections.get("exit", "")
    exit_code = int(exit_text) if re.fullmatch(r"-?\d+", exit_text) else None
    alive = pid is not None and "run.sh" in sections.get("alive", "")
    run_entries = [line for line in sections.get("run_entries", "").splitlines() if line]
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
        "log_tail": sections.get("log", "").splitlines(),
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


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate ``--env NAME=VALUE`` names (they become ``export NAME=...`` on the host)."""
    env = dict(env or {})
    for name in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"--env {name!r}: expected NAME=VALUE with a shell variable name (letters, digits, _)")
    return env


def exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def python_error(host: Host, python: str, text: str, rc: int) -> RemoteError:
    if rc == 127 or "not found" in text or "No such file" in text:
        return RemoteError(
            f"{python}: not found on {host}; pass --python with the absolute path of a Python >= 3.10 there "
            f"(non-interactive ssh has a minimal PATH; `ssh {host.target} 'command -v python3'` shows one)"
        )
    return RemoteError(f"{python} on {host} failed (exit {rc}): {last_lines(text)}")


def probe_python(host: Host, *, remote_dir: str, python: str, env: Mapping[str, str]) -> dict:
    """Run :func:`describe_python` with ``python`` on the host."""
    q = shlex.quote
    done = host.run(
        f"cd -- {q(home_relative(remote_dir))} || exit 90\n{exports(env)}{q(python)} -c {q(DESCRIBE)} 2>&1", check=False
    )
    return decode_python(host, python, done.stdout, done.returncode)


def decode_python(host: Host, python: str, text: str, rc: int) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if rc != 0 or not lines:
        raise python_error(host, python, text, rc)
    return json.loads(lines[-1])


def launch(
    host: Host,
    *,
    data: str | Path,
    out: str,
    encoder: str,
    labels: str | None = None,
    split: str | Path | None = None,
    train_options: Sequence[str] = (),
    remote_dir: str = DEFAULT_REMOTE_DIR,
    python: str | None = None,
    install: str = "auto",
    env: Mapping[str, str] | None = None,
    force: bool = False,
    report: Report = log.info,
) -> dict:
    """Sync what a run needs to ``host``, check or install the package, start `ser train` detached.

    Steps, each told through ``report``:

    1. probe (one ssh call): remote folder, rsync, the Python and the speech_emotion it
       imports, and whether the run folder or a job for it already exists;
    2. rsync (skipping what the host already has) the project source, the ``data`` folder,
       a local ``encoder`` folder, and local ``labels``/``split`` files;
    3. ``install``: ``"auto"`` runs ``python -m pip install REMOTE_DIR/project`` only when the
       host's package does not import or its source fingerprint differs from this one;
       ``"always"`` installs; ``"never"`` only checks that it imports;
    4. start ``python -c SER train …`` under ``setsid nohup`` with output to ``RUN.job/train.log``,
       so it survives the ssh session ending; the exit code lands in ``RUN.job/exit_code``.

    Args:
        host: where to run.
        data: local corpus folder (or a CSV/TSV manifest: its folder is synced with it).
        out: run folder on the host, relative to ``remote_dir`` or absolute.
        encoder: a local encoder folder (synced) or a name the host resolves (hub id, egemaps).
        labels: `--labels` value; a local schema file is synced.
        split: a local split file (`ser data split --out`), synced.
        train_options: further `ser train` options, e.g. ``["--epochs", "20", "--warn-only"]``.
        remote_dir: base folder on the host (relative to its home, or absolute).
        python: Python on the host (default: this interpreter's path, ``sys.executable``).
        install: ``"auto"``, ``"always"`` or ``"never"``.
        env: variables exported for the install and the training (``SER_CACHE``, ``CUDA_VISIBLE_DEVICES``…).
        force: replace a non-empty run folder on the host (passes ``--force`` to `ser train`).
        report: called with one line per step.

    Returns:
        ``{"host", "run", "path", "remote_dir", "pid", "log", "synced": {name: stats}, "package": {...},
        "command": [...]}``.

    Raises:
        RemoteError: connection, sync, install or start failed; the run exists or is running.
        FileNotFoundError: a local path does not exist.
        ValueError: bad ``install`` or ``env``.
    """
    if install not in INSTALL_MODES:
        raise ValueError(f"install={install!r}: expected one of {', '.join(INSTALL_MODES)}")
    env = check_env(env)
    python = python or sys.executable
    data = Path(data).resolve()
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such folder")
    if split is not None and not Path(split).expanduser().is_file():
        raise FileNotFoundError(f"--split {split}: no such file")
    remote = RemoteRun(remote_dir, str(out))
    q = shlex.quote

    # 1. probe
    report(f"checking {host}: {python}, rsync, {remote.dir}/{remote.run}")
    non_empty = f'[ -n "$(ls -A -- {q(remote.run)} 2>/dev/null | head -n 1)" ]'
    probe = host.run(
        f"mkdir -p -- {q(remote.dir)} && cd -- {q(remote.dir)} && mkdir -p project data encoders inputs || exit 90\n"
        f"echo @@dir; pwd\necho @@rsync; command -v rsync\n"
        + state_script(remote)
        + ("" if force else f"if {non_empty}; then exit 0; fi\n")  # refused below: no need to start Python
        + f'echo @@python\n{exports(env)}{q(python)} -c {q(DESCRIBE)} 2>&1\necho "@@python_rc\n$?"\n',
        check=False,
    )
    if probe.returncode == 90:
        raise RemoteError(
            f"cannot create or enter {remote.dir} on {host}: {last_lines(probe.stderr)}; choose another --remote-dir"
        )
    sections = parse_sections(probe.stdout)
    try:
        previous = read_state(host, remote, sections)
    except RemoteError:
        previous = None  # nothing there yet
    if previous and previous["state"] in ("running", "starting"):
        raise RemoteError(
            f"{host}:{remote.from_home} is already {previous['state']} (pid {previous['pid']}); follow it with `ser "
            "remote monitor`, or choose another --out"
        )
    if sections.get("run_entries") and not force:
        raise RemoteError(
            f"{host}:{remote.from_home} exists and is not empty; choose another --out, or pass --force to replace it"
        )
    if not sections.get("rsync"):
        raise RemoteError(
            f"rsync is not installed on {host}; install it there (Debian/Ubuntu: sudo apt-get install rsync)"
        )
    remote_python = decode_python(host, python, sections.get("python", ""), int(sections.get("python_rc") or 1))
    absolute_dir = sections["dir"]
    report(f"  python {remote_python['python']} at {remote_python['executable']}")

    # 2. sync
    synced: dict[str, SyncStats] = {}
    root = project_root()

    def sync(name: str, source: str, destination: str, **kwargs) -> None:
        report(f"syncing {name} → {host}:{posixpath.join(remote.dir, destination)}")
        stats = rsync(host, source, host.remote_path(posixpath.join(remote.dir, destination)), **kwargs)
        synced[name] = stats
        report(f"  {stats}")

    if root is not None:
        sync("project", f"{root}/", "project/", delete=True, filters=PROJECT_FILTERS)
    data_folder, data_file = (data, None) if data.is_dir() else (data.parent, data.name)
    data_remote = posixpath.join("data", remote_slug(data_folder))
    sync("data", f"{data_folder}/", data_remote + "/", delete=True)
    remote_data = posixpath.join(data_remote, data_file) if data_file else data_remote
    remote_encoder = encoder
    if Path(encoder).expanduser().is_dir():
        local_encoder = Path(encoder).expanduser().resolve()
        remote_encoder = posixpath.join("encoders", remote_slug(local_encoder))
        sync("encoder", f"{local_encoder}/", remote_encoder + "/", delete=True)
    inputs = {}
    for option, value in (("--labels", labels), ("--split", split)):
        if value is None:
            continue
        local = Path(value).expanduser()
        if local.is_file():
            local = local.resolve()
            target = posixpath.join("inputs", f"{hashlib.sha256(str(local).encode()).hexdigest()[:8]}-{local.name}")
            sync(option.lstrip("-"), str(local), target)
            inputs[option] = target
        else:
            inputs[option] = str(value)  # a built-in schema name or inline JSON

    # 3. install or check
    package = ensure_package(
        host, remote_python, python=python, remote_dir=remote.dir, root=root, install=install, env=env, report=report
    )

    # 4. start detached
    argv = [python, "-c", SER, "train", remote_data, "--encoder", remote_encoder, "--out", remote.run]
    for option, value in inputs.items():
        argv += [option, value]
    argv += list(train_options)
    if force:
        argv.append("--force")
    pid = start(host, remote, absolute_dir, argv, env, report)
    return {
        "host": str(host),
        "run": remote.run,
        "path": remote.from_home,
        "remote_dir": absolute_dir,
        "pid": pid,
        "log": posixpath.join(absolute_dir, remote.job, "train.log"),
        "synced": {name: stats.to_dict() for name, stats in synced.items()},
        "package": package,
        "command": argv,
    }


PROJECT_FILTERS = (
    "- __pycache__/",
    "- *.pyc",
    "- *.egg-info/",
    "+ /pyproject.toml",
    "+ /README.md",
    "+ /LICENSE*",
    "+ /src/",
    "+ /src/**",
    "- *",
)
"""What of the checkout the host needs to ``pip install`` it: metadata and ``src/``."""


def ensure_package(
    host: Host,
    remote_python: dict,
    *,
    python: str,
    remote_dir: str,
    root: Path | None,
    install: str,
    env: Mapping[str, str],
    report: Report,
) -> dict:
    """Check the host's speech_emotion against this one; pip install the synced source if needed."""
    local = describe_python()
    reason = None
    if "error" in remote_python:
        reason = f"it does not import ({remote_python['error']})"
    elif remote_python.get("fingerprint") != local["fingerprint"]:
        reason = f"its source at {remote_python['location']} differs from this one ({local['location']})"
    if install == "never" or (install == "auto" and reason is None):
        if install == "never" and "error" in remote_python:
            raise RemoteError(
                f"speech_emotion does not import with {python} on {host}: {remote_python['error']}; launch with "
                "--install auto to install it"
            )
        if reason:
            report(f"  warning: speech_emotion on {host}: {reason} (--install never: left as is)")
        else:
            report(
                f"checked speech_emotion {remote_python['version']} on {host}: imports from "
                f"{remote_python['location']}, same source as here"
            )
        return {
            "action": "checked",
            "version": remote_python.get("version"),
            "location": remote_python.get("location"),
            "same_source": reason is None,
        }
    if root is None:
        raise RemoteError(
            f"cannot install speech_emotion on {host}: this copy ({local['location']}) is not a source checkout to "
            "sync; "
            f"install it there yourself (pip install speech-emotion=={local['version']}) and launch with --install "
            "never"
        )
    report(
        f"installing speech_emotion on {host} ({reason or '--install always'}): {python} -m pip install "
        f"{remote_dir}/project"
    )
    q = shlex.quote
    done = host.run(
        f"cd -- {q(remote_dir)} || exit 90\n{exports(env)}"
        f"{q(python)} -m pip install --disable-pip-version-check --no-input --quiet ./project 2>&1\n",
        check=False,
    )
    if done.returncode != 0:
        hint = ""
        if "externally-managed" in done.stdout:
            hint = (
                "; that Python is managed by the system: create a virtual environment there and pass its python "
                "with --python"
            )
        raise RemoteError(f"pip install on {host} failed (exit {done.returncode}): {last_lines(done.stdout, 12)}{hint}")
    after = probe_python(host, remote_dir=remote_dir, python=python, env=env)
    if "error" in after or after.get("fingerprint") != local["fingerprint"]:
        found = after.get("error") or f"imports from {after.get('location')} with a different source"
        raise RemoteError(
            f"installed, but {python} on {host} still does not import this speech_emotion: {found}; "
            f"an editable install or PYTHONPATH there shadows it"
        )
    report(f"  installed speech_emotion {after['version']} at {after['location']}")
    return {
        "action": "installed",
        "version": after.get("version"),
        "location": after.get("location"),
        "same_source": True,
    }


def start(
    host: Host, remote: RemoteRun, absolute_dir: str, argv: Sequence[str], env: Mapping[str, str], report: Report
) -> int:
    """Write ``RUN.job/run.sh`` and start it in its own session (``setsid nohup``); return its pid."""
    q = shlex.quote
    job = remote.job
    run_sh = (
        f"#!/bin/sh\n# Started by `ser remote launch` from {socket.gethostname()} at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}.\n"
        f"cd -- {q(absolute_dir)} || exit 1\n"
        f"date +%s > {q(job + '/started')}\n"
        f"export PYTHONUNBUFFERED=1\n{exports(env)}"
        f"{shlex.join(argv)} > {q(job + '/train.log')} 2>&1 < /dev/null\n"
        f"code=$?\n"
        f"date +%s > {q(job + '/ended')}\n"
        f"if [ -d {q(remote.run)} ]; then cp -- {q(job + '/train.log')} {q(remote.run + '/train.log')}; fi\n"
        f'echo "$code" > {q(job + "/exit_code.tmp")} && mv -- {q(job + "/exit_code.tmp")} {q(job + "/exit_code")}\n'
    )
    job_json = json.dumps(
        {
            "command": list(argv),
            "env": dict(env),
            "launched_from": socket.gethostname(),
            "launched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    script = (
        f"set -e\ncd -- {q(absolute_dir)}\nrm -rf -- {q(job)}\nmkdir -p -- {q(job)}\n"
        f"cat > {q(job + '/run.sh')} <<'SER_REMOTE_EOF'\n{run_sh}SER_REMOTE_EOF\n"
        f"cat > {q(job + '/job.json')} <<'SER_REMOTE_EOF'\n{job_json}\nSER_REMOTE_EOF\n"
        f"if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi\n"
        f"$detach nohup sh {q(job + '/run.sh')} > /dev/null 2>&1 < /dev/null &\n"
        f"pid=$!\necho $pid > {q(job + '/pid')}\n"
        # Return only once the job leads its own session, so the end of this ssh session cannot reach it.
        'if [ -n "$detach" ]; then i=0; while [ $i -lt 100 ] && [ "$(ps -o sid= -p $pid 2>/dev/null | tr -d \' \')" '
        '!= "$pid" ] '
        f"&& kill -0 $pid 2>/dev/null; do sleep 0.05; i=$((i+1)); done; fi\n"
        f"echo @@pid\necho $pid\n"
    )
    report(f"starting `ser train` on {host}, detached; log: {posixpath.join(absolute_dir, job, 'train.log')}")
    sections = parse_sections(host.run(script).stdout)
    pid = int(sections["pid"])
    report(f"  started, pid {pid}")
    return pid


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
        f'echo "(ser monitor is not available on this host: following {run.run}/metrics.jsonl)" >&2\n'
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
    python = python or sys.executable
    tty = sys.stdout.isatty() if tty is None else tty
    script = monitor_script(remote, python, follow=follow)
    args = host.ssh_args(tty=tty) + [f"sh -c {shlex.quote(script)}"]
    done = subprocess.run(args, capture_output=capture, text=True)
    if done.returncode == 255:
        raise RemoteError(
            f"ssh {host}: monitor failed: {last_lines(done.stderr) if capture else 'see the message above'}"
        )
    return done
