"""`ser train` and `ser evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from speech_emotion.cli.console import err_console, fail, print_json, progress_bar
from speech_emotion.cli.data import CorpusOpt, DataArg, JsonOpt, LabelsOpt, SpeakerPatternOpt, print_label_report
from speech_emotion.data.splits import parse_speakers
from speech_emotion.errors import BundleError, CorpusError, LabelError, SanityError, SplitError
from speech_emotion.training.loop import TrainConfig

USER_ERRORS = (BundleError, CorpusError, LabelError, SanityError, SplitError, FileExistsError, FileNotFoundError, OSError, ValueError)

EncoderOpt = Annotated[
    str,
    typer.Option(
        "--encoder",
        help="Pretrained encoder: a local folder (e.g. ../shared/models/whisper-base-encoder), a Hugging Face id "
        "(openai/whisper-base, facebook/wav2vec2-base, …) or 'egemaps'. Required: no encoder is chosen silently.",
    ),
]


def metrics_table(title: str, results: dict) -> Table:
    """Accuracy / UAR / macro-F1 / n for each part present in ``results``."""
    table = Table(title=title, title_justify="left")
    for column in ("part", "n", "accuracy", "UAR", "macro-F1"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in ("val", "test", "held-out"):
        if part in results and results[part].get("n"):
            m = results[part]
            table.add_row(part, str(m["n"]), f"{m['accuracy']:.1%}", f"{m['uar']:.1%}", f"{m['macro_f1']:.1%}")
    return table


def train(
    data: DataArg,
    encoder: EncoderOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (config, reports, metrics, model/).")],
    labels: LabelsOpt = None,
    corpus: CorpusOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    test_speakers: Annotated[Optional[str], typer.Option(help="Held-out test speakers, e.g. 16-18. None: no test part.")] = None,
    val_speakers: Annotated[Optional[str], typer.Option(help="Validation speakers for early stopping. Default: a seeded sixth of the speakers.")] = None,
    split: Annotated[Optional[Path], typer.Option("--split", help="A split saved by `ser data split --out`.", exists=True, dir_okay=False)] = None,
    allow_speaker_overlap: Annotated[bool, typer.Option(help="Accept a split whose parts share speakers (NOT speaker-independent; recorded).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the validation draw, initialisation and shuffling.")] = 0,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = TrainConfig.max_epochs,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better validation UAR.")] = TrainConfig.patience,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = TrainConfig.lr,
    hidden: Annotated[int, typer.Option(help="Hidden width of the head (0: linear).")] = TrainConfig.hidden,
    skip_bad: Annotated[bool, typer.Option(help="Leave out files that will not load; they are listed in RUN/skipped.json.")] = False,
    warn_only: Annotated[bool, typer.Option(help="Per-epoch sanity alarms (perfect first epoch, zero loss) warn instead of stopping: for synthetic or trivially easy data.")] = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train an emotion classifier on a frozen pretrained encoder.

    Features of every layer are computed once and cached (label-free) in the feature
    store; the head learns layer weights and an MLP, class-weighted, early-stopped on the
    validation speakers' UAR. Splits are speaker-disjoint and checked for leakage.

    Example: ser train ../shared/data/ravdess-speech-16k --encoder ../shared/models/whisper-base-encoder --labels ravdess-8 --test-speakers 16-18 --out runs/base
    """
    from speech_emotion.training.run import train as run_training

    if split and (test_speakers or val_speakers):
        raise fail("give --split or --test-speakers/--val-speakers, not both")
    config = TrainConfig(max_epochs=epochs, patience=patience, lr=lr, hidden=hidden, seed=seed, stop_on_alarm=not warn_only)
    try:
        results = run_training(
            data, encoder=encoder, out=out, labels=labels, corpus=corpus, speaker_pattern=speaker_pattern,
            test_speakers=parse_speakers(test_speakers) if test_speakers else None,
            val_speakers=parse_speakers(val_speakers) if val_speakers else None,
            split_file=json.loads(split.read_text()) if split else None,
            allow_speaker_overlap=allow_speaker_overlap, config=config, skip_bad=skip_bad, force=force,
            progress=progress_bar,
        )
    except USER_ERRORS as error:
        raise fail(error) from None
    print_label_report(json.loads((out / "labels.json").read_text()))
    err_console.print(f"speakers: " + "; ".join(f"{part} {','.join(s)}" for part, s in results["speakers"].items()))
    err_console.print(f"class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in results["class_weights"].items()))
    err_console.print(metrics_table(f"Results (best epoch {results['best_epoch']}, {results['protocol']})", results))
    err_console.print(f"model written to {out / 'model'}")
    if as_json:
        print_json(results)


def evaluate(
    model: Annotated[Path, typer.Argument(help="Run folder or model bundle folder.", exists=True, file_okay=False)],
    data: DataArg,
    corpus: CorpusOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    skip_unknown: Annotated[bool, typer.Option(help="Leave out labels the model's schema does not map (listed).")] = False,
    skip_bad: Annotated[bool, typer.Option(help="Leave out files that will not load (listed).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Score a trained model on labelled data it has not seen.

    Labels are mapped exactly as in training. Files the model was trained or validated
    on (same audio, or a training speaker of the same corpus) are reported and excluded.
    """
    from speech_emotion.inference.evaluate import evaluate as run_evaluation

    try:
        result = run_evaluation(model, data, corpus=corpus, speaker_pattern=speaker_pattern, skip_unknown=skip_unknown, skip_bad=skip_bad, progress=progress_bar)
    except USER_ERRORS as error:
        raise fail(error) from None
    contaminated = result["contaminated"]
    if contaminated["n"]:
        err_console.print(
            f"[bold yellow]warning:[/] {contaminated['n']} file(s) seen in training/validation excluded "
            f"(speakers {', '.join(contaminated['speakers']) or '-'}): their score would not be held-out"
        )
    for label, n in result["skipped_labels"].items():
        err_console.print(f"skipped label {label!r}: {n} files")
    if result["n"]:
        err_console.print(metrics_table(f"Held-out speakers {', '.join(result['speakers'])}", {"held-out": result}))
    else:
        err_console.print("[bold red]no held-out files left to score[/]")
    if as_json:
        print_json(result)
