"""An SSH host reached through the OpenSSH client and rsync, run as subprocesses.

Nothing here speaks SSH itself: ``ssh`` does the connection (so ``~/.ssh/config`` names,
agents, jump hosts and known_hosts all work as they do in a terminal) and ``rsync -e ssh``
copies files, skipping what the other side already has.

Example:
    >>> host = Host("gpu-box", port=2222, identity="~/.ssh/id_ed25519")
    >>> host.ssh_args()[:3]
    ['ssh', '-o', 'BatchMode=yes']
    >>> " ".join(host.ssh_args()[-5:])
    '-p 2222 -i ~/.ssh/id_ed25519 gpu-box'
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from speech_emotion.errors import RemoteError


@dataclass(frozen=True)
class Host:
    """Where to run: an ssh destination plus the options ``ssh`` and ``rsync -e`` both get.

    Attributes:
        target: an ssh config name (``gpu-box``), ``host`` or ``user@host``.
        port: ``ssh -p``; ``None`` leaves it to ssh (22 or the config's ``Port``).
        identity: private key file, ``ssh -i``.
        options: extra ``ssh -o`` settings, e.g. ``("UserKnownHostsFile=/tmp/kh",)``.
        config: an ssh config file used instead of ``~/.ssh/config`` (``ssh -F``).
        connect_timeout: seconds before a connection attempt gives up.
    """

    target: str
    port: int | None = None
    identity: str | Path | None = None
    options: Sequence[str] = field(default_factory=tuple)
    config: str | Path | None = None
    connect_timeout: int = 20

    def __post_init__(self) -> None:
        if not self.target or self.target.startswith("-") or any(c.isspace() for c in self.target):
            raise ValueError(
                f"host {self.target!r}: expected an ssh config name, host or user@host (no spaces, not starting with "
                "'-')"
            )
        for option in self.options:
            if "=" not in option:
                raise ValueError(f"ssh option {option!r}: expected Key=Value, e.g. StrictHostKeyChecking=accept-new")

    def __str__(self) -> str:
        return self.target if self.port is None else f"{self.target}:{self.port}"

    def ssh_args(self, *, tty: bool = False) -> list[str]:
        """The ``ssh`` command line up to and including the destination.

        ``BatchMode=yes``: a job launcher must never hang on a password prompt; use a key
        (``ssh-copy-id``) or an agent.
        """
        args = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.config is not None:
            args += ["-F", str(self.config)]
        for option in self.options:
            args += ["-o", option]
        args.append("-t" if tty else "-T")
        if self.port is not None:
            args += ["-p", str(self.port)]
        if self.identity is not None:
            args += ["-i", str(self.identity)]
        return args + [self.target]

    def rsync_shell(self) -> str:
        """The ``rsync -e`` value: the same ssh, without the destination."""
        return shlex.join(self.ssh_args()[:-1])

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a POSIX ``sh`` script on the host (sent on stdin: any login shell works).

        Returns the completed process with text ``stdout``/``stderr``. With ``check``, a
        non-zero exit raises :class:`RemoteError` carrying the script's stderr.
        """
        require_tool("ssh", "openssh-client")
        try:
            done = subprocess.run(
                self.ssh_args() + ["sh", "-s"], input=script, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(f"ssh {self}: no answer within {timeout:.0f} s") from None
        if done.returncode == 255:
            raise RemoteError(connection_error(self, done.stderr))
        if check and done.returncode != 0:
            raise RemoteError(
                f"on {self}: command failed with exit code {done.returncode}: {last_lines(done.stderr or done.stdout)}"
            )
        return done

    def remote_path(self, path: str, *, source: bool = False) -> str:
        """``target:path`` as rsync wants it (a leading '~/' means the remote home).

        With ``source``, wildcards in ``path`` are escaped: the rsync on the host expands
        ``*``, ``?`` and ``[`` in the paths it sends (even with ``--protect-args``), so a run
        named ``runs/[ab]`` would otherwise download ``runs/a`` and ``runs/b``.

        >>> print(Host("h").remote_path("~/runs/[ab]*", source=True))
        h:runs/\\[ab]\\*
        """
        path = home_relative(path)
        if source and any(char in path for char in "*?["):
            # rsync globs only a path holding a wildcard, and then reads backslash as an escape.
            path = re.sub(r"([\\*?\[])", r"\\\1", path)
        return f"{self.target}:{path}"


def home_relative(path: str) -> str:
    """Paths on the host: '~/x' and 'x' are both relative to the remote home.

    >>> home_relative("~/ser-remote/runs"), home_relative("/data/runs"), home_relative("~")
    ('ser-remote/runs', '/data/runs', '.')
    """
    if path in ("~", "~/"):
        return "."
    return path[2:] if path.startswith("~/") else path


def check_no_nul(option: str, value: str) -> str:
    """Refuse a NUL character, the one thing a shell word or a command-line argument cannot hold.

    >>> check_no_nul("--python", "/usr/bin/python3")
    '/usr/bin/python3'
    """
    if "\0" in str(value):
        raise ValueError(f"{option} {value!r}: a NUL character cannot be passed to the host; remove it")
    return value


def connection_error(host: Host, stderr: str) -> str:
    """ssh's own complaint (exit 255), with what to check."""
    return (
        f"ssh {host}: {last_lines(stderr) or 'connection failed'}; "
        f"check the host name, --port, --identity and that `ssh {host.target} true` logs in without a password"
    )


def last_lines(text: str, n: int = 8) -> str:
    """The last ``n`` non-empty lines of ``text``, joined with ' | ' for one-line errors."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def require_tool(name: str, package: str) -> str:
    """The path of a local program, or a clear error saying which package provides it."""
    path = shutil.which(name)
    if path is None:
        raise RemoteError(
            f"`{name}` not found on this machine; install it (Debian/Ubuntu: apt-get install {package}, macOS: brew "
            f"install {package})"
        )
    return path


@dataclass(frozen=True)
class SyncStats:
    """What one rsync run did: files considered, files sent, bytes in total and sent."""

    n_files: int
    n_transferred: int
    total_bytes: int
    transferred_bytes: int

    @property
    def n_skipped(self) -> int:
        """Files the other side already had (same size and modification time)."""
        return self.n_files - self.n_transferred

    def to_dict(self) -> dict:
        return {
            "n_files": self.n_files,
            "n_transferred": self.n_transferred,
            "n_skipped": self.n_skipped,
            "total_bytes": self.total_bytes,
            "transferred_bytes": self.transferred_bytes,
        }

    def __str__(self) -> str:
        return (
            f"{self.n_files} files ({format_bytes(self.total_bytes)}): {self.n_transferred} sent "
            f"({format_bytes(self.transferred_bytes)}), {self.n_skipped} already there"
        )


def format_bytes(n: int) -> str:
    """Bytes for people.

    >>> format_bytes(0), format_bytes(2_500_000)
    ('0 B', '2.5 MB')
    """
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def parse_rsync_stats(text: str) -> SyncStats:
    """Read ``rsync --stats`` output (rsync 3.x, with or without thousands separators).

    >>> parse_rsync_stats('''Number of files: 1,085 (reg: 1,080, dir: 5)
    ... Number of regular files transferred: 3
    ... Total file size: 12,345 bytes
    ... Total transferred file size: 345 bytes''')
    SyncStats(n_files=1080, n_transferred=3, total_bytes=12345, transferred_bytes=345)
    """

    def number(pattern: str) -> int:
        match = re.search(pattern, text)
        if match is None:
            raise RemoteError(f"could not read rsync --stats output (missing {pattern!r}):\n{text}")
        return int(match.group(1).replace(",", "").replace(".", ""))

    n_files_line = re.search(r"Number of files: ([\d,.]+)(?: \(([^)]*)\))?", text)
    if n_files_line is None:
        raise RemoteError(f"could not read rsync --stats output:\n{text}")
    regular = re.search(r"reg: ([\d,.]+)", n_files_line.group(2) or "")
    n_files = int((regular.group(1) if regular else n_files_line.group(1)).replace(",", "").replace(".", ""))
    return SyncStats(
        n_files=n_files,
        n_transferred=number(r"Number of regular files transferred: ([\d,.]+)"),
        total_bytes=number(r"Total file size: ([\d,.]+)"),
        transferred_bytes=number(r"Total transferred file size: ([\d,.]+)"),
    )


def rsync(
    host: Host,
    source: str,
    destination: str,
    *,
    delete: bool = False,
    filters: Sequence[str] = (),
    regular_files_only: bool = False,
) -> SyncStats:
    """``rsync -a`` over the host's ssh; returns what was sent and what was already there.

    Remote paths are given as ``host.remote_path(path)`` (``source=True`` for a remote
    source). rsync compares size and modification time, so a second sync of unchanged
    files sends nothing.

    Args:
        source, destination: local path or ``target:path``; a trailing '/' on a folder
            copies its contents (rsync's rule).
        delete: remove files at the destination that the source no longer has (keeps a
            mirrored data folder exact: a file deleted here must not be trained on there).
        filters: rsync ``--filter`` rules, e.g. ``"- __pycache__/"``.
        regular_files_only: copy folders and regular files only (``-rt`` instead of ``-a``):
            symbolic links, devices, FIFOs and sockets are skipped, owner and group are not
            copied, and permissions are masked by the umask here, never setuid or setgid. For
            files coming from a host, which must not decide what a link here points to or who
            owns what.

    Raises:
        RemoteError: rsync is missing on either side, or the transfer failed.
    """
    require_tool("rsync", "rsync")
    mode = "-rt" if regular_files_only else "-a"
    args = ["rsync", mode, "--stats", "--protect-args", "-e", host.rsync_shell()]
    if delete:
        args.append("--delete")
    for rule in filters:
        args += ["--filter", rule]
    done = subprocess.run(args + [source, destination], capture_output=True, text=True)
    if done.returncode != 0:
        hint = ""
        if "command not found" in done.stderr or "rsync: not found" in done.stderr:
            hint = f"; install rsync on {host.target} (Debian/Ubuntu: apt-get install rsync)"
        elif done.returncode == 255 or "connection unexpectedly closed" in done.stderr:
            raise RemoteError(connection_error(host, done.stderr))
        raise RemoteError(
            f"rsync {source} → {destination} failed (exit {done.returncode}): {last_lines(done.stderr)}{hint}"
        )
    return parse_rsync_stats(done.stdout)
