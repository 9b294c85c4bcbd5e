"""How ``ser monitor`` shows a run: a Rich view for terminals, plain lines for everything else.

:func:`render` turns a :class:`~speech_emotion.monitor.snapshot.RunSnapshot` into one Rich
renderable (stage and progress, per-epoch table, class distribution, sanity alarms, final
results). :class:`PlainLines` turns a sequence of snapshots into new text lines only — one per
stage, one per epoch, one at the end — for logs, pipes and ``ssh`` without a terminal.

Example:
    >>> from pathlib import Path
    >>> from speech_emotion.monitor.snapshot import RunSnapshot
    >>> record = {"epoch": 1, "train_loss": 1.1, "val_accuracy": 0.5, "val_uar": 0.4, "alarms": []}
    >>> snapshot = RunSnapshot(run=Path("runs/a"), state="training", metrics=[record])
    >>> lines = PlainLines()
    >>> lines.update(snapshot)
    ['stage training', 'epoch 1 train_loss 1.1000 val_accuracy 0.5000 val_uar 0.4000']
    >>> lines.update(snapshot)  # nothing new
    []
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from speech_emotion.monitor.snapshot import RunSnapshot

EPOCH_FIELDS = ("train_loss", "val_loss", "val_accuracy", "val_uar")
"""Per-epoch numbers shown, in this order (when the record has them)."""

STATE_STYLE = {
    "finished": "bold green",
    "failed": "bold red",
    "died": "bold red",
    "waiting": "yellow",
    "unknown": "yellow",
}


def age(iso: str | None) -> str:
    """How long ago an ISO 8601 time was, e.g. ``"4 s ago"``; empty when unknown."""
    if not iso:
        return ""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    seconds = max(0, int((datetime.now(timezone.utc) - then).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def epoch_line(record: dict) -> str:
    """``epoch 3 train_loss 0.8123 val_accuracy 0.6500 val_uar 0.6400`` (+ ``alarms a,b``)."""
    parts = [f"epoch {record.get('epoch')}"]
    parts += [f"{name} {record[name]:.4f}" for name in EPOCH_FIELDS if isinstance(record.get(name), (int, float))]
    if record.get("alarms"):
        parts.append("alarms " + ",".join(record["alarms"]))
    return " ".join(parts)


def progress_text(snapshot: RunSnapshot) -> str:
    """``encoding 10/72``, ``training epoch 3/40``, or the state alone."""
    status = snapshot.status or {}
    state = snapshot.state
    if state == "training" and status.get("epoch") is not None:
        return f"training epoch {status['epoch']}/{snapshot.max_epochs or '?'}"
    progress = status.get("progress") or {}
    if state in ("decoding", "encoding") and progress.get("n") is not None:
        return f"{state} {progress['n']}/{progress['total'] if progress.get('total') is not None else '?'}"
    return state


def _metric(results: dict, part: str) -> str:
    values = results.get(part) or {}
    return " ".join(
        f"{name} {values[name]:.4f}"
        for name in ("accuracy", "uar", "macro_f1")
        if isinstance(values.get(name), (int, float))
    )


def end_line(snapshot: RunSnapshot) -> str:
    """The one line that sums a run up: results when finished, the cause when failed or died."""
    status = snapshot.status or {}
    if snapshot.state == "finished":
        results = snapshot.results or {}
        parts = [
            f"finished: best epoch {results.get('best_epoch')} of {results.get('epochs_run', len(snapshot.metrics))}"
        ]
        parts += [f"{part} {_metric(results, part)}" for part in ("val", "test") if _metric(results, part)]
        n_alarms = len(results.get("alarms") or [])
        if n_alarms:
            parts.append(f"{n_alarms} sanity alarm(s)")
        return "; ".join(parts)
    if snapshot.state == "failed":
        where = status.get("failed_stage") or "?"
        return f"failed at {where}: {status.get('error')}"
    if snapshot.state == "died":
        return (
            f"died: process {status.get('pid')} on {status.get('host')} is gone ({progress_text_at(snapshot)}, last "
            "update "
            f"{age(status.get('updated'))}); continue it with: ser train --resume {snapshot.run}"
        )
    return f"{progress_text(snapshot)} (updated {age(status.get('updated')) or '?'})"


def progress_text_at(snapshot: RunSnapshot) -> str:
    """Where a died run stopped: its last stage and progress."""
    status = snapshot.status or {}
    stage = status.get("stage")
    if stage == "training":
        return f"training epoch {status.get('epoch')}"
    progress = status.get("progress") or {}
    return f"{stage} {progress.get('n')}/{progress.get('total') if progress.get('total') is not None else '?'}"


class PlainLines:
    """New plain-text lines for each snapshot: what a log or a pipe should get.

    * ``stage S`` when the stage changes (with ``n/total`` progress when known);
      ``S n/total`` again at most every ``progress_every`` seconds while a stage runs;
    * ``classes: neutral 24, happy 24, …`` once labels.json is there;
    * one :func:`epoch_line` per new epoch in metrics.jsonl;
    * ``alarm CHECK (severity): message`` per sanity alarm in results.json, then
      :func:`end_line` when the run is over.
    """

    def __init__(self, *, progress_every: float = 30.0):
        self.progress_every = progress_every
        self.stage: str | None = None
        self.last_epoch = 0
        self.shown_classes = False
        self.ended = False
        self._progress_at = 0.0

    def update(self, snapshot: RunSnapshot) -> list[str]:
        lines = []
        if not self.shown_classes and snapshot.labels and snapshot.class_counts.get("all"):
            counts = snapshot.class_counts["all"]
            lines.append("classes: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
            self.shown_classes = True
        if snapshot.state != self.stage and snapshot.state not in ("finished", "failed", "died"):
            self.stage = snapshot.state
            if snapshot.state == "waiting":
                lines.append(f"waiting for {snapshot.run} to start (no status.json or config.json yet)")
            elif snapshot.state == "unknown":
                lines.append("stage unknown (no status.json: a run made before status files, or not started yet)")
            else:
                lines.append("stage " + progress_text(snapshot))
            self._progress_at = time.monotonic()
        elif snapshot.state in ("decoding", "encoding") and time.monotonic() - self._progress_at >= self.progress_every:
            lines.append(progress_text(snapshot))
            self._progress_at = time.monotonic()
        for record in snapshot.metrics:
            if isinstance(record.get("epoch"), int) and record["epoch"] > self.last_epoch:
                lines.append(epoch_line(record))
                self.last_epoch = record["epoch"]
        if snapshot.done and not self.ended:
            if snapshot.results:
                for alarm in snapshot.results.get("alarms") or []:
                    where = f" epoch {alarm['epoch']}" if alarm.get("epoch") else ""
                    lines.append(f"alarm {alarm.get('check')} ({alarm.get('severity')}{where}): {alarm.get('message')}")
            lines.append(end_line(snapshot))
            self.ended = True
        return lines

    def current(self, snapshot: RunSnapshot) -> list[str]:
        """Everything about ``snapshot`` at once (``--no-follow``): the lines, then where it is now."""
        lines = self.update(snapshot)
        if not snapshot.done:
            lines.append(end_line(snapshot))
        return lines


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def _bar(label: str, total: int, completed: int) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row(ProgressBar(total=total, completed=completed, width=40), Text(label))
    return grid


def render(snapshot: RunSnapshot, *, max_rows: int = 15) -> Group:
    """The whole view of a run as one Rich renderable (for ``rich.live.Live``)."""
    status = snapshot.status or {}
    parts = []
    header = Text.assemble(
        ("run ", "dim"),
        (str(snapshot.run), "bold"),
        "  ",
        (snapshot.state, STATE_STYLE.get(snapshot.state, "bold cyan")),
    )
    if status.get("pid"):
        header.append(f"  pid {status['pid']} on {status.get('host')}", "dim")
    if status.get("resumed"):
        header.append(f"  resumed ×{status['resumed']}", "dim")
    if status.get("updated"):
        header.append(f"  updated {age(status['updated'])}", "dim")
    parts.append(header)

    progress = status.get("progress") or {}
    if snapshot.state in ("decoding", "encoding") and progress.get("total"):
        parts.append(_bar(progress_text(snapshot), progress["total"], progress.get("n") or 0))
    elif snapshot.state == "training" and snapshot.max_epochs:
        parts.append(
            _bar(
                progress_text(snapshot) + " (early stopping may end it sooner)",
                snapshot.max_epochs,
                status.get("epoch") or 0,
            )
        )
    elif not snapshot.done:
        parts.append(Text(progress_text(snapshot)))

    if snapshot.metrics:
        best = (snapshot.results or {}).get("best_epoch") or status.get("best_epoch")
        table = Table(
            title=f"Epochs ({len(snapshot.metrics)}; last {min(max_rows, len(snapshot.metrics))} shown)",
            title_justify="left",
        )
        table.add_column("epoch", justify="right")
        for name in EPOCH_FIELDS:
            table.add_column(name.replace("_", " "), justify="right")
        table.add_column("alarms")
        for record in snapshot.metrics[-max_rows:]:
            style = "bold green" if record.get("epoch") == best else None
            table.add_row(
                str(record.get("epoch")),
                *(_fmt(record.get(name)) for name in EPOCH_FIELDS),
                escape(",".join(record.get("alarms") or [])),
                style=style,
            )
        parts.append(table)

    counts = snapshot.class_counts
    if counts:
        table = Table(title="Class distribution (files)", title_justify="left")
        table.add_column("class")
        for column in counts:
            table.add_column(column, justify="right")
        for name in counts.get("all") or next(iter(counts.values())):
            table.add_row(escape(name), *(str(counts[column].get(name, 0)) for column in counts))
        parts.append(table)

    alarms = snapshot.alarms
    if alarms:
        lines = []
        for alarm in alarms:
            style = "bold red" if alarm.get("severity") == "error" else "yellow"
            where = f" (epoch {alarm['epoch']})" if alarm.get("epoch") else ""
            lines.append(
                Text.assemble((f"{alarm.get('check')}{where}", style), f" {alarm.get('message') or ''}".rstrip())
            )
        parts.append(Panel(Text("\n").join(lines), title="Sanity alarms", title_align="left", border_style="yellow"))

    if snapshot.state == "finished" and snapshot.results:
        results = snapshot.results
        table = Table(
            title=f"Results (best epoch {results.get('best_epoch')}, {results.get('protocol', '')})",
            title_justify="left",
        )
        for column in ("part", "n", "accuracy", "UAR", "macro-F1"):
            table.add_column(column, justify="left" if column == "part" else "right")
        for part in ("val", "test"):
            values = results.get(part)
            if values:
                table.add_row(
                    part, str(values.get("n")), *(_fmt(values.get(k)) for k in ("accuracy", "uar", "macro_f1"))
                )
        parts.append(table)
    if snapshot.state in ("failed", "died", "unknown"):
        parts.append(Text(end_line(snapshot), style=STATE_STYLE.get(snapshot.state)))
    return Group(*parts)
