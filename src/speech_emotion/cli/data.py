"""`ser data`: look at a corpus and split it before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from speech_emotion.atomic import write_json
from speech_emotion.cli.console import counts_table, err_console, fail, print_json, progress_bar
from speech_emotion.data.corpora import CORPORA
from speech_emotion.errors import CorpusError, LabelError, SplitError

# The library modules that decode audio, encode labels and split (numpy, soundfile, yaml,
# scikit-learn) are imported inside the functions that use them: `ser --help` imports this
# module and must stay fast.
if TYPE_CHECKING:
    from speech_emotion.data.dataset import Dataset

app = typer.Typer(help="Inspect a corpus and make speaker-disjoint splits.", no_args_is_help=True)

DataArg = Annotated[
    list[str],
    typer.Argument(
        help="Corpus folder(s), or CSV/TSV manifest(s) with path,label,speaker columns. Several corpora make one "
        "dataset, speakers namespaced by corpus (tess:OAF); give an adapter per corpus as PATH::ADAPTER.",
        show_default=False,
    ),
]
CorpusOpt = Annotated[
    Optional[str],
    typer.Option(
        "--corpus", help=f"Corpus naming scheme of a single corpus: {', '.join(CORPORA)}. Detected when omitted."
    ),
]
LabelsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--labels",
        help="Label schema: a built-in name (ravdess-8, ravdess-7; across corpora common-4, common-6, common-7), a "
        "YAML/JSON file with classes/merge/drop (and per-corpus sections under corpora), or a label_to_index mapping, "
        "or inline JSON. Default: every raw label, in canonical order (a folder per label: the folder names).",
    ),
]
SpeakerPatternOpt = Annotated[
    Optional[str],
    typer.Option(
        "--speaker-pattern",
        help="Regex finding the speaker id in each file's NAME (folder-per-label corpora; the folder is the label): "
        "group 'speaker' or group 1, e.g. '^(?P<speaker>\\d{4})_'.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only compact JSON on stdout (tables go to stderr).")]
SingleLabelOpt = Annotated[
    bool,
    typer.Option(
        help="Accept speakers that each have a single label (refused by default: it almost always means the speaker "
        "ids were parsed wrongly, and a split by them would leak)."
    ),
]


def load_with_progress(data: list[str], **kwargs) -> Dataset:
    """Library ``load_dataset`` with a progress bar, errors turned into a clean exit."""
    from speech_emotion.data.dataset import load_dataset
    from speech_emotion.data.sources import as_sources, read_corpora

    try:
        sources = as_sources(
            data, corpus=kwargs.pop("corpus", None), speaker_pattern=kwargs.pop("speaker_pattern", None)
        )
        total = len(read_corpora(sources))
        with progress_bar("decoding audio", total) as advance:
            return load_dataset(sources, progress=advance, **kwargs)
    except (CorpusError, LabelError) as error:
        raise fail(error) from None


def print_label_report(report: dict) -> None:
    """The label report as tables on stderr."""
    err_console.print(counts_table("Raw labels (before mapping)", report["counts_before"], ("raw label", "files")))
    rows = {f"{i}  {name}": (report["counts_after"][name],) for i, name in enumerate(report["classes"])}
    err_console.print(
        counts_table(f"Classes (after mapping): K = {report['n_classes']}", rows, ("index  class", "files"))
    )
    err_console.print(f"encoded values: {report['encoded_values']}")
    for raw, target in report["merged"].items():
        err_console.print(f"merged: {raw} → {target}")
    for raw, n in report["dropped"].items():
        err_console.print(f"dropped: {raw} ({n} files)")
    for raw, canonical in report["synonyms"].items():
        err_console.print(f"synonym: {raw!r} read as {canonical!r}")
    if "by_corpus" in report:  # several corpora: each one's classes after the mapping, and what it dropped
        rows = {
            corpus: (*(counts["counts_after"][c] for c in report["classes"]), sum(counts["dropped"].values()))
            for corpus, counts in report["by_corpus"].items()
        }
        err_console.print(counts_table("Per corpus (after mapping)", rows, ("corpus", *report["classes"], "dropped")))


@app.command()
def inspect(
    data: DataArg,
    corpus: CorpusOpt = None,
    labels: LabelsOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    allow_single_label_speakers: SingleLabelOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Decode every file of a corpus (or several) and report speakers, labels and problems.

    Every file is decoded fully (a truncated file can have a valid header). Files that
    will not load are listed under problems with the reason; none is dropped silently.
    """
    dataset = load_with_progress(
        data,
        corpus=corpus,
        labels=labels,
        speaker_pattern=speaker_pattern,
        skip_bad=True,
        allow_single_label_speakers=allow_single_label_speakers,
    )
    report = dataset.label_report
    result = {
        "n_files": len(dataset),
        "speakers": sorted(set(dataset.speakers)),
        "classes": report["classes"],
        "label_to_index": report["label_to_index"],
        "counts_before": report["counts_before"],
        "counts_after": report["counts_after"],
        "encoded_values": report["encoded_values"],
        "synonyms": report["synonyms"],
        "problems": [p.to_dict() for p in dataset.problems],
    }
    if "by_corpus" in report:
        result["by_corpus"] = report["by_corpus"]
    print_label_report(report)
    err_console.print(f"{len(dataset)} files, {len(result['speakers'])} speakers: {', '.join(result['speakers'])}")
    for problem in dataset.problems:
        err_console.print(
            f"[yellow]problem:[/] {escape(problem.path)}: {escape(problem.reason)}", highlight=False, soft_wrap=True
        )
    if as_json:
        print_json(result)


@app.command()
def split(
    data: DataArg,
    labels: LabelsOpt = None,
    corpus: CorpusOpt = None,
    speaker_pattern: SpeakerPatternOpt = None,
    test_speakers: Annotated[
        Optional[str],
        typer.Option(help="Test speakers, e.g. 01,02 or 16-18 (several corpora: tess:OAF, ravdess:16-18)."),
    ] = None,
    val_speakers: Annotated[Optional[str], typer.Option(help="Validation speakers (with --test-speakers).")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="Fraction of speakers drawn for test, seeded.")] = None,
    val_fraction: Annotated[
        Optional[float], typer.Option(help="Fraction of speakers drawn for validation, seeded.")
    ] = None,
    folds: Annotated[Optional[int], typer.Option(help="K folds of whole speakers (leave-speakers-out).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for drawn speakers.")] = 0,
    allow_speaker_overlap: Annotated[
        bool,
        typer.Option(
            help="Random split over files: speakers shared across parts. NOT speaker-independent; recorded in the "
            "report."
        ),
    ] = False,
    skip_bad: Annotated[bool, typer.Option(help="Leave out files that will not load (listed in the report).")] = False,
    allow_single_label_speakers: SingleLabelOpt = False,
    out: Annotated[
        Optional[Path], typer.Option(help="Write the split as JSON here (reused by `ser train --split`).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Split a corpus into speaker-disjoint parts and check them for leakage.

    Give exactly one of --test-speakers, --test-fraction or --folds. Every split is
    checked: no speaker and no identical audio (same decoded samples) in two parts.
    """
    chosen = [option for option in (test_speakers, test_fraction, folds) if option is not None]
    if len(chosen) != 1:
        raise fail(f"give exactly one of --test-speakers, --test-fraction, --folds (got {len(chosen)})")
    if out and out.exists() and not force:
        raise fail(f"{out} exists; pass --force to overwrite it or choose another --out")
    dataset = load_with_progress(
        data,
        corpus=corpus,
        labels=labels,
        speaker_pattern=speaker_pattern,
        skip_bad=skip_bad,
        allow_single_label_speakers=allow_single_label_speakers,
    )
    try:
        splits = make_splits(
            dataset, test_speakers, val_speakers, test_fraction, val_fraction, folds, seed, allow_speaker_overlap
        )
        result = describe_splits(dataset, splits, allow_speaker_overlap)
    except SplitError as error:
        raise fail(error) from None
    result["label_report"] = dataset.label_report
    result["skipped"] = [p.to_dict() for p in dataset.problems]
    for table in split_tables(dataset, result):
        err_console.print(table)
    if out:
        write_json(out, result)
        err_console.print(f"split written to {escape(str(out))}")
    if as_json:
        print_json(result)


def make_splits(dataset, test_speakers, val_speakers, test_fraction, val_fraction, folds, seed, allow_speaker_overlap):
    from speech_emotion.data.splits import leave_speakers_out, parse_speakers, random_split, speaker_disjoint_split

    speakers = dataset.speakers
    if folds is not None:
        return leave_speakers_out(
            speakers, folds, seed=seed, val_fraction=val_fraction if val_fraction is not None else 1 / 6
        )
    if allow_speaker_overlap and test_fraction is not None:
        return [random_split(len(dataset), speakers, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)]
    return [
        speaker_disjoint_split(
            speakers,
            test_speakers=parse_speakers(test_speakers) if test_speakers else None,
            val_speakers=parse_speakers(val_speakers) if val_speakers else None,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            seed=seed,
        )
    ]


def describe_splits(dataset, splits, allow_speaker_overlap: bool) -> dict:
    """Split JSON: per part speakers and class counts, plus the leakage report (raises on leakage)."""
    import numpy as np

    from speech_emotion.data.splits import check_leakage

    described = []
    for split in splits:
        leakage = check_leakage(
            split, dataset.speakers, dataset.hashes, dataset.paths, allow_speaker_overlap=allow_speaker_overlap
        )
        entry = split.to_dict(dataset.paths)
        for name, rows in split.parts.items():
            counts = np.bincount(dataset.y[rows], minlength=dataset.schema.n_classes)
            entry["parts"][name]["counts"] = dict(zip(dataset.schema.classes, counts.tolist()))
        entry["leakage"] = leakage
        described.append(entry)
    result = {"format": "speech-emotion/split", "version": 1, "schema": dataset.schema.to_dict()}
    if len(described) > 1:
        result["folds"] = described
    else:
        result.update(described[0])
    return result


def split_tables(dataset, result):
    from rich.table import Table

    entries = result.get("folds") or [result]
    for k, entry in enumerate(entries):
        title = f"Fold {k + 1}" if "folds" in result else "Split"
        table = Table(title=f"{title} — {entry['protocol']}", title_justify="left")
        table.add_column("part")
        table.add_column("speakers")
        table.add_column("files", justify="right")
        for name in dataset.schema.classes:
            table.add_column(name, justify="right")
        for name, part in entry["parts"].items():
            table.add_row(name, ",".join(part["speakers"]), str(part["n"]), *(str(v) for v in part["counts"].values()))
        yield table
