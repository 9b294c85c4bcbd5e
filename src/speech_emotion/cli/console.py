"""Where the CLI writes: JSON to stdout, everything for people to stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

err_console = Console(stderr=True)
out_console = Console()


def setup_logging(verbose: bool = False) -> None:
    """Route the library's logging to stderr through Rich."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def print_json(obj) -> None:
    """Compact JSON on its own line on stdout."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def fail(error: Exception | str, code: int = 1) -> typer.Exit:
    """Print an error to stderr and return the Exit to raise.

    The message is escaped: paths, regexes and label lists often hold ``[...]``,
    which Rich would otherwise read as markup and swallow.
    """
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=code)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator:
    """A Rich progress bar on stderr; yields ``advance(n)``."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def counts_table(title: str, rows: dict, columns: tuple[str, ...]) -> Table:
    """A two-or-more column table from ``{name: value or tuple}``."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for name, value in rows.items():
        values = value if isinstance(value, tuple) else (value,)
        table.add_row(str(name), *(str(v) for v in values))
    return table
