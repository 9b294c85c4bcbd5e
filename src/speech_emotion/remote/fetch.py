"""Download a finished run from the host: the bundle and reports, checked by sha256 on both sides.

What arrives is treated as untrusted: a run holding a symbolic link, a device, a FIFO or a
socket is refused before anything is downloaded, rsync copies regular files and folders only,
and the downloaded tree is checked again before it is moved into place. The destination is
replaced as a whole, so it may never be the current folder, the home folder, the root or a
folder holding one of them.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()); _ = (folder / "a.txt").write_text("hi")
    >>> local_checksums(folder)
    {'a.txt': '8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4'}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import stat
import tempfile
from pathlib import Path

from speech_emotion.remote.job import Report
from speech_emotion.remote.ssh import Host, RemoteError, format_bytes, rsync
from speech_emotion.remote.state import (
    DEFAULT_REMOTE_DIR,
    RemoteRun,
    parse_sections,
    read_state,
    state_script,
    unprefixed,
)

log = logging.getLogger(__name__)

EXCLUDED = ("checkpoints",)
"""Run sub-folders left on the host: resume checkpoints are large and only useful there."""


def file_kind(mode: int) -> str:
    """What a non-regular file is, for error messages.

    >>> file_kind(stat.S_IFLNK), file_kind(stat.S_IFIFO)
    ('a symbolic link', 'a FIFO')
    """
    for test, kind in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def regular_files(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (``checkpoints/`` excluded), once the tree is known to be plain.

    Links are never followed: each entry must be a folder or a regular file, and each file
    must resolve to a place inside ``folder``.

    Raises:
        RemoteError: an entry is a symbolic link, device, FIFO or socket, or resolves outside
            ``folder``; the message names it.
    """
    folder = Path(folder)
    root = folder.resolve()
    files = []
    for current, folders, names in os.walk(folder):  # os.walk lists links to folders but never enters them
        here = Path(current)
        if here == folder:
            folders[:] = [name for name in folders if name not in EXCLUDED]
            names = [name for name in names if name not in EXCLUDED]
        for name in sorted(folders + names):
            path = here / name
            mode = path.lstat().st_mode
            where = path.relative_to(folder).as_posix()
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise RemoteError(
                    f"{folder}: {where} is {file_kind(mode)}; a run may hold only folders and regular files (a link "
                    "could point anywhere on this machine)"
                )
            if stat.S_ISREG(mode):
                if not path.resolve().is_relative_to(root):
                    raise RemoteError(f"{folder}: {where} resolves to {path.resolve()}, outside {root}")
                files.append(path)
    return sorted(files)


def local_checksums(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by POSIX path relative to it.

    Raises:
        RemoteError: the folder holds a link or another non-regular file (see :func:`regular_files`).
    """
    folder = Path(folder)
    sums = {}
    for path in regular_files(folder):
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        sums[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return sums


SHA256SUM_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\"}


def parse_sha256sum(text: str) -> dict[str, str]:
    """Read ``sha256sum`` / ``shasum -a 256`` lines ``HASH  ./path``.

    GNU sha256sum starts a line with '\\' when it escaped a newline or a backslash in the name.

    >>> parse_sha256sum("ab12  ./model/model.json\\ncd34 *./results.json")
    {'model/model.json': 'ab12', 'results.json': 'cd34'}
    >>> parse_sha256sum("\\\\ef56  ./a\\\\nb")
    {'a\\nb': 'ef56'}
    """
    sums = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if digest.startswith("\\"):
            name = re.sub(r"\\(.)", lambda match: SHA256SUM_ESCAPES.get(match.group(1), match.group(0)), name)
        sums[name[2:] if name.startswith("./") else name] = digest.lstrip("\\")
    return sums


def checksum_script(run: RemoteRun) -> str:
    """sh printing the sha256 of every file of the run (checkpoints excluded), GNU or BSD tools.

    Also lists what a fetch refuses: symbolic links (``@@links``) and devices, FIFOs and
    sockets (``@@irregular``). Every line is prefixed with '|' so that no file name, which may
    hold a newline, can pose as a section marker.
    """
    prune = " -o ".join(f"-path ./{name}" for name in EXCLUDED)
    find = f"find . \\( {prune} \\) -prune -o"
    return (
        f"if cd -- {shlex.quote(run.run)} 2>/dev/null; then\n"
        f"  if command -v sha256sum >/dev/null 2>&1; then sum='sha256sum'; else sum='shasum -a 256'; fi\n"
        f"  echo; echo @@links\n  {find} -type l -print | sed 's/^/|/'\n"
        f"  echo; echo @@irregular\n  {find} ! -type f ! -type d ! -type l -print | sed 's/^/|/'\n"
        f"  echo; echo @@sums\n  {find} -type f -exec $sum {{}} + | sed 's/^/|/'\n"
        f"fi\n"
    )


def check_destination(to: Path) -> Path:
    """The resolved folder a fetch may replace as a whole.

    Refused: the current folder, the home folder, the filesystem root, and any folder that
    holds the current or the home folder (``--to .``, ``--to ..``, ``--to ~``, ``--to /``).

    >>> check_destination(Path("runs/base")) == Path.cwd().resolve() / "runs/base"
    True
    >>> check_destination(Path("."))
    Traceback (most recent call last):
    ...
    ValueError: --to .: ... is the current folder; ...

    Raises:
        ValueError: ``to`` is one of those folders.
    """
    dest = to.resolve()
    protected = {"the current folder": Path.cwd().resolve()}
    try:
        protected["your home folder"] = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry: nothing to protect there
        pass
    why = ""
    if dest.parent == dest:
        why = "the filesystem root"
    for what, folder in protected.items():
        if not why and dest == folder:
            why = what
        elif not why and dest in folder.parents:
            why = f"a folder holding {what} ({folder})"
    if why:
        raise ValueError(
            f"--to {to}: {dest} is {why}; a fetch replaces its destination as a whole, so it must be a folder of its "
            "own, e.g. --to runs/NAME; nothing was changed"
        )
    return dest


def replace_folder(staging: Path, dest: Path, report: Report) -> None:
    """Move ``staging`` to ``dest`` by rename; what ``dest`` held is removed only once the new one is in place.

    Until then it waits beside ``dest`` (``.NAME.old-*``) and is renamed back if the move fails.
    """
    if not os.path.lexists(dest):
        os.rename(staging, dest)
        return
    trash = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name[:64]}.old-"))
    previous = trash / "previous"
    os.rename(dest, previous)
    try:
        os.rename(staging, dest)
    except BaseException:
        try:
            os.rename(previous, dest)
        except OSError:
            raise RemoteError(
                f"could not move the download into {dest}, nor its previous content back: that content is at "
                f"{previous}; move it back by hand"
            ) from None
        trash.rmdir()
        raise
    shutil.rmtree(trash, ignore_errors=True)
    if trash.exists():
        report(f"warning: could not remove the previous content of {dest}, moved to {trash}; remove it by hand")


def refuse_non_regular(host: Host, remote: RemoteRun, sections: dict[str, str]) -> None:
    """Refuse a run whose folder holds links or special files (listed by :func:`checksum_script`)."""
    for section, what, remedy in (
        ("links", "symbolic links", f"find {shlex.quote(remote.from_home)} -type l"),
        ("irregular", "devices, FIFOs or sockets", f"find {shlex.quote(remote.from_home)} ! -type f ! -type d"),
    ):
        lines = [line for line in unprefixed(sections.get(section, "")) if line]
        names = [line[2:] if line.startswith("./") else line for line in lines]
        if names:
            shown = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
            raise RemoteError(
                f"{host}:{remote.from_home} holds {what}: {shown}; a fetched run may hold only folders and regular "
                f"files (a link could point anywhere on this machine); remove them on the host (`{remedy}` lists "
                "them) or copy what you need by hand; nothing was written here"
            )


def fetch(
    host: Host,
    run: str,
    *,
    to: str | Path | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    force: bool = False,
    report: Report = log.info,
) -> dict:
    """Download a finished run folder (model/, reports, metrics, log) and verify every file.

    The host computes a sha256 for each file, rsync downloads them (regular files and
    folders only) into a temporary folder beside the resolved ``to``, the same sums are
    computed here, and only when all match is the folder moved into place by rename; what
    ``to`` held is removed only after that, and stays untouched when anything fails. An
    existing non-empty ``to`` is never replaced silently: that needs ``force``.
    ``checkpoints/`` stays on the host.

    Args:
        run: run folder on the host, as given to `ser remote launch --out`.
        to: local folder (default: ``run``, relative to the current folder); never the
            current folder, the home folder, the root or a folder holding one of them.

    Returns:
        ``{"to", "n_files", "bytes", "checksums": {path: sha256}}``.

    Raises:
        ValueError: ``to`` is the current folder, the home folder, the root or holds one of them.
        FileExistsError: ``to`` exists and is not empty, and ``force`` is not set.
        RemoteError: the run is still running, failed, has no model, holds a symbolic link or
            another non-regular file, or a checksum differs.
    """
    remote = RemoteRun(remote_dir, run)
    to = Path(to if to is not None else run)
    dest = check_destination(to)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise FileExistsError(f"{to} exists and is not empty; choose another --to, or pass --force to replace it")

    script = (
        f"cd -- {shlex.quote(remote.dir)} 2>/dev/null || {{ echo @@no_dir; exit 0; }}\n"
        + state_script(remote, log_lines=5)
        + checksum_script(remote)
    )
    sections = parse_sections(host.run(script).stdout)
    if "no_dir" in sections:
        raise RemoteError(
            f"{remote.dir} does not exist on {host}; nothing was launched there with --remote-dir {remote_dir}"
        )
    refuse_non_regular(host, remote, sections)
    state = read_state(host, remote, sections)
    if state["state"] in ("running", "starting"):
        raise RemoteError(
            f"{host}:{remote.from_home} is still {state['state']} (epoch {state['epochs']}); wait for it (`ser remote "
            "monitor`) and fetch then"
        )
    remote_sums = parse_sha256sum("\n".join(unprefixed(sections.get("sums", ""))))
    if "model/model.json" not in remote_sums:
        why = (
            f"the job {state['state']} with exit code {state['exit_code']}"
            if state["exit_code"]
            else f"the run is {state['state']}"
        )
        raise RemoteError(
            f"{host}:{remote.from_home} has no model/model.json ({why}); `ser remote status` shows the end of its log"
        )
    report(f"{host}:{remote.from_home}: {len(remote_sums)} files, sha256 computed on the host")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name[:64]}.fetch-"))
    except OSError as error:
        raise RemoteError(
            f"cannot write beside {dest}: {error.strerror or error}; choose a --to in a folder you can write"
        ) from None
    try:
        filters = [f"- /{name}/" for name in EXCLUDED]
        source = host.remote_path(remote.from_home, source=True) + "/"
        stats = rsync(host, source, f"{staging}/", filters=filters, regular_files_only=True)
        report(f"downloaded {stats.n_files} files ({format_bytes(stats.total_bytes)})")
        here = local_checksums(staging)
        missing = sorted(set(remote_sums) - set(here))
        differ = sorted(name for name in set(remote_sums) & set(here) if remote_sums[name] != here[name])
        if missing or differ:
            raise RemoteError(
                f"fetch of {host}:{remote.from_home} did not verify: "
                + "; ".join(
                    part
                    for part in (
                        f"missing here: {', '.join(missing)}" if missing else "",
                        f"sha256 differs: {', '.join(differ)}" if differ else "",
                    )
                    if part
                )
                + "; nothing was written, try again"
            )
        extra = sorted(set(here) - set(remote_sums))  # written on the host between the two steps
        for name in extra:
            (staging / name).unlink()
        report(f"verified sha256 of {len(remote_sums)} files")
        try:
            replace_folder(staging, dest, report)
        except OSError as error:
            raise RemoteError(
                f"cannot move the verified download into {dest}: {error.strerror or error}; what was there is unchanged"
            ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    encoder = json.loads((dest / "model" / "model.json").read_text()).get("encoder", {})
    if encoder.get("path") and not Path(encoder["path"]).exists():
        report(
            f"the model names its encoder as on the host ({encoder['path']}); here pass a copy of it: "
            f"`ser predict {to} … --encoder LOCAL_FOLDER` or Predictor.from_pretrained(..., encoder=LOCAL_FOLDER) (its "
            "fingerprint is checked)"
        )
    return {
        "host": str(host),
        "run": remote.run,
        "to": str(to),
        "n_files": len(remote_sums),
        "bytes": sum((dest / name).stat().st_size for name in remote_sums),
        "checksums": remote_sums,
    }
