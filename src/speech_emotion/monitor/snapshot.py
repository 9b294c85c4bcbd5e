"""What a run folder says about its run, read at one moment; and a poller that follows it.

:func:`read_run` reads ``status.json``, ``config.json``, ``labels.json``, ``split.json``,
``metrics.jsonl`` and ``results.json`` (whichever exist yet) into a :class:`RunSnapshot`.
:func:`watch` yields a snapshot each time the folder changes, until the run is over.

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> read_run(run).state
    'waiting'
    >>> _ = (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.9}\\n')
    >>> _ = (run / "results.json").write_text('{"best_epoch": 1}')
    >>> snapshot = read_run(run); snapshot.state, snapshot.done, [m["epoch"] for m in snapshot.metrics]
    ('finished', True, [1])
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from speech_emotion.training.config import RunConfig
from speech_emotion.training.run_folder import (
    METRICS_FILE,
    RUNNING_STAGES,
    STATUS_FILE,
    process_state,
    read_metrics,
    read_status,
)

END_STATES = ("finished", "failed", "died")
"""States after which nothing more will happen to the run (until `ser train --resume`)."""

_WATCHED = ("status.json", "config.json", "labels.json", "split.json", "metrics.jsonl", "results.json")


@dataclass
class RunSnapshot:
    """A run folder's files at one moment.

    Attributes:
        run: the run folder.
        state: ``waiting`` (no run files yet), ``decoding``, ``encoding``, ``training``,
            ``finished``, ``failed``, ``died`` (the process is gone without finishing: killed,
            out of memory, machine rebooted; resume it) or ``unknown`` (files but no
            ``status.json``: a run made before status files existed).
        status: ``status.json`` (None when absent).
        config: ``config.json`` read as a :class:`~speech_emotion.training.config.RunConfig` (None when
            absent or unreadable).
        labels, split, results: the JSON files (None when absent).
        metrics: the records of ``metrics.jsonl``, in epoch order.
    """

    run: Path
    state: str
    status: dict | None = None
    config: RunConfig | None = None
    labels: dict | None = None
    split: dict | None = None
    results: dict | None = None
    metrics: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """True once the run finished, failed or died."""
        return self.state in END_STATES

    @property
    def classes(self) -> list[str]:
        for source in (self.results, self.labels):
            if source and source.get("classes"):
                return list(source["classes"])
        return []

    @property
    def class_counts(self) -> dict[str, dict[str, int]]:
        """Files per class: ``{"all": {...}}`` from labels.json, plus one entry per split part."""
        counts = {}
        if self.labels and isinstance(self.labels.get("counts_after"), dict):
            counts["all"] = dict(self.labels["counts_after"])
        for part, info in ((self.split or {}).get("parts") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("counts"), dict):
                counts[part] = dict(info["counts"])
        return counts

    @property
    def max_epochs(self) -> int | None:
        if self.status and self.status.get("max_epochs"):
            return self.status["max_epochs"]
        return self.config.train.max_epochs if self.config is not None else None

    @property
    def alarms(self) -> list[dict]:
        """Sanity alarms: those of results.json (with messages) once there, else per-epoch ones."""
        if self.results and isinstance(self.results.get("alarms"), list):
            return self.results["alarms"]
        return [
            {"check": check, "severity": "warning", "message": "", "epoch": record.get("epoch")}
            for record in self.metrics
            for check in record.get("alarms") or []
        ]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(run: Path) -> RunConfig | None:
    """``config.json`` as a :class:`RunConfig`; None while it is missing, half-written or not a run's."""
    try:
        return RunConfig.read(run)
    except (OSError, ValueError):
        return None


def read_run(run: str | Path) -> RunSnapshot:
    """Read a run folder (any subset of its files may exist yet). Never raises for missing files."""
    run = Path(run)
    status = read_status(run)
    snapshot = RunSnapshot(
        run=run,
        state="waiting",
        status=status,
        config=_read_config(run),
        labels=_read_json(run / "labels.json"),
        split=_read_json(run / "split.json"),
        results=_read_json(run / "results.json"),
        metrics=sorted(read_metrics(run / METRICS_FILE), key=lambda r: r.get("epoch", 0)),
    )
    if status is not None:
        stage = status.get("stage")
        snapshot.state = "died" if stage in RUNNING_STAGES and process_state(status) == "gone" else str(stage)
    elif snapshot.results is not None:
        snapshot.state = "finished"
    elif snapshot.config is not None or snapshot.metrics:
        snapshot.state = "unknown"
    if snapshot.state == "finished" and snapshot.results is None:  # finished means results.json is there
        snapshot.state = "unknown"
    return snapshot


def _signature(run: Path) -> tuple:
    signature = []
    for name in _WATCHED:
        try:
            stat = (run / name).stat()
        except FileNotFoundError:
            signature.append(None)
        else:
            signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(signature)


def watch(
    run: str | Path, *, interval: float = 1.0, wait: float = 120.0, heartbeat: float = 5.0
) -> Iterator[RunSnapshot]:
    """Snapshots of a run as it changes, until it finished, failed or died.

    The first snapshot comes at once; then one whenever a run file changes (polled every
    ``interval`` seconds) or at least every ``heartbeat`` seconds (so a view can show how long
    ago the run last reported); the last one is the end state.

    Args:
        run: the run folder; it may not exist yet (a run just launched).
        interval: seconds between polls.
        wait: seconds to wait for the run folder to show a run file before giving up.
        heartbeat: seconds after which an unchanged snapshot is yielded anyway.

    Raises:
        FileNotFoundError: no run file appeared in ``run`` within ``wait`` seconds.
    """
    run = Path(run)
    started = time.monotonic()
    last, last_yield = None, 0.0
    while True:
        snapshot = read_run(run)  # read every poll: liveness changes without any file changing
        if snapshot.state == "waiting" and time.monotonic() - started > wait:
            raise FileNotFoundError(
                f"{run}: no run files ({STATUS_FILE}, config.json) appeared in {wait:.0f} s; "
                "check the path, or that `ser train --out` points there"
            )
        key = (_signature(run), snapshot.state)
        if key != last or time.monotonic() - last_yield >= heartbeat:
            last, last_yield = key, time.monotonic()
            yield snapshot
        if snapshot.done:
            return
        time.sleep(interval)
