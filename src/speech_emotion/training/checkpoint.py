"""Per-epoch training checkpoints in ``RUN/checkpoints/``: safetensors + JSON, no pickle.

A checkpoint is two files, both written atomically (:mod:`speech_emotion.atomic`):

``epoch-0007.safetensors``
    tensors: ``model/<name>`` (the head now), ``best/<name>`` (the best epoch's head so far) and
    ``optimizer/<param index>/<name>`` (AdamW moments and step counts).
``epoch-0007.json``
    everything else: epoch, history, early-stopping bookkeeping, sanity alarms, the states of
    the global torch RNG and of the shuffling generator (base64), the sha256 of the tensor file,
    and ``meta`` (what the run must still match to resume: config, data and encoder
    fingerprints). Written last, so its presence marks a complete checkpoint.

Only the newest checkpoint is kept. :func:`load_checkpoint` returns the newest complete one;
:func:`~speech_emotion.training.run_folder.truncate_metrics` cuts ``metrics.jsonl`` back to its
epoch, so a resumed run never records an epoch twice.

Example:
    >>> import tempfile, torch
    >>> from speech_emotion.training.loop import TrainingState
    >>> folder = Path(tempfile.mkdtemp())
    >>> state = TrainingState(epoch=3, history=[{"epoch": e} for e in (1, 2, 3)], best_score=0.5, best_epoch=2, stale=1,
    ...                       stopped=False, alarms=[], model={"w": torch.ones(2)}, best_model={"w": torch.zeros(2)},
    ...                       optimizer={"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
    ...                       torch_rng=torch.get_rng_state(), generator_rng=torch.Generator().get_state())
    >>> save_checkpoint(folder, state, meta={"seed": 0})
    >>> loaded, meta = load_checkpoint(folder)
    >>> loaded.epoch, loaded.best_model["w"].tolist(), float(loaded.optimizer["state"][0]["step"]), meta
    (3, [0.0, 0.0], 3.0, {'seed': 0})
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from speech_emotion.atomic import write_bytes, write_json
from speech_emotion.training.loop import TrainingState

log = logging.getLogger(__name__)

FORMAT = "speech-emotion-checkpoint"
VERSION = 1
_NAME = re.compile(r"^epoch-(\d+)\.json$")


def checkpoint_name(epoch: int) -> str:
    """File stem of the checkpoint after ``epoch``: ``epoch-0007``."""
    return f"epoch-{epoch:04d}"


def _encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def save_checkpoint(folder: str | Path, state: TrainingState, *, meta: dict) -> None:
    """Write the checkpoint after ``state.epoch`` (tensors, then JSON), then delete older ones.

    Args:
        folder: ``RUN/checkpoints`` (created when missing).
        state: from :func:`~speech_emotion.training.loop.fit_head`'s ``on_checkpoint``.
        meta: JSON-able facts the run must still match when it resumes.
    """
    folder = Path(folder)
    tensors = {f"model/{k}": v.detach().contiguous().clone() for k, v in state.model.items()}
    if state.best_model is not None:
        tensors |= {f"best/{k}": v.detach().contiguous().clone() for k, v in state.best_model.items()}
    optimizer_scalars: dict[str, dict] = {}
    for index, values in state.optimizer["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().contiguous().clone()
            else:
                optimizer_scalars.setdefault(str(index), {})[name] = value
    payload = save_tensors(tensors, metadata={"format": FORMAT})
    stem = checkpoint_name(state.epoch)
    write_bytes(folder / f"{stem}.safetensors", payload)
    write_json(
        folder / f"{stem}.json",
        {
            "format": FORMAT,
            "version": VERSION,
            "epoch": state.epoch,
            "tensors": f"{stem}.safetensors",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "history": state.history,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "stale": state.stale,
            "stopped": state.stopped,
            "alarms": state.alarms,
            "has_best": state.best_model is not None,
            "optimizer_scalars": optimizer_scalars,
            "rng": {"torch": _encode_rng(state.torch_rng), "generator": _encode_rng(state.generator_rng)},
            "meta": meta,
        },
    )
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and int(match.group(1)) < state.epoch:
            path.unlink(missing_ok=True)
            (folder / f"{path.stem}.safetensors").unlink(missing_ok=True)


def load_checkpoint(folder: str | Path) -> tuple[TrainingState, dict] | None:
    """The newest complete checkpoint in ``folder`` and its ``meta``, or None when there is none.

    A checkpoint whose JSON is unreadable or whose tensor file is missing or does not match its
    recorded sha256 (a crash mid-write can leave that only with a broken disk) is skipped with
    a warning, and the next older one is tried.

    Raises:
        ValueError: a checkpoint of another format or a newer version.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    for epoch, path in reversed(candidates):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            payload = (folder / record["tensors"]).read_bytes()
        except (OSError, ValueError, KeyError) as error:
            log.warning("%s: unreadable checkpoint (%s); trying an older one", path, error)
            continue
        if record.get("format") != FORMAT or not isinstance(record.get("version"), int) or record["version"] > VERSION:
            raise ValueError(
                f"{path}: not a checkpoint this speech-emotion reads (format {record.get('format')!r}, "
                f"version {record.get('version')!r}; expected {FORMAT!r} ≤ {VERSION}); delete {folder} to train from "
                "epoch 1"
            )
        if hashlib.sha256(payload).hexdigest() != record["sha256"]:
            log.warning(
                "%s: tensors do not match the recorded sha256; trying an older checkpoint", folder / record["tensors"]
            )
            continue
        tensors = load_tensors(payload)
        optimizer_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        for index, values in record["optimizer_scalars"].items():
            optimizer_state.setdefault(int(index), {}).update(values)
        state = TrainingState(
            epoch=record["epoch"],
            history=record["history"],
            best_score=record["best_score"],
            best_epoch=record["best_epoch"],
            stale=record["stale"],
            stopped=record["stopped"],
            alarms=record["alarms"],
            model={k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("model/")},
            best_model={k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("best/")}
            if record["has_best"]
            else None,
            optimizer={"state": {i: optimizer_state[i] for i in sorted(optimizer_state)}},
            torch_rng=_decode_rng(record["rng"]["torch"]),
            generator_rng=_decode_rng(record["rng"]["generator"]),
        )
        return state, record["meta"]
    return None
