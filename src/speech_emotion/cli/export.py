"""`ser export`: a trained model as an ONNX Runtime folder or a Hugging Face pipeline folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from speech_emotion.cli.console import err_console, fail, progress_bar
from speech_emotion.features.devices import DEVICES_HELP, check_device

FORMATS = ("onnx", "hf")


def export(
    model: Annotated[Path, typer.Argument(help="Run folder or model bundle folder.", exists=True, file_okay=False)],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx: encoder + head for ONNX Runtime (no torch needed to run it); hf: a folder "
            "transformers.pipeline('audio-classification') loads.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write.")],
    quantize: Annotated[
        Optional[str], typer.Option(help="onnx only: 'int8' for dynamic int8 quantization (default fp32).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="hf only: the run's training corpus, if it moved since `ser train` (Whisper refits on it; the export "
            "is scored on its test speakers).",
            exists=True,
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help=f"Where the model's encoder runs while the export is made and checked: {DEVICES_HELP}. onnx: traced "
            "on the CPU (auto or cpu; the file holds no device); hf: the check's encoding (the stock pipeline runs on "
            "the CPU).",
        ),
    ] = "auto",
) -> None:
    """Export a trained model for deployment or sharing."""
    if format not in FORMATS:
        raise fail(f"--format {format!r} is not supported; expected one of: {', '.join(FORMATS)}")
    if quantize is not None and (format != "onnx" or quantize != "int8"):
        raise fail(f"--quantize {quantize!r}: only 'int8', and only with --format onnx")
    if data is not None and format != "hf":
        raise fail("--data is for --format hf only")
    if out.exists() and any(out.iterdir()) and not force:
        raise fail(f"{out} exists and is not empty; choose another --out, or pass --force to replace it")
    try:
        device = check_device(device)
        if format == "onnx":
            from speech_emotion.export.onnx import export_onnx

            summary = export_onnx(model, out, quantize=quantize, device=device)
        else:
            from speech_emotion.export.huggingface import export_huggingface

            summary = export_huggingface(model, out, data=data, progress=progress_bar, device=device)
    except (ValueError, OSError) as error:
        raise fail(error) from None
    err_console.print(f"exported {format} model to {out}")
    for key, value in (summary or {}).items():
        err_console.print(f"  {key}: {value}")
