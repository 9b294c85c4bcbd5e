"""`ser adapt`: a copy of a model adapted to a new domain from that domain's unlabelled audio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from speech_emotion.cli.console import err_console, fail, print_json, progress_bar
from speech_emotion.cli.data import JsonOpt, SpeakerPatternOpt
from speech_emotion.cli.device_options import DeviceOpt, ModelPrecisionOpt


def adapt(
    model: Annotated[
        Path, typer.Argument(help="Run folder or model bundle made by `ser train`.", exists=True, file_okay=False)
    ],
    data: Annotated[
        Path,
        typer.Argument(
            help="The new domain's audio: a folder, a CSV/TSV with a path column (labels are not read), or a file.",
            exists=True,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The adapted bundle folder to write.", show_default=False)],
    n_clips: Annotated[
        Optional[int],
        typer.Option(help="Estimate the statistics from this many clips, drawn at random (default: all).", min=2),
    ] = None,
    per_speaker: Annotated[
        bool,
        typer.Option(
            help="Also keep each speaker's statistics (speakers from a CSV speaker column or --speaker-pattern); "
            "`ser predict --speaker` then standardises a clip by its speaker's. --n-clips counts per speaker."
        ),
    ] = False,
    speaker_pattern: SpeakerPatternOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for drawing --n-clips.")] = 0,
    name: Annotated[
        Optional[str], typer.Option(help="What to call the domain in model.json (default: the folder's name).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: ModelPrecisionOpt = None,
) -> None:
    """Adapt a model to a new domain (a recording setup, a language, a call centre) from its unlabelled audio.

    The domain's feature statistics are estimated from its clips (no label is read) and the new
    bundle standardises that domain's inputs as the model's training data was, so single-clip
    `ser predict` and `ser serve` work on it. model.json records that the model is adapted, to
    which audio and from how many clips.

    Examples:
      ser adapt runs/general ../calls/ --out runs/general-calls
      ser adapt runs/general calls.csv --per-speaker --out runs/general-calls  (then: ser predict ... --speaker ID)
    """
    from speech_emotion.errors import AudioError, BundleError
    from speech_emotion.inference.adapt import adapt as run_adapt

    try:
        adaptation = run_adapt(
            model,
            data,
            out=out,
            n_clips=n_clips,
            per_speaker=per_speaker,
            speaker_pattern=speaker_pattern,
            seed=seed,
            name=name,
            force=force,
            progress=progress_bar,
            device=device,
            precision=precision,
        )
    except (AudioError, BundleError, FileExistsError, FileNotFoundError, OSError, ValueError) as error:
        raise fail(error) from None
    err_console.print(
        f"adapted to {adaptation['domain']} from {adaptation['n_clips']} unlabelled clip(s)"
        + (f" ({adaptation['n_skipped']} left out: unreadable)" if adaptation["n_skipped"] else "")
        + (f", and to each of {len(adaptation['speakers'])} speakers" if adaptation["per_speaker"] else "")
        + f"; bundle written to {out}"
    )
    if as_json:
        print_json(adaptation)
