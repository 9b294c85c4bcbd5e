"""`ser cache`: look at, fill and empty the feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from speech_emotion.cli.console import err_console, fail, print_json, progress_bar
from speech_emotion.cli.device_options import (
    AddressOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    Engine,
    EngineOpt,
    GpusPerWorkerOpt,
    PrecisionOpt,
    WorkersOpt,
    check_engine_options,
)
from speech_emotion.cli.train import EncoderOpt

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


@app.command()
def fill(
    data: Annotated[
        list[Path],
        typer.Argument(help="Audio files, folders (searched) or CSV/TSV manifests with a path column.", exists=True),
    ],
    encoder: EncoderOpt,
    engine: EngineOpt = Engine.local,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    address: AddressOpt = None,
    workers: WorkersOpt = 1,
    num_gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as compact JSON on stdout.")] = False,
) -> None:
    """Encode every file into the feature store ahead of `ser train` / `ser cv`, here or on a Ray cluster.

    The store is $SER_CACHE (or the platform cache folder); with --engine ray it must be on a
    file system every node shares. `ser train` and `ser cv` with the same --encoder and
    --precision then read every feature from the store and encode nothing, whatever device
    filled it. Unreadable files are listed, the others go on.

    Example: SER_CACHE=/shared/ser-cache ser cache fill ../shared/data/ravdess-speech-16k --encoder
    ../shared/models/whisper-base-encoder --engine ray --address auto --workers 4 --num-gpus-per-worker 1
    """
    from speech_emotion.data.inputs import expand_inputs
    from speech_emotion.features.store import FeatureStore

    check_engine_options(engine, address, workers, num_gpus_per_worker, cpus_per_worker)
    store = FeatureStore()
    try:
        files = expand_inputs(data)
        with progress_bar(f"filling the feature store ({engine.value})", len(files)) as advance:
            if engine is Engine.ray:
                from speech_emotion.inference.ray_engine import RayOptions
                from speech_emotion.inference.ray_store_fill import fill_store_with_ray

                summary = fill_store_with_ray(
                    files,
                    encoder=encoder,
                    store_root=store.root,
                    options=RayOptions(address, workers, num_gpus_per_worker, cpus_per_worker),
                    device=device,
                    precision=precision,
                    progress=advance,
                )
            else:
                from speech_emotion.features.store_fill import fill_store

                summary = fill_store(
                    files, encoder=encoder, store=store, device=device, precision=precision, progress=advance
                )
    except (ImportError, OSError, RuntimeError, ValueError) as error:
        raise fail(error) from None
    err_console.print(
        f"feature store {summary.root}: {summary.n_files} file(s), {summary.n_cached} already there, "
        f"{summary.n_encoded} encoded ({summary.engine}, {summary.device}, {summary.seconds:.1f} s)"
    )
    for problem in summary.errors[:20]:
        err_console.print(f"[yellow]unreadable:[/] {escape(problem['path'])}: {escape(problem['error'])}")
    if summary.n_errors > 20:
        err_console.print(f"[yellow]… and {summary.n_errors - 20} more unreadable file(s)[/]")
    if as_json:
        print_json(summary.to_dict())
