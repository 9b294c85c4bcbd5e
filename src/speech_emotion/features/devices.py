"""Where an encoder runs and in which precision: ``--device`` and ``--precision``.

``--device`` takes ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. Asking for CUDA where there is none is an error, never a quiet fall back to the
CPU. The device is a parameter of the encoder (the same code runs on either); it is never part
of the feature-store key, because it does not change the answer beyond float rounding (DESIGN
invariant 11), so a store filled on a GPU serves CPU runs.

``--precision`` takes ``fp32`` (the default) or ``bf16`` (autocast on the encoder's forward
pass; the log-mel spectrogram, pooling and head stay fp32). bf16 features are not fp32
features: they differ by about 2 % (the issue's measurement on an H200), so ``bf16`` is part
of ``Encoder.preprocessing`` and therefore of the store key, and a model trained on one
precision refuses features of the other. fp16 is refused: its 5-bit exponent overflows in
Whisper's activations (pooled features off by up to 49 % in the same measurement).

Batches are planned by a budget of encoder frames (tokens) per forward pass, by device type:
:data:`DEFAULT_BATCH_FRAMES`.

This module imports torch only inside :func:`resolve_device`.

Example:
    >>> check_device("cuda:1"), check_precision("bf16")
    ('cuda:1', 'bf16')
    >>> check_precision("fp16")
    Traceback (most recent call last):
    ...
    ValueError: precision: fp16 is refused: its 5-bit exponent overflows in the encoders' activations ...
    >>> batch_frames_for("cpu"), batch_frames_for("cuda")
    (1500, 6000)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES_HELP = "auto (CUDA when present, else the CPU), cpu, cuda or cuda:N"
"""What ``--device`` accepts, for help texts and errors."""

PRECISIONS = ("fp32", "bf16")
"""Values of ``--precision``: fp32 (default) or bf16 autocast on the encoder's forward pass."""

DEFAULT_BATCH_FRAMES = {"cpu": 1500, "cuda": 6000}
"""Padded encoder frames (tokens) per forward pass, by device type, when no budget is given.

Frames are hidden-state frames: 50 per second of audio for Whisper and wav2vec 2.0-family
models (20 ms), so 1500 frames are 30 s of padded audio, the CPU budget the project always
used (its CPU speed is unchanged). On CUDA, 6000 frames (120 s; about 32 RAVDESS clips of
3.7 s): larger batches amortise per-batch overheads on a GPU, but the issue measured
``batch_seconds=600`` slower than 30 s on an H200 with this code, so the default sits between
the two. It has not been measured on a GPU yet (docs/speed.md says how to tune it)."""

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def check_device(device: str) -> str:
    """``device`` normalised (lower case, no spaces), or a ValueError saying what is accepted.

    Torch-free: it checks the spelling only; :func:`resolve_device` checks that the device exists.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: anything else (``"gpu"``, ``"cpu:0"``, ``"mps"``).

    Example:
        >>> check_device(" CUDA ")
        'cuda'
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device: expected auto (CUDA when present, else the CPU), cpu, cuda or cuda:N, got 'gpu'
    """
    normalised = str(device).strip().lower()
    match = _DEVICE.match(normalised)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device: expected {DEVICES_HELP}, got {device!r}")
    return normalised


def check_precision(precision: str) -> str:
    """``precision`` normalised, or a ValueError that says why it is refused.

    Raises:
        ValueError: ``fp16`` (numerically unsafe here), or anything but ``fp32``/``bf16``.
    """
    normalised = str(precision).strip().lower()
    if normalised in ("fp16", "float16", "half"):
        raise ValueError(
            "precision: fp16 is refused: its 5-bit exponent overflows in the encoders' activations (pooled Whisper "
            "features off by up to 49% on an H200); use bf16 (same exponent range as fp32, features within ~2%) or "
            "fp32"
        )
    if normalised not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return normalised


def resolve_device(device: str) -> torch.device:
    """The torch device that ``device`` names on this machine.

    ``auto`` is ``cuda:0`` when torch sees a GPU, else ``cpu``. ``cuda`` and ``cuda:N`` must
    exist: there is no fall back to the CPU.

    Args:
        device: as :func:`check_device` accepts.

    Returns:
        A ``torch.device`` (``cuda`` always with its index).

    Raises:
        ValueError: a bad spelling, CUDA asked for where torch sees none, or ``cuda:N`` past
            the last GPU.

    Example:
        >>> str(resolve_device("cpu"))
        'cpu'
    """
    import torch

    normalised = check_device(device)
    kind, _, index = normalised.partition(":")
    if kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if kind == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    if not available:
        build = f"torch {torch.__version__} " + ("without CUDA" if torch.version.cuda is None else "sees no GPU")
        raise ValueError(
            f"device {device!r}: CUDA is not available here ({build}); pass --device cpu, or --device auto to use a "
            "GPU only when there is one"
        )
    n_gpus = torch.cuda.device_count()
    position = int(index) if index else 0
    if position >= n_gpus:
        raise ValueError(
            f"device {device!r}: this machine has {n_gpus} GPU(s) (cuda:0 to cuda:{n_gpus - 1}); pass one of them"
        )
    return torch.device("cuda", position)


def batch_frames_for(device_type: str) -> int:
    """The default frame budget per forward pass on a device type (:data:`DEFAULT_BATCH_FRAMES`)."""
    return DEFAULT_BATCH_FRAMES.get(device_type, DEFAULT_BATCH_FRAMES["cpu"])
