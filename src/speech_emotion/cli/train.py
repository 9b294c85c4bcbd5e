"""`ser train` and `ser evaluate`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from speech_emotion.cli.console import err_console, fail, print_json, progress_bar
from speech_emotion.cli.data import (
    CorpusOpt,
    DataArg,
    JsonOpt,
    LabelsOpt,
    SingleLabelOpt,
    SpeakerPatternOpt,
    print_label_report,
)
from speech_emotion.cli.device_options import DeviceOpt, ModelPrecisionOpt, PrecisionOpt
from speech_emotion.errors import BundleError, CorpusError, LabelError, SanityError, SplitError
from speech_emotion.training.config import MIXUP_COPIES, TrainConfig, parse_finetune

USER_ERRORS = (
    BundleError,
    CorpusError,
    LabelError,
    SanityError,
    SplitError,
    FileExistsError,
    FileNotFoundError,
    OSError,
    ValueError,
)

EncoderOpt = Annotated[
    str,
    typer.Option(
        "--encoder",
        help="Pretrained encoder: a local folder (e.g. ../shared/models/whisper-base-encoder), a Hugging Face id "
        "(openai/whisper-base, facebook/wav2vec2-base, …) or 'egemaps'. Required: no encoder is chosen silently.",
    ),
]


SeedOpt = Annotated[int, typer.Option(help="Seed for speaker draws, initialisation and shuffling.")]
EpochsOpt = Annotated[int, typer.Option(help="Maximum epochs.")]
PatienceOpt = Annotated[int, typer.Option(help="Stop after this many epochs without a better validation UAR.")]
LrOpt = Annotated[float, typer.Option(help="AdamW learning rate (--optimizer adamw).")]
OptimizerOpt = Annotated[
    str,
    typer.Option(
        help="lbfgs: full-batch L-BFGS on the loss plus an L2 penalty (with a linear head, a logistic-regression "
        "probe); "
        "adamw: shuffled mini-batches with dropout and decoupled weight decay; auto: lbfgs for a linear head (--hidden "
        "0), adamw otherwise."
    ),
]
WeightDecayOpt = Annotated[
    float,
    typer.Option(
        help="lbfgs: L2 penalty weight_decay/2·‖W‖² on the head's weight matrices; adamw: decoupled weight decay."
    ),
]
MixupOpt = Annotated[
    float,
    typer.Option(
        help=f"Mixup: add {MIXUP_COPIES} mixtures of two training examples (features and labels, weight ~ Beta(a, a)) "
        "per example; 0: off."
    ),
]
HiddenOpt = Annotated[int, typer.Option(help="Hidden width of the head (0: linear).")]
MixingOpt = Annotated[
    str,
    typer.Option(
        help="How the head combines encoder layers: concat (all layers side by side) or softmax (learned weighted sum)."
    ),
]
SpeakerNormOpt = Annotated[
    bool,
    typer.Option(
        help="Standardise features per speaker with that speaker's own unlabelled clips. Figures are labelled "
        "speaker-norm; the model then needs several clips per speaker and cannot label single clips."
    ),
]
SkipBadOpt = Annotated[bool, typer.Option(help="Leave out files that will not load; they are listed in the report.")]
WarnOnlyOpt = Annotated[
    bool,
    typer.Option(
        help="Per-epoch sanity alarms (perfect first epoch, zero loss) warn instead of stopping: for synthetic or "
        "trivially easy data."
    ),
]


BalanceOpt = Annotated[
    str,
    typer.Option(
        help="Loss weights: class (each class weighs the same), corpus-class (each corpus × class cell weighs the "
        "same, so one large or easy corpus does not dominate), none; auto: corpus-class with several corpora, class "
        "with one."
    ),
]
DomainNormOpt = Annotated[
    str,
    typer.Option(
        help="corpus: standardise each corpus by its own unlabelled feature statistics (a new domain is then "
        "standardised by the training clips' until `ser adapt` sets its own); none; auto: corpus with several "
        "corpora, none with one."
    ),
]


AugmentOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Add altered copies of the training clips, comma-separated: speed:FACTOR (tempo and pitch, e.g. "
        "speed:0.9), noise:SNR_DB (white noise, e.g. noise:10). Each is encoded once per clip and cached.",
        show_default=False,
    ),
]


RENAMED = {"epochs": "max_epochs"}
"""Options whose TrainConfig field has another name."""


def recipe(options: dict) -> TrainConfig:
    """The :class:`TrainConfig` of a command's options (the ones it has), or an ``error:`` exit."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {RENAMED.get(k, k): v for k, v in options.items() if RENAMED.get(k, k) in fields}
    values["stop_on_alarm"] = not options["warn_only"]
    values["augment"] = tuple(a.strip() for a in (options.get("augment") or "").split(",") if a.strip())
    try:
        if "finetune" in values:
            values["finetune"] = parse_finetune(values["finetune"]) if values["finetune"] else 0
        return TrainConfig(**values)
    except ValueError as error:
        raise fail(error) from None


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
    ctx: typer.Context,
    data: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Corpus folder(s), or CSV/TSV manifest(s) with path,label,speaker columns (not with --resume). "
            "Several corpora train one model, speakers namespaced by corpus; an adapter per corpus as PATH::ADAPTER.",
            show_default=False,
        ),
    ] = None,
    encoder: Annotated[
        Optional[str], typer.Option("--encoder", help=EncoderOpt.__metadata__[0].help, show_default=False)
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Run folder to create (config, reports, metrics, checkpoints/, model/).", show_default=False
        ),
    ] = None,
    labels: LabelsOpt = None,
    corpus: CorpusOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    test_speakers: Annotated[
        Optional[str], typer.Option(help="Held-out test speakers, e.g. 16-18. None: no test part.")
    ] = None,
    val_speakers: Annotated[
        Optional[str],
        typer.Option(help="Validation speakers for early stopping. Default: a seeded sixth of the speakers."),
    ] = None,
    split: Annotated[
        Optional[Path],
        typer.Option("--split", help="A split saved by `ser data split --out`.", exists=True, dir_okay=False),
    ] = None,
    allow_speaker_overlap: Annotated[
        bool, typer.Option(help="Accept a split whose parts share speakers (NOT speaker-independent; recorded).")
    ] = False,
    seed: SeedOpt = 0,
    epochs: EpochsOpt = TrainConfig.max_epochs,
    patience: PatienceOpt = TrainConfig.patience,
    lr: LrOpt = TrainConfig.lr,
    optimizer: OptimizerOpt = TrainConfig.optimizer,
    weight_decay: WeightDecayOpt = TrainConfig.weight_decay,
    mixup: MixupOpt = TrainConfig.mixup,
    hidden: HiddenOpt = TrainConfig.hidden,
    mixing: MixingOpt = TrainConfig.mixing,
    speaker_norm: SpeakerNormOpt = False,
    balance: BalanceOpt = TrainConfig.balance,
    domain_norm: DomainNormOpt = TrainConfig.domain_norm,
    augment: AugmentOpt = None,
    skip_bad: SkipBadOpt = False,
    allow_single_label_speakers: SingleLabelOpt = False,
    warn_only: WarnOnlyOpt = False,
    hf_compatible: Annotated[
        bool,
        typer.Option(
            help="A linear head on mean features (with --hidden 0) that `ser export --format hf` copies exactly into a "
            "stock transformers class."
        ),
    ] = False,
    finetune: Annotated[
        Optional[str],
        typer.Option(
            "--finetune",
            help="Fine-tune mode: train the top N transformer layers of the encoder with the head (top-N, e.g. top-2); "
            "the bundle then carries the encoder. Runs under `torchrun --nproc-per-node K --no-python ser train ...` "
            "too.",
            show_default=False,
        ),
    ] = None,
    encoder_lr: Annotated[
        Optional[float],
        typer.Option(
            "--encoder-lr",
            help="Learning rate of the fine-tuned encoder layers (default: --lr / 10).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Clips per optimisation step (under torchrun: in all processes together, each taking batch-size / K).",
        ),
    ] = TrainConfig.batch_size,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    as_json: JsonOpt = False,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            help="Continue a killed or failed run from RUN/config.json and its newest checkpoint (give nothing else): "
            "same final weights as an uninterrupted run.",
            exists=True,
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    tracking_uri: Annotated[
        Optional[str],
        typer.Option(
            "--tracking-uri",
            help="Log params, per-epoch metrics, reports and the bundle to MLflow there "
            "(default: $MLFLOW_TRACKING_URI; needs `pip install 'speech-emotion[all]'`).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Train an emotion classifier on a frozen pretrained encoder.

    Features of every layer are computed once and cached (label-free) in the feature
    store; the head (by default a linear classifier over every layer's standardised
    statistics, fitted by L-BFGS with an L2 penalty: a logistic-regression probe; --hidden N
    for an MLP trained by AdamW) is class-weighted and early-stopped on the validation
    speakers' UAR. Splits are speaker-disjoint and checked for leakage.
    The run folder's status.json, metrics.jsonl and checkpoints/ let `ser monitor RUN`
    follow it and `ser train --resume RUN` continue it after a kill.

    Example: ser train ../shared/data/ravdess-speech-16k --encoder ../shared/models/whisper-base-encoder
    --labels ravdess-8 --test-speakers 16-18 --out runs/base
    """
    from speech_emotion.data.splits import parse_speakers
    from speech_emotion.training.distributed import current_world
    from speech_emotion.training.pipeline import resume as resume_training
    from speech_emotion.training.pipeline import train as run_training

    if resume is not None:
        given = [
            f"--{name.replace('_', '-')}" if name != "data" else "DATA"
            for name in ctx.params
            if name not in ("resume", "tracking_uri", "as_json", "device")
            and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
        ]
        if given:
            raise fail(f"--resume takes every setting from {resume / 'config.json'}; drop {', '.join(given)}")
        try:
            results = resume_training(resume, tracking_uri=tracking_uri, progress=progress_bar, device=device)
        except USER_ERRORS + (ImportError,) as error:
            raise fail(error) from None
        _print_results(resume, results, as_json)
        return
    missing = [name for name, value in (("DATA", data), ("--encoder", encoder), ("--out", out)) if value is None]
    if missing:
        raise fail(
            f"missing {', '.join(missing)}: `ser train DATA --encoder ENCODER --out RUN` (or `ser train --resume RUN` "
            "to continue a run)"
        )
    if split and (test_speakers or val_speakers):
        raise fail("give --split or --test-speakers/--val-speakers, not both")
    if hf_compatible and hidden:
        raise fail(f"--hf-compatible needs a linear head: add --hidden 0 (got --hidden {hidden})")
    if encoder_lr is not None and not finetune:
        raise fail(
            "--encoder-lr sets the learning rate of fine-tuned encoder layers: add --finetune top-N, or drop "
            "--encoder-lr"
        )
    config = recipe(ctx.params)
    try:
        results = run_training(
            data,
            encoder=encoder,
            out=out,
            labels=labels,
            corpus=corpus,
            speaker_pattern=speaker_pattern,
            test_speakers=parse_speakers(test_speakers) if test_speakers else None,
            val_speakers=parse_speakers(val_speakers) if val_speakers else None,
            split_file=json.loads(split.read_text()) if split else None,
            allow_speaker_overlap=allow_speaker_overlap,
            allow_single_label_speakers=allow_single_label_speakers,
            config=config,
            skip_bad=skip_bad,
            force=force,
            progress=progress_bar,
            tracking_uri=tracking_uri,
            device=device,
            precision=precision,
        )
    except USER_ERRORS + (ImportError,) as error:
        raise fail(error) from None
    if current_world().is_main:  # under torchrun, rank 0 reports for all
        _print_results(out, results, as_json)


def _print_results(out: Path, results: dict, as_json: bool) -> None:
    print_label_report(json.loads((out / "labels.json").read_text()))
    err_console.print("speakers: " + "; ".join(f"{part} {','.join(s)}" for part, s in results["speakers"].items()))
    err_console.print("class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in results["class_weights"].items()))
    err_console.print(metrics_table(f"Results (best epoch {results['best_epoch']}, {results['protocol']})", results))
    err_console.print(f"model written to {out / 'model'}; report: {out / 'report.html'}")
    if as_json:
        print_json(results)


def evaluate(
    model: Annotated[Path, typer.Argument(help="Run folder or model bundle folder.", exists=True, file_okay=False)],
    data: DataArg,
    labels: Annotated[
        Optional[str],
        typer.Option(
            "--labels",
            help="Map the model's classes and the data's labels onto this schema (e.g. common-4) and score the classes "
            "they share: probabilities of merged classes are summed. Default: the model's own schema.",
        ),
    ] = None,
    adapt: Annotated[
        bool,
        typer.Option(
            help="Also score the model adapted to the data's domain from the data's own unlabelled clips (reported "
            "apart as 'adapted')."
        ),
    ] = False,
    per_speaker: Annotated[
        bool,
        typer.Option(
            help="With --adapt, also score it with each speaker standardised by their own clips (reported apart as "
            "'adapted_per_speaker')."
        ),
    ] = False,
    corpus: CorpusOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    skip_unknown: Annotated[
        bool, typer.Option(help="Leave out labels the model's schema does not map (listed).")
    ] = False,
    speaker_norm: Annotated[
        bool,
        typer.Option(help="Assert the model standardises per speaker (applied automatically when it was trained so)."),
    ] = False,
    skip_bad: SkipBadOpt = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: ModelPrecisionOpt = None,
) -> None:
    """Score a trained model on labelled data it has not seen.

    Labels are mapped exactly as in training. Files the model was trained or validated
    on (same audio, or a training speaker of the same corpus) are reported and excluded.
    """
    from speech_emotion.inference.evaluate import evaluate as run_evaluation

    if speaker_norm:
        from speech_emotion.model.metadata import BundleMeta

        try:
            trained_with = BundleMeta.read(model)[0].speaker_norm
        except USER_ERRORS as error:
            raise fail(error) from None
        if not trained_with:
            raise fail(
                f"{model} was trained without --speaker-norm; per-speaker standardisation would not match its "
                "training. Drop --speaker-norm"
            )
    try:
        result = run_evaluation(
            model,
            data,
            labels=labels,
            adapt=adapt,
            per_speaker=per_speaker,
            corpus=corpus,
            speaker_pattern=speaker_pattern,
            skip_unknown=skip_unknown,
            skip_bad=skip_bad,
            progress=progress_bar,
            device=device,
            precision=precision,
        )
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
    if result["speaker_norm"]:
        err_console.print("features standardised per speaker (speaker-norm): not a per-utterance figure")
    if "mapping" in result:
        mapped = ", ".join(f"{k} → {v or 'dropped'}" for k, v in result["mapping"]["model_classes"].items())
        err_console.print(f"classes scored: {', '.join(result['mapping']['classes'])} (model classes: {mapped})")
    if result["model_adaptation"].get("adapted"):
        err_console.print(f"this model was adapted to {result['model_adaptation']['domain']}: an adapted figure")
    if result["n"]:
        err_console.print(metrics_table(f"Held-out speakers {', '.join(result['speakers'])}", {"held-out": result}))
        if "adapted" in result:
            adapted = result["adapted"]
            err_console.print(
                metrics_table(
                    f"Adapted to this data's domain ({adapted['n_clips']} unlabelled clips)", {"held-out": adapted}
                )
            )
        if "adapted_per_speaker" in result:
            title = "Adapted to each speaker (their own unlabelled clips)"
            err_console.print(metrics_table(title, {"held-out": result["adapted_per_speaker"]}))
    else:
        err_console.print("[bold red]no held-out files left to score[/]")
    if as_json:
        print_json(result)


def cv(
    ctx: typer.Context,
    data: DataArg,
    encoder: EncoderOpt,
    folds: Annotated[int, typer.Option(help="K folds of whole speakers; each speaker is tested once.")] = 6,
    leave_corpus_out: Annotated[
        bool,
        typer.Option(
            help="Cross-corpus matrix instead of speaker folds: each corpus is tested by a model trained on the "
            "others (and on each single one); unadapted and adapted figures apart. Needs two corpora or more."
        ),
    ] = False,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Folder for cv.json and config.json (and report.html for the matrix)."),
    ] = None,
    labels: LabelsOpt = None,
    corpus: CorpusOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    seed: SeedOpt = 0,
    epochs: EpochsOpt = TrainConfig.max_epochs,
    patience: PatienceOpt = TrainConfig.patience,
    lr: LrOpt = TrainConfig.lr,
    optimizer: OptimizerOpt = TrainConfig.optimizer,
    weight_decay: WeightDecayOpt = TrainConfig.weight_decay,
    mixup: MixupOpt = TrainConfig.mixup,
    hidden: HiddenOpt = TrainConfig.hidden,
    mixing: MixingOpt = TrainConfig.mixing,
    speaker_norm: SpeakerNormOpt = False,
    balance: BalanceOpt = TrainConfig.balance,
    domain_norm: DomainNormOpt = TrainConfig.domain_norm,
    augment: AugmentOpt = None,
    skip_bad: SkipBadOpt = False,
    allow_single_label_speakers: SingleLabelOpt = False,
    warn_only: WarnOnlyOpt = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Leave-speakers-out cross-validation: the development protocol.

    Features are encoded once (feature store); each fold trains on its own speakers,
    early-stops on disjoint validation speakers and is scored on unseen test speakers.

    Example: ser cv ../shared/data/ravdess-speech-16k --folds 6 --encoder ../shared/models/whisper-base-encoder
    --labels ravdess-8
    """
    from speech_emotion.training.cv import cross_validate

    config = recipe(ctx.params)
    try:
        summary = cross_validate(
            data,
            encoder=encoder,
            folds=folds,
            leave_corpus_out=leave_corpus_out,
            out=out,
            labels=labels,
            corpus=corpus,
            speaker_pattern=speaker_pattern,
            config=config,
            skip_bad=skip_bad,
            allow_single_label_speakers=allow_single_label_speakers,
            force=force,
            progress=progress_bar,
            device=device,
            precision=precision,
        )
    except USER_ERRORS as error:
        raise fail(error) from None
    if leave_corpus_out:
        _print_matrix(summary)
        if as_json:
            print_json(summary)
        return
    table = Table(title=f"Cross-validation: {summary['protocol']}", title_justify="left")
    for column in ("fold", "test speakers", "val speakers", "n", "accuracy", "UAR", "macro-F1"):
        table.add_column(column, justify="right" if column in ("n", "accuracy", "UAR", "macro-F1") else "left")
    for f in summary["folds"]:
        table.add_row(
            str(f["fold"]),
            ",".join(f["test_speakers"]),
            ",".join(f["val_speakers"]),
            str(f["n"]),
            f"{f['accuracy']:.1%}",
            f"{f['uar']:.1%}",
            f"{f['macro_f1']:.1%}",
        )
    mean, std = summary["mean"], summary["std"]
    table.add_row("mean ± std", "", "", "", *(f"{mean[m]:.1%} ± {std[m]:.1%}" for m in ("accuracy", "uar", "macro_f1")))
    err_console.print(table)
    if as_json:
        print_json(summary)


def _print_matrix(summary: dict) -> None:
    table = Table(title=f"Cross-corpus: {summary['protocol']} (UAR chance {1 / len(summary['classes']):.0%})")
    for column in ("trained on", "tested on", "n", "accuracy", "UAR", "UAR adapted"):
        table.add_column(column, justify="left" if column in ("trained on", "tested on") else "right")
    for cell in summary["matrix"]:
        table.add_row(
            " + ".join(cell["train"]),
            cell["test"],
            str(cell["n"]),
            f"{cell['accuracy']:.1%}",
            f"{cell['uar']:.1%}",
            f"{cell['adapted']['uar']:.1%}",
        )
    mean = summary["leave_one_out"]
    table.add_row(
        "leave one out: mean",
        "",
        "",
        f"{mean['mean']['accuracy']:.1%}",
        f"{mean['mean']['uar']:.1%}",
        f"{mean['adapted_mean']['uar']:.1%}",
    )
    err_console.print(table)


def report(
    run: Annotated[Path, typer.Argument(help="Run folder made by `ser train`.", exists=True, file_okay=False)],
) -> None:
    """(Re)build RUN/report.html and its plots from the run folder's files."""
    from speech_emotion.reports import build_report

    try:
        path = build_report(run)
    except (OSError, ValueError, KeyError) as error:
        raise fail(error) from None
    err_console.print(f"report written to {path}")
