"""`ser predict`: label audio files with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from speech_emotion.cli.console import err_console, fail, out_console, print_json, progress_bar
from speech_emotion.data.audio import load_audio
from speech_emotion.data.corpora import find_audio
from speech_emotion.errors import AudioError, BundleError

BATCH_FILES = 32


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their audio files in sorted order."""
    expanded = []
    for item in inputs:
        expanded.extend(find_audio(item) if item.is_dir() else [item])
    return expanded


def predict(
    model: Annotated[Path, typer.Argument(help="Run folder or model bundle folder.", exists=True, file_okay=False)],
    inputs: Annotated[list[Path], typer.Argument(help="Audio files or folders (expanded in sorted order).")],
    as_json: Annotated[bool, typer.Option("--json", help="One compact JSON line per file on stdout, in input order.")] = False,
    min_confidence: Annotated[Optional[float], typer.Option(help="Below this top probability, mark the result uncertain (label null) instead of forcing a label.", min=0.0, max=1.0)] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Where the model's encoder is now, if it moved.")] = None,
    allow_encoder_mismatch: Annotated[bool, typer.Option(help="Use an encoder whose fingerprint differs from training (unreliable).")] = False,
) -> None:
    """Predict the emotion of each audio file.

    An unreadable file gives an error line ({path, error}) and the others go on.
    """
    from speech_emotion.inference.predictor import Predictor

    try:
        predictor = Predictor.from_pretrained(model, encoder=encoder, allow_encoder_mismatch=allow_encoder_mismatch)
    except (BundleError, OSError, ValueError) as error:
        raise fail(error) from None
    files = expand_inputs(inputs)
    table = Table("file", "label", "p", title_justify="left")
    n_errors = 0
    with progress_bar("predicting", len(files)) as advance:
        for start in range(0, len(files), BATCH_FILES):
            batch = files[start : start + BATCH_FILES]
            signals, rows = [], []
            for path in batch:
                try:
                    signals.append(load_audio(path)[0])
                    rows.append({"path": str(path)})
                except AudioError as error:
                    rows.append({"path": str(path), "error": error.reason})
            results = iter(predictor.predict(signals, min_confidence=min_confidence) if signals else [])
            for row in rows:
                if "error" not in row:
                    row.update(next(results))
                else:
                    n_errors += 1
                if as_json:
                    print_json(row)
                elif "error" in row:
                    table.add_row(row["path"], f"[red]error: {row['error']}[/]", "")
                else:
                    p = max(row["probabilities"].values())
                    table.add_row(row["path"], row["label"] or "[yellow]uncertain[/]", f"{p:.2f}")
            advance(len(batch))
    if not as_json:
        out_console.print(table)
    if n_errors:
        err_console.print(f"[yellow]{n_errors} file(s) could not be read[/]")
