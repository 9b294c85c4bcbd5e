"""Fingerprints of encoders: what the model computes, never where its files sit.

The feature store keys features on the encoder's fingerprint (DESIGN invariant 2): a changed
weight, config value or feature-extractor setting makes a new fingerprint, a copied or moved
folder keeps it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

VOLATILE_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype", "processor_class"}
)
"""Keys of ``config.json`` / ``preprocessor_config.json`` that describe how or where a file was
saved, not what the model computes. They are left out of the fingerprint (as is every key that
starts with ``_``)."""


def hash_json(data: Any) -> str:
    """sha256 hex digest of ``data`` as canonical JSON (sorted keys, no spaces, ASCII).

    Example:
        >>> hash_json({"b": 1, "a": [1, 2]}) == hash_json({"a": [1, 2], "b": 1})
        True
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_state_dict(module: torch.nn.Module, *, skip: Iterable[str] = ()) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict.

    Args:
        module: The torch module.
        skip: Names of tensors left out: those the checkpoint lacked, which hold fresh random
            values on every load and would otherwise change the hash each time.

    Returns:
        sha256 hex digest.
    """
    import torch

    digest = hashlib.sha256()
    state = module.state_dict()
    skipped = set(skip)
    for name in sorted(state):
        if name in skipped:
            continue
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def model_fingerprint(
    *, family: str, source: str, config: Any, extractor: Any, module: torch.nn.Module, skip: Iterable[str] = ()
) -> str:
    """Fingerprint of a transformers encoder: family, ``model_type``, config, feature extractor, weights.

    The config and feature-extractor config are read as saved (``config.json``,
    ``preprocessor_config.json``) when the files exist, less :data:`VOLATILE_KEYS` and the
    derived ``mel_filters``.

    Args:
        family: ``"whisper"`` or ``"ssl"``.
        source: The folder or hub id the model was loaded from.
        config: The loaded transformers config.
        extractor: The loaded feature extractor.
        module: The loaded encoder module.
        skip: Names of state-dict tensors the checkpoint lacked (see :func:`hash_state_dict`).

    Returns:
        sha256 hex digest.
    """
    raw_config = _read_json(source, "config.json")
    if raw_config is None:
        raw_config = config.to_diff_dict()
    raw_extractor = _read_json(source, "preprocessor_config.json")
    if raw_extractor is None:
        raw_extractor = extractor.to_dict()
    raw_extractor.pop("mel_filters", None)
    return hash_json(
        {
            "family": family,
            "model_type": config.model_type,
            "config": _clean_json(raw_config),
            "feature_extractor": _clean_json(raw_extractor),
            "weights": hash_state_dict(module, skip=skip),
        }
    )


def _clean_json(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in VOLATILE_KEYS and not k.startswith("_")}


def _read_json(source: str, filename: str) -> dict[str, Any] | None:
    """Read ``filename`` from a local folder or the Hugging Face cache; None when absent."""
    local = Path(source) / filename
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    from transformers.utils import cached_file

    try:
        path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if path is None:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))
