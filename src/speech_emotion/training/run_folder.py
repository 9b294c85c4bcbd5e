"""The files of a run folder that say how the run goes: ``status.json`` and ``metrics.jsonl``.

Torch-free, so that ``ser monitor`` reads a run without loading torch.

``RUN/status.json``: where a run is, rewritten atomically as it goes (:class:`RunStatus` writes
it, :func:`read_status` reads it). Fields: ``stage`` (one of :data:`STAGES`), ``progress``
(``{"n", "total"}`` of the stage; total is None while decoding, where the number of files is not
known up front), ``epoch`` and ``max_epochs`` while training, ``best_epoch``, ``pid`` and
``host`` of the process, ``started`` and ``updated`` (ISO 8601, UTC), ``resumed`` (how many
times ``ser train --resume`` picked the run up) and ``error`` (the message of a failed run).

``RUN/metrics.jsonl``: one JSON line per epoch (:func:`read_metrics`, :func:`truncate_metrics`).

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> status = RunStatus(run)
    >>> status.stage("encoding", total=72)
    >>> status.advance(72)
    >>> saved = read_status(run); saved["stage"], saved["progress"], saved["pid"] == os.getpid()
    ('encoding', {'n': 72, 'total': 72}, True)
    >>> process_state(saved)
    'alive'
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from speech_emotion.atomic import write_json, write_text

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
STAGES = ("decoding", "encoding", "training", "finished", "failed")
RUNNING_STAGES = STAGES[:3]


def now_iso() -> str:
    """The current time, ISO 8601 in UTC to the second: ``2025-01-31T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStatus:
    """Writer of ``RUN/status.json``; every write is atomic (a reader never sees half a file).

    Progress updates are written at most every ``min_interval`` seconds (and always when a
    stage completes); stage changes, epochs and the end are written at once.

    Args:
        run: the run folder.
        resumed: how many times the run has been resumed (0 for a fresh run).
        min_interval: seconds between two progress writes.
    """

    def __init__(self, run: str | Path, *, resumed: int = 0, min_interval: float = 0.5):
        self.path = Path(run) / STATUS_FILE
        self.min_interval = min_interval
        self._written = 0.0
        started = now_iso()
        self.data: dict = {
            "stage": None,
            "progress": {"n": 0, "total": None},
            "epoch": None,
            "max_epochs": None,
            "best_epoch": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": started,
            "updated": started,
            "resumed": resumed,
            "error": None,
        }

    def write(self) -> None:
        self.data["updated"] = now_iso()
        write_json(self.path, self.data)
        self._written = time.monotonic()

    def stage(self, stage: str, *, total: int | None = None, **fields) -> None:
        """Enter ``stage`` (progress back to 0 of ``total``) and write."""
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
        self.data.update(stage=stage, progress={"n": 0, "total": total}, **fields)
        self.write()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items of the stage; written when due (or when the stage is complete)."""
        progress = self.data["progress"]
        progress["n"] += n
        if progress["n"] == progress["total"] or time.monotonic() - self._written >= self.min_interval:
            self.write()

    def update(self, **fields) -> None:
        """Set fields (``epoch=3``, ``best_epoch=2``, …) and write."""
        self.data.update(fields)
        self.write()

    def finish(self) -> None:
        self.stage("finished")

    def fail(self, error: BaseException | str) -> None:
        """Mark the run failed with ``error``'s message (kept at the stage's progress)."""
        progress = self.data["progress"]
        self.data.update(stage="failed", failed_stage=self.data["stage"], error=str(error) or type(error).__name__)
        self.data["progress"] = progress
        self.write()


def read_status(run: str | Path) -> dict | None:
    """``RUN/status.json`` as a dict, or None when the run has none (yet)."""
    try:
        data = json.loads((Path(run) / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # only a file written by something else than RunStatus
        return None
    return data if isinstance(data, dict) else None


def process_state(status: dict) -> str:
    """Whether the process that writes ``status`` still runs: ``"alive"``, ``"gone"`` or ``"unknown"``.

    Only a process on this host can be checked; a run folder copied from another host (or
    watched over a shared file system) is ``"unknown"``.
    """
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    try:  # a killed child that its parent has not reaped yet still answers kill(0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "alive"
    return "gone" if state in ("Z", "X") else "alive"


def prepare_run_folder(out: Path, force: bool) -> None:
    """Refuse to write into a non-empty folder unless ``force``; then start it empty."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out, or pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line cut short by a crash (the last one) is left out.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = path.write_text('{"epoch": 1}\\n{"epoch": 2}\\n{"epo')
    >>> read_metrics(path)
    [{'epoch': 1}, {'epoch': 2}]
    """
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(path: str | Path, epoch: int) -> int:
    """Rewrite ``metrics.jsonl`` (atomically) with only the records of epochs ``1..epoch``.

    Returns:
        The number of records dropped (epochs after the checkpoint, or a half-written line).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = path.write_text("".join(f'{{"epoch":{e}}}\\n' for e in (1, 2, 3)))
    >>> truncate_metrics(path, 2), path.read_text()
    (1, '{"epoch":1}\\n{"epoch":2}\\n')
    """
    path = Path(path)
    if not path.exists():
        return 0
    n_lines = len(path.read_text(encoding="utf-8").splitlines())
    kept = [r for r in read_metrics(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
    write_text(path, "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in kept))
    return n_lines - len(kept)
