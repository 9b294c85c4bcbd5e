"""`ser cache`: look at and empty the feature store."""

from __future__ import annotations

from typing import Annotated

import typer

from speech_emotion.cli.console import err_console, print_json

app = typer.Typer(
    help="The feature store: encoder features cached by audio content + encoder fingerprint (label-free).",
    no_args_is_help=True,
)


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print compact JSON on stdout.")] = False) -> None:
    """Where the feature store is, how many entries it holds and their size (fine-tune frame states counted apart
    too).
    """
    from speech_emotion.features.store import FeatureStore

    summary = FeatureStore().info()
    if as_json:
        print_json(summary)
    else:
        err_console.print(
            f"feature store: {summary['root']}\nentries: {summary['n_entries']}\nsize: {summary['bytes'] / 1e6:.1f} MB"
        )
        if "frames" in summary:  # float16 hidden states cached for --finetune, included in the totals above
            frames = summary["frames"]
            err_console.print(
                f"  of which fine-tune frame states: {frames['n_entries']} entries, {frames['bytes'] / 1e6:.1f} MB"
            )


@app.command()
def clear(yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Delete every cached feature (they are recomputed when needed)."""
    from speech_emotion.features.store import FeatureStore

    store = FeatureStore()
    if not yes and not typer.confirm(f"Delete all cached features in {store.root}?"):
        raise typer.Exit(code=1)
    err_console.print(f"removed {store.clear()} entries from {store.root}")
