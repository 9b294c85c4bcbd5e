"""Training jobs on a remote host: sync what they need, install the package, start them detached.

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

Every script sent to the host quotes each value it holds (``shlex.quote``); run.sh and
job.json travel base64-encoded, so no value, however written, is ever parsed as shell.
Where a run lives and what state it is in: :mod:`speech_emotion.remote.state`; following it:
:mod:`speech_emotion.remote.follow`.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import logging
import posixpath
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from speech_emotion.remote.ssh import Host, RemoteError, SyncStats, check_no_nul, home_relative, last_lines, rsync
from speech_emotion.remote.state import DEFAULT_REMOTE_DIR, RemoteRun, parse_sections, read_state, state_script

log = logging.getLogger(__name__)

INSTALL_MODES = ("auto", "always", "never")

SER = 'import sys; sys.argv[0] = "ser"; from speech_emotion.cli.app import main; main()'
"""``python -c SER ARGS`` runs the `ser` command with that Python, whatever PATH holds."""

Report = Callable[[str], None]


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
        import speech_emotion.version as package  # imports the package itself first
    except Exception as error:  # any import failure: missing package, missing dependency
        info["error"] = f"{type(error).__name__}: {error}"
        return info
    root = pathlib.Path(package.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    info.update(version=getattr(package, "__version__", None), location=str(root), fingerprint=digest.hexdigest())
    return info


DESCRIBE = inspect.getsource(describe_python) + "\nimport json\nprint(json.dumps(describe_python()))\n"


def project_root() -> Path | None:
    """The source checkout this speech_emotion was imported from (src layout), if any."""
    import speech_emotion.version as package

    root = Path(package.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "speech_emotion").is_dir() else None


def remote_slug(path: Path) -> str:
    """A stable remote folder name for a local path: its name plus a hash of where it is.

    >>> remote_slug(Path("/data/ravdess"))
    'ravdess-ffa62ca7'
    """
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate ``--env NAME=VALUE`` names (they become ``export NAME=...`` on the host).

    Values may hold anything but NUL: they are quoted, never parsed by the host's shell.

    >>> check_env({"CUDA_VISIBLE_DEVICES": "1", "NOTE": "$(not run) `nor this`"})["NOTE"]
    '$(not run) `nor this`'
    """
    env = dict(env or {})
    for name, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"--env {name!r}: expected NAME=VALUE with a shell variable name (letters, digits, _)")
        check_no_nul(f"--env {name}", value)
    return env


def is_local(path: str, kind: str) -> bool:
    """Whether ``path`` names an existing local file (``kind="file"``) or folder (``"dir"``).

    A value that cannot be a path here (inline JSON longer than a file name may be, a NUL)
    is simply not one, instead of an OSError.

    >>> is_local("{" + '"a": 1, ' * 60 + "}", "file"), is_local(".", "dir")
    (False, True)
    """
    try:
        local = Path(path).expanduser()
        return local.is_file() if kind == "file" else local.is_dir()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: '~user' whose home is unknown
        return False


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
    python = check_no_nul("--python", python or sys.executable)
    data = Path(data).resolve()
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such folder")
    if split is not None and not is_local(str(split), "file"):
        raise FileNotFoundError(f"--split {split}: no such file")
    remote = RemoteRun(remote_dir, str(out))
    for option, value in (("--encoder", encoder), ("--labels", labels)):
        if value is not None:
            check_no_nul(option, value)
    for value in train_options:
        check_no_nul("ser train option", value)
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
    if is_local(encoder, "dir"):
        local_encoder = Path(encoder).expanduser().resolve()
        remote_encoder = posixpath.join("encoders", remote_slug(local_encoder))
        sync("encoder", f"{local_encoder}/", remote_encoder + "/", delete=True)
    inputs = {}
    for option, value in (("--labels", labels), ("--split", split)):
        if value is None:
            continue
        if is_local(str(value), "file"):
            local = Path(value).expanduser().resolve()
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


WRITE_FILES = (
    "import base64, sys\n"
    "for path, text in zip(sys.argv[1::2], sys.argv[2::2]):\n"
    "    with open(path, 'wb') as stream:\n"
    "        stream.write(base64.b64decode(text))\n"
)
"""``python -c WRITE_FILES PATH BASE64 …``: files written on the host without a shell ever reading their text."""


def write_files_script(python: str, files: Mapping[str, str]) -> str:
    """sh that writes each ``{path: text}`` on the host through base64 and ``python``.

    A heredoc would end at the first line equal to its delimiter, which an --env value or a
    ser train option may hold; base64 text holds no quote, space or newline.

    >>> print(write_files_script("python3", {"a b/run.sh": "echo '$(x)'"}))
    python3 -c ... 'a b/run.sh' ZWNobyAnJCh4KSc=
    """
    q = shlex.quote
    pairs = " ".join(f"{q(path)} {base64.b64encode(text.encode()).decode()}" for path, text in files.items())
    return f"{q(python)} -c {q(WRITE_FILES)} {pairs}\n"


def start(
    host: Host, remote: RemoteRun, absolute_dir: str, argv: Sequence[str], env: Mapping[str, str], report: Report
) -> int:
    """Write ``RUN.job/run.sh`` and start it in its own session (``setsid nohup``); return its pid.

    ``argv[0]`` is the host's Python: it also writes run.sh and job.json there, from base64.
    """
    for value in argv:
        check_no_nul("ser train argument", value)
    env = check_env(env)
    q = shlex.quote
    job = remote.job
    here = re.sub(r"[^\w.-]", "?", socket.gethostname())  # it goes into a comment line: no newline may end it
    run_sh = (
        f"#!/bin/sh\n# Started by `ser remote launch` from {here} at "
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
        # --env in a subshell: the Python may need it to start (LD_LIBRARY_PATH), the rest of this script must not.
        + f"(\n{exports(env)}"
        + write_files_script(argv[0], {job + "/run.sh": run_sh, job + "/job.json": job_json + "\n"})
        + ")\n"
        + f"if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi\n"
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
