"""`ser predict`: label audio files, or the speech of long recordings window by window, with a trained model."""

from __future__ import annotations

import csv
import enum
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from speech_emotion.cli.console import err_console, fail, out_console, print_json, progress_bar
from speech_emotion.cli.device_options import (
    AddressOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    Engine,
    EngineOpt,
    GpusPerWorkerOpt,
    ModelPrecisionOpt,
    WorkersOpt,
    check_engine_options,
)
from speech_emotion.data.inputs import expand_inputs
from speech_emotion.errors import AudioError, BundleError, TimelineLimitError, printable_path
from speech_emotion.inference.result_files import ResultWriter

BATCH_FILES = 32


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Backend(str, enum.Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class _Writer:
    """Rows to stdout as they come: JSON lines, CSV (header first), or a Rich table at the end."""

    def __init__(self, fmt: Format, classes: list[str], *, timeline: bool) -> None:
        self.fmt, self.classes, self.timeline = fmt, classes, timeline
        self.n_rows = self.n_errors = 0
        self.table = Table("file", *(["start", "end"] if timeline else []), "label", "p", title_justify="left")
        if fmt is Format.csv:
            self.csv = csv.writer(sys.stdout, lineterminator="\n")
            times = ["start", "end"] if timeline else []
            self.csv.writerow(["path", *times, "label", *(f"p_{c}" for c in classes), "error"])
            sys.stdout.flush()

    def row(self, row: dict) -> None:
        row = {**row, "path": printable_path(row["path"])}  # a file name that is not UTF-8 cannot be written as is
        self.n_rows += 1
        self.n_errors += "error" in row
        if self.fmt is Format.json:
            print_json(row)
        elif self.fmt is Format.csv:
            times = [row.get("start", ""), row.get("end", "")] if self.timeline else []
            if "error" in row:
                self.csv.writerow([row["path"], *times, "", *([""] * len(self.classes)), row["error"]])
            else:
                p = row["probabilities"]
                self.csv.writerow([row["path"], *times, row["label"] or "", *(f"{p[c]:.6f}" for c in self.classes), ""])
            sys.stdout.flush()
        else:
            times = (
                [f"{row['start']:.3f}", f"{row['end']:.3f}"]
                if self.timeline and "start" in row
                else [""] * (2 * self.timeline)
            )
            if "error" in row:
                self.table.add_row(escape(row["path"]), *times, f"[red]error: {escape(row['error'])}[/]", "")
            else:
                p = max(row["probabilities"].values())
                self.table.add_row(escape(row["path"]), *times, row["label"] or "[yellow]uncertain[/]", f"{p:.2f}")

    def close(self) -> None:
        if self.fmt is Format.table:
            out_console.print(self.table)


def _predict_files(
    predictor, files: list[Path], writer: _Writer, min_confidence: Optional[float], speaker: Optional[str]
) -> None:
    """One row per file in input order; the predictor decodes the next batch while one is computed."""
    with progress_bar("predicting", len(files)) as advance:
        rows = predictor.predict_files(files, batch_size=BATCH_FILES, min_confidence=min_confidence, speaker=speaker)
        for row in rows:
            writer.row(row)
            advance(1)


def _declared_durations(files: list[Path], *, hop: float, max_windows: int) -> list[float]:
    """Every file's duration from its header (0 when unreadable: its error row comes when it is read).

    A file whose length allows more than ``max_windows`` windows stops the command before any work.
    """
    from speech_emotion.data.audio import declared_duration
    from speech_emotion.inference.timeline import check_window_count

    durations = []
    for path in files:
        try:
            duration = declared_duration(path)
        except AudioError:
            duration = None
        if duration is not None:
            try:
                check_window_count(duration, hop=hop, max_windows=max_windows, where=printable_path(path))
            except TimelineLimitError as error:
                raise fail(f"{error} (--hop, --max-windows)") from None
        durations.append(duration or 0.0)
    return durations


def _predict_timelines(
    predictor,
    files: list[Path],
    writer: _Writer,
    *,
    window: float,
    hop: float,
    vad: bool,
    min_confidence: Optional[float],
    max_windows: int,
) -> int:
    """Segments of every file in time order; returns how many files had no speech.

    Every file's window count is checked from its header first: one over ``max_windows``
    stops the command before any work (an ``error:`` line naming the file).
    """
    from speech_emotion.inference.timeline import predict_timeline

    durations = _declared_durations(files, hop=hop, max_windows=max_windows)
    n_silent = 0
    with progress_bar("timeline (seconds of audio)", sum(durations)) as advance:
        for path, duration in zip(files, durations):
            n_segments = 0
            done = 0.0

            def step(seconds: float) -> None:
                nonlocal done
                done += seconds
                advance(seconds)

            try:
                for segment in predict_timeline(
                    predictor,
                    path,
                    window=window,
                    hop=hop,
                    vad=vad,
                    progress=step,
                    min_confidence=min_confidence,
                    max_windows=max_windows,
                ):
                    writer.row({"path": str(path)} | segment)
                    n_segments += 1
            except AudioError as error:
                writer.row({"path": str(path), "error": error.reason})
            except TimelineLimitError as error:  # a header without a length: counted while cutting
                writer.row({"path": str(path), "error": str(error).removeprefix(f"{path}: ")})
            else:
                n_silent += n_segments == 0
            advance(max(0.0, duration - done))
    return n_silent


def predict(
    model: Annotated[Path, typer.Argument(help="Run folder or model bundle folder.", exists=True, file_okay=False)],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Audio files, folders (expanded in sorted order) or CSV/TSV manifests with a path column."),
    ],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Same as --format json: one compact JSON line per file (per segment with --timeline) on stdout, in "
            "input order.",
        ),
    ] = False,
    fmt: Annotated[
        Optional[Format],
        typer.Option(
            "--format",
            help="table (for people), json (JSON lines) or csv (header, then one row per file or segment; an 'error' "
            "column for unreadable files).",
            case_sensitive=False,
        ),
    ] = None,
    timeline: Annotated[
        bool,
        typer.Option(
            "--timeline",
            help="Long recordings: skip silence with a voice-activity detector and label each window of speech (start, "
            "end in seconds).",
        ),
    ] = False,
    window: Annotated[
        float,
        typer.Option(help="--timeline: window length in seconds; windows are cut inside speech regions.", min=0.5),
    ] = 4.0,
    hop: Annotated[
        Optional[float],
        typer.Option(
            help="--timeline: seconds between window starts, at least a tenth of --window (default: --window, no "
            "overlap).",
            min=0.01,
        ),
    ] = None,
    max_windows: Annotated[
        Optional[int],
        typer.Option(
            help="--timeline: most windows one file may be cut into (default 20000); a file whose length allows more "
            "stops the command before any work.",
            min=1,
        ),
    ] = None,
    vad: Annotated[
        bool,
        typer.Option(
            "--vad/--no-vad", help="--timeline: skip non-speech with Silero VAD; --no-vad windows the whole recording."
        ),
    ] = True,
    min_confidence: Annotated[
        Optional[float],
        typer.Option(
            help="Below this top probability, mark the result uncertain (label null) instead of forcing a label.",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Where the model's encoder is now, if it moved.")] = None,
    allow_encoder_mismatch: Annotated[
        bool, typer.Option(help="Use an encoder whose fingerprint differs from training (unreliable).")
    ] = False,
    backend: Annotated[
        Backend,
        typer.Option(
            help="auto: ONNX Runtime for a `ser export --format onnx` folder, PyTorch for a run folder.",
            case_sensitive=False,
        ),
    ] = Backend.auto,
    speaker: Annotated[
        Optional[str],
        typer.Option(
            help="Who speaks in every file, for a model adapted per speaker (`ser adapt --per-speaker`): their "
            "statistics standardise the clips."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: ModelPrecisionOpt = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Write the rows to this file instead of stdout: .jsonl (the --format json lines), .csv (the --format "
            "csv table) or .parquet (the same columns, typed; needs pyarrow).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = 1,
    num_gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
) -> None:
    """Predict the emotion of each audio file, or with --timeline of each window of speech in long recordings.

    Output streams as files (or segments) are done, in input order. An unreadable file gives
    an error row ({path, error}) and the others go on. With --engine ray the same rows come from
    a Ray cluster (decoding in CPU tasks, the model in an actor pool).
    """
    from speech_emotion.inference.predictor import Predictor

    if as_json and fmt not in (None, Format.json):
        raise fail(f"--json means --format json, but --format {fmt.value} was given; pass one of them")
    if out is not None and (as_json or fmt is not None):
        raise fail(f"--out {out} writes the format its suffix names; drop --json/--format")
    fmt = Format.json if as_json else (fmt or Format.table)
    if not timeline and (window != 4.0 or hop is not None or not vad or max_windows is not None):
        raise fail("--window, --hop, --max-windows and --no-vad apply to --timeline only; add --timeline")
    if timeline and speaker is not None:
        raise fail("--speaker applies to whole-file predictions, not to --timeline; drop one of them")
    check_engine_options(engine, address, workers, num_gpus_per_worker, cpus_per_worker)
    if timeline:
        from speech_emotion.inference.timeline import MAX_WINDOWS, check_timeline_options

        max_windows = MAX_WINDOWS if max_windows is None else max_windows
        try:
            hop = check_timeline_options(window=window, hop=hop, max_windows=max_windows)
        except ValueError as error:
            raise fail(f"--{error}") from None
    try:
        files = expand_inputs(inputs)
        if engine is Engine.ray:
            from speech_emotion.model.metadata import BundleMeta

            classes, predictor = list(BundleMeta.read(model)[0].classes), None
        else:
            predictor = Predictor.from_pretrained(
                model,
                encoder=encoder,
                allow_encoder_mismatch=allow_encoder_mismatch,
                backend=backend.value,
                device=device,
                precision=precision,
            )
            if speaker is not None:
                predictor.check_speaker(speaker)
            classes = list(predictor.classes)
        writer = (
            _FileWriter(out, classes, timeline=timeline, uncertain=min_confidence is not None)
            if out is not None
            else _Writer(fmt, classes, timeline=timeline)
        )
    except (BundleError, ImportError, OSError, ValueError) as error:
        raise fail(error) from None
    try:
        if engine is Engine.ray:
            from speech_emotion.inference.ray_engine import RayOptions

            if timeline:
                _declared_durations(files, hop=hop, max_windows=max_windows)  # a file over the limit stops it here
            _predict_with_ray(
                model,
                files,
                writer,
                ray_options=RayOptions(address, workers, num_gpus_per_worker, cpus_per_worker),
                device=device,
                precision=precision,
                encoder=encoder,
                allow_encoder_mismatch=allow_encoder_mismatch,
                backend=backend.value,
                min_confidence=min_confidence,
                speaker=speaker,
                timeline={"window": window, "hop": hop, "vad": vad, "max_windows": max_windows} if timeline else None,
            )
        elif timeline:
            try:
                n_silent = _predict_timelines(
                    predictor,
                    files,
                    writer,
                    window=window,
                    hop=hop,
                    vad=vad,
                    min_confidence=min_confidence,
                    max_windows=max_windows,
                )
            except ImportError as error:  # silero-vad missing or of another release
                raise fail(error) from None
            if n_silent:
                err_console.print(f"[yellow]{n_silent} file(s) held no speech (no segments)[/]")
        else:
            _predict_files(predictor, files, writer, min_confidence, speaker)
    except BaseException:
        if isinstance(writer, _FileWriter):
            writer.abort()
        raise
    writer.close()
    if out is not None:
        err_console.print(f"{writer.n_rows} row(s) written to {printable_path(out)}")
    if writer.n_errors:
        err_console.print(f"[yellow]{writer.n_errors} file(s) could not be read[/]")


class _FileWriter(ResultWriter):
    """--out: rows to a file, with the interface of :class:`_Writer` (paths made printable as there)."""

    def row(self, row: dict) -> None:
        self.write({**row, "path": printable_path(row["path"])})


def _predict_with_ray(
    model: Path,
    files: list[Path],
    writer,
    *,
    ray_options,
    device: str,
    precision: Optional[str],
    encoder: Optional[str],
    allow_encoder_mismatch: bool,
    backend: str,
    min_confidence: Optional[float],
    speaker: Optional[str],
    timeline: Optional[dict],
) -> None:
    """Rows from a Ray Data pipeline (:func:`~speech_emotion.inference.ray_engine.predict_with_ray`), in input order."""
    from speech_emotion.inference.ray_engine import predict_with_ray

    try:
        with progress_bar("predicting (ray)", len(files)) as advance:
            for row in predict_with_ray(
                model,
                files,
                options=ray_options,
                device=device,
                precision=precision,
                encoder=encoder,
                allow_encoder_mismatch=allow_encoder_mismatch,
                backend=backend,
                min_confidence=min_confidence,
                speaker=speaker,
                timeline=timeline,
                progress=advance,
            ):
                writer.row(row)
    except (BundleError, ImportError, OSError, ValueError, RuntimeError) as error:
        raise fail(error) from None
