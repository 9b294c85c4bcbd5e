"""Download a finished run from the host: the bundle and reports, checked by sha256 on both sides.

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
import shlex
import shutil
import tempfile
from pathlib import Path

from speech_emotion.remote.job import DEFAULT_REMOTE_DIR, RemoteRun, Report, parse_sections, read_state, state_script
from speech_emotion.remote.ssh import Host, RemoteError, format_bytes, rsync

log = logging.getLogger(__name__)

EXCLUDED = ("checkpoints",)
"""Run sub-folders left on the host: resume checkpoints are large and only useful there."""


def local_checksums(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by POSIX path relative to it."""
    folder = Path(folder)
    sums = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).parts[0] not in EXCLUDED:
            digest = hashlib.sha256()
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            sums[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return sums


def parse_sha256sum(text: str) -> dict[str, str]:
    """Read ``sha256sum`` / ``shasum -a 256`` lines ``HASH  ./path``.

    >>> parse_sha256sum("ab12  ./model/model.json\\ncd34 *./results.json")
    {'model/model.json': 'ab12', 'results.json': 'cd34'}
    """
    sums = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        sums[name[2:] if name.startswith("./") else name] = digest.lstrip("\\")
    return sums


def checksum_script(run: RemoteRun) -> str:
    """sh printing the sha256 of every file of the run (checkpoints excluded), GNU or BSD tools."""
    prune = " -o ".join(f"-path ./{name}" for name in EXCLUDED)
    return (
        f"echo @@sums\n"
        f"if cd -- {shlex.quote(run.run)} 2>/dev/null; then\n"
        f"  if command -v sha256sum >/dev/null 2>&1; then sum='sha256sum'; else sum='shasum -a 256'; fi\n"
        f"  find . \\( {prune} \\) -prune -o -type f -exec $sum {{}} +\n"
        f"fi\n"
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

    The host computes a sha256 for each file, rsync downloads them into a temporary folder
    beside ``to``, the same sums are computed here, and only when all match is the folder
    moved into place. An existing non-empty ``to`` is never replaced silently: that needs
    ``force``. ``checkpoints/`` stays on the host.

    Args:
        run: run folder on the host, as given to `ser remote launch --out`.
        to: local folder (default: ``run``, relative to the current folder).

    Returns:
        ``{"to", "n_files", "bytes", "checksums": {path: sha256}}``.

    Raises:
        FileExistsError: ``to`` exists and is not empty, and ``force`` is not set.
        RemoteError: the run is still running, failed, has no model, or a checksum differs.
    """
    remote = RemoteRun(remote_dir, run)
    to = Path(to if to is not None else run)
    if to.exists() and (not to.is_dir() or any(to.iterdir())) and not force:
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
    state = read_state(host, remote, sections)
    if state["state"] in ("running", "starting"):
        raise RemoteError(
            f"{host}:{remote.from_home} is still {state['state']} (epoch {state['epochs']}); wait for it (`ser remote "
            "monitor`) and fetch then"
        )
    remote_sums = parse_sha256sum(sections.get("sums", ""))
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

    to.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.fetch-"))
    try:
        filters = [f"- /{name}/" for name in EXCLUDED]
        stats = rsync(host, host.remote_path(remote.from_home) + "/", f"{staging}/", filters=filters)
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
        if to.exists():
            shutil.rmtree(to) if to.is_dir() else to.unlink()
        os.replace(staging, to)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    encoder = json.loads((to / "model" / "model.json").read_text()).get("encoder", {})
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
        "bytes": sum((to / name).stat().st_size for name in remote_sums),
        "checksums": remote_sums,
    }
