"""``--device``, ``--precision`` and the Ray engine's options, shared by every command that encodes.

The values are checked as they are parsed (torch-free: ``ser --help`` stays fast); whether a
CUDA device exists is checked when the command loads its encoder, with a message that says so.
"""

from __future__ import annotations

import enum
from typing import Annotated, Optional

import typer

from speech_emotion.cli.console import fail
from speech_emotion.features.devices import DEVICES_HELP, check_device, check_precision


def _device(value: str) -> str:
    try:
        return check_device(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _precision(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        return check_precision(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help=f"Where the encoder runs: {DEVICES_HELP}. Asking for CUDA where there is none is an error. The "
        "feature-store key does not depend on it.",
        callback=_device,
    ),
]

PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, or bf16 (autocast on the encoder's forward pass; recorded in the features' preprocessing, since "
        "bf16 features are not fp32 features). fp16 is refused: it overflows.",
        callback=_precision,
    ),
]

ModelPrecisionOpt = Annotated[
    Optional[str],
    typer.Option(
        "--precision",
        help="fp32 or bf16; default: the precision the model was trained on (another one is a preprocessing mismatch).",
        callback=_precision,
        show_default=False,
    ),
]


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="local: this process (decoding in worker threads); ray: a Ray Data pipeline over a Ray cluster (decode in "
        "CPU tasks, an actor pool holding the model), with `pip install 'speech-emotion\\[ray]'`.",
        case_sensitive=False,
    ),
]

AddressOpt = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        help="--engine ray: the cluster to join: auto (the one `ray start` runs here) or ray://HOST:10001 (Ray "
        "Client). Default: start a local cluster on this machine.",
        show_default=False,
    ),
]

WorkersOpt = Annotated[
    int,
    typer.Option("--workers", help="--engine ray: actors in the pool, each holding a copy of the model.", min=1),
]

GpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--num-gpus-per-worker",
        help="--engine ray: GPUs each actor reserves (0: CPU actors; 0.5: two actors share a GPU). --device cuda needs "
        "it above 0.",
        min=0.0,
    ),
]

CpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--cpus-per-worker",
        help="--engine ray: logical CPUs each actor reserves (and its compute threads). Decoding tasks take 0.25 each.",
        min=0.05,
    ),
]


def check_engine_options(
    engine: Engine, address: Optional[str], workers: int, num_gpus_per_worker: float, cpus_per_worker: float
) -> None:
    """Refuse Ray's options given with ``--engine local``, naming them (they would be ignored)."""
    ray_only = {
        "--address": address is not None,
        "--workers": workers != 1,
        "--num-gpus-per-worker": bool(num_gpus_per_worker),
        "--cpus-per-worker": cpus_per_worker != 1.0,
    }
    if engine is Engine.local and any(ray_only.values()):
        raise fail(f"{', '.join(name for name, given in ray_only.items() if given)} apply to --engine ray only")
