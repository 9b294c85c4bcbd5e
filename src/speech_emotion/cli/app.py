"""`ser`: the command line of speech_emotion. It parses arguments and calls the library."""

from __future__ import annotations

import os

# Before torch is imported: idle OpenMP threads sleep instead of spinning (4× faster on a busy
# machine; OMP_WAIT_POLICY=ACTIVE restores spinning). See inference/backends.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from speech_emotion.cli import cache, data, remote
from speech_emotion.cli.adapt import adapt
from speech_emotion.cli.console import setup_logging
from speech_emotion.cli.export import export
from speech_emotion.cli.monitor import monitor
from speech_emotion.cli.predict import predict
from speech_emotion.cli.serve import serve
from speech_emotion.cli.train import cv, evaluate, report, train

app = typer.Typer(
    name="ser",
    help="Speech emotion recognition on pretrained speech encoders: inspect corpora, split by speaker, train, "
    "evaluate, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(data.app, name="data")
app.add_typer(cache.app, name="cache")
app.add_typer(remote.app, name="remote")
app.command()(train)
app.command()(evaluate)
app.command()(adapt)
app.command()(cv)
app.command()(report)
app.command()(monitor)
app.command()(predict)
app.command()(export)
app.command()(serve)


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging.")) -> None:
    setup_logging(verbose)


def main() -> None:
    app()
