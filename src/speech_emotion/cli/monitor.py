"""`ser monitor RUN`: watch a run — live Rich view on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from speech_emotion.cli.console import fail, out_console


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def monitor(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder made by `ser train --out` (with --follow it may not exist yet: a run just launched).",
            show_default=False,
        ),
    ],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow",
            help="Follow the run until it finishes, fails or dies; --no-follow prints its state once.",
        ),
    ] = True,
    interval: Annotated[float, typer.Option(help="Seconds between two looks at the run folder.", min=0.05)] = 1.0,
) -> None:
    """Show a run's stage, progress, per-epoch loss/accuracy/UAR, class distribution, sanity alarms and results.

    On a terminal the view updates live. Otherwise (a pipe, a log file, ssh without a
    terminal) it prints plain lines: `stage …`, `classes: …`, one `epoch N train_loss …
    val_accuracy … val_uar …` line per epoch, then one final line. Exit code with --follow:
    0 when the run finished, 1 when it failed or died (resume it with `ser train --resume RUN`).

    Example: ser monitor runs/base
    """
    from speech_emotion.monitor import PlainLines, read_run, render, watch

    terminal = out_console.is_terminal
    if not follow:
        snapshot = read_run(run)
        if snapshot.state == "waiting":
            raise fail(
                f"{run}: no run here (no status.json, config.json or metrics.jsonl); pass the --out folder of `ser "
                "train`"
            )
        if terminal:
            out_console.print(render(snapshot))
        else:
            _print_lines(PlainLines().current(snapshot))
        return

    snapshot = None
    try:
        if terminal:
            from rich.live import Live

            with Live(console=out_console, refresh_per_second=4, auto_refresh=False) as live:
                for snapshot in watch(run, interval=interval):
                    live.update(render(snapshot), refresh=True)
        else:
            lines = PlainLines()
            for snapshot in watch(run, interval=interval):
                _print_lines(lines.update(snapshot))
    except FileNotFoundError as error:
        raise fail(error) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    if snapshot is not None and snapshot.state != "finished":
        raise typer.Exit(code=1)
