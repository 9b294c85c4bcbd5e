"""Backends behind :class:`~speech_emotion.inference.predictor.Predictor`: PyTorch and ONNX Runtime.

A backend holds what a predictor needs: ``bundle`` (``meta``, ``path``, ``classes``,
``schema``, ``temperature``), ``encoder`` (``features(signals)`` → pooled per-layer features,
plus the ``fingerprint``/``preprocessing`` the feature store keys on) and
``predict_features(X)`` → probabilities with the bundle's temperature.

- :class:`TorchBackend`: a bundle made by ``ser train`` (``model.safetensors``) and the
  encoder it names, loaded with torch and transformers.
- :class:`OnnxBackend`: a folder made by ``ser export --format onnx``. It runs with
  onnxruntime, numpy, soundfile and soxr alone: torch and transformers are never imported
  (its encoder is :class:`~speech_emotion.features.encoders.onnx.OnnxEncoder`).

This module imports neither torch nor onnxruntime at import time.

Example:
    >>> is_onnx_export("./no/such/folder")
    False
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.data.labels import LabelSchema
from speech_emotion.errors import BundleError
from speech_emotion.features.encoders.onnx import (
    ENCODER_FILE,
    WAIT_POLICY,
    OnnxEncoder,
    onnx_session,
)

log = logging.getLogger(__name__)

# The same tag and version as speech_emotion.model.bundle, which cannot be imported here (torch).
META = "model.json"
BUNDLE_FORMAT = "speech-emotion/bundle"
BUNDLE_VERSION = 1
ONNX_FORMAT = "speech-emotion/onnx"
ONNX_VERSION = 1
HEAD_FILE = "head.onnx"


def use_passive_waiting() -> None:
    """Make idle compute threads sleep rather than spin, unless ``OMP_WAIT_POLICY`` is set.

    On a machine busy with other work, spinning threads take the CPU from the threads doing
    the work: at a load of 10 on 2 cores, Whisper-base went from 0.9 to 4 clips/s with torch
    and from 3.1 to 4–5 clips/s with ONNX Runtime. Set ``OMP_WAIT_POLICY=ACTIVE`` to spin.
    Reaches torch only when called before torch is imported (``ser`` does so at start-up).
    """
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


class TorchBackend:
    """A ``ser train`` bundle (head in safetensors) and its frozen encoder, run with PyTorch.

    Args:
        bundle: a loaded :class:`~speech_emotion.model.bundle.Bundle`.
        encoder: the frozen :class:`~speech_emotion.features.encoders.Encoder` it was trained on.
    """

    name = "torch"

    def __init__(self, bundle: Any, encoder: Any):
        self.bundle = bundle
        self.encoder = encoder

    @classmethod
    def load(
        cls, model: str | Path, *, encoder: str | None = None, allow_encoder_mismatch: bool = False
    ) -> "TorchBackend":
        """Load a bundle and the encoder it names, checking fingerprint and preprocessing.

        Raises:
            BundleError: bundle invalid, encoder not found, or fingerprint mismatch.
        """
        use_passive_waiting()  # before torch is first imported
        from speech_emotion.features.encoders import load_encoder
        from speech_emotion.model.bundle import load_bundle

        threads = _env_threads()
        if threads:
            import torch

            torch.set_num_threads(threads)
        bundle = load_bundle(model)
        recorded = bundle.meta["encoder"]
        if encoder:
            candidates = [encoder]
        elif recorded.get("bundled"):  # a fine-tuned encoder travels inside the bundle (training/finetune.py)
            inside = Path(str(recorded["bundled"]))
            if inside.is_absolute() or ".." in inside.parts:
                raise BundleError(
                    f"{bundle.path / META}: encoder.bundled must be a folder inside the bundle, got "
                    f"{recorded['bundled']!r}"
                )
            candidates = [str(bundle.path / inside)]
        else:
            candidates = [c for c in (recorded.get("path"), recorded["reference"]) if c]
        errors = []
        for candidate in candidates:
            try:
                loaded = load_encoder(candidate)
                break
            except (OSError, ValueError) as error:
                errors.append(f"{candidate}: {error}")
        else:
            raise BundleError(
                f"{bundle.path}: cannot load the encoder this model was trained on:\n  "
                + "\n  ".join(errors)
                + "\npass encoder=... (--encoder) pointing to a copy of it"
            )
        if loaded.fingerprint != recorded["fingerprint"] or loaded.preprocessing != bundle.meta.get(
            "preprocessing", loaded.preprocessing
        ):
            message = (
                f"{bundle.path}: encoder {loaded.reference!r} has fingerprint {loaded.fingerprint[:12]}…, but the "
                "model was "
                f"trained on {recorded['reference']!r} with fingerprint {recorded['fingerprint'][:12]}… (other "
                "weights, "
                "config or preprocessing)"
            )
            if not allow_encoder_mismatch:
                raise BundleError(
                    message
                    + "; pass the original encoder, or allow_encoder_mismatch=True (--allow-encoder-mismatch) to force "
                    "it"
                )
            log.warning(message + "; continuing because the mismatch was allowed")
        return cls(bundle, loaded)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled features (n, n_layers, dim)."""
        import torch

        from speech_emotion.training.loop import predict_proba

        with torch.inference_mode():
            return predict_proba(self.bundle.head, features, temperature=self.bundle.temperature)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------


def is_onnx_export(path: str | Path) -> bool:
    """True when ``path`` is a folder written by ``ser export --format onnx``."""
    meta_file = Path(path) / META
    if not meta_file.is_file():
        return False
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("onnx"), dict)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class OnnxBundle:
    """The metadata of an ONNX export (``model.json``); the head itself is ``head.onnx``."""

    meta: dict
    path: Path

    @property
    def classes(self) -> list[str]:
        """Class names in index order."""
        return list(self.meta["classes"])

    @property
    def schema(self) -> LabelSchema:
        return LabelSchema.from_dict(self.meta["schema"])

    @property
    def temperature(self) -> float:
        """Softmax temperature, already applied inside ``head.onnx``."""
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))


class OnnxBackend:
    """A folder written by ``ser export --format onnx``, run with ONNX Runtime (no torch).

    Args:
        folder: the export folder (``model.json``, ``encoder.onnx``, ``head.onnx`` and, for
            Whisper, ``mel_filters.npy``).
        threads: ONNX Runtime intra-op threads (default: ``SER_THREADS`` or ONNX Runtime's
            choice, one per physical core). Idle threads sleep unless ``OMP_WAIT_POLICY=ACTIVE``.
    """

    name = "onnx"

    def __init__(self, folder: str | Path, *, threads: int | None = None):
        folder = Path(folder)
        meta = _read_onnx_meta(folder)
        self.bundle = OnnxBundle(meta, folder)
        threads = threads or _env_threads()
        hashes = _check_files(folder, meta)
        self.encoder = OnnxEncoder(folder, meta, fingerprint=hashes[ENCODER_FILE], threads=threads)
        self._head = onnx_session(folder / HEAD_FILE, 1)
        n_outputs = self._head.get_outputs()[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != len(self.bundle.classes):
            raise BundleError(
                f"Cannot assign {len(self.bundle.classes)} labels to a head with {n_outputs} outputs "
                f"({folder / HEAD_FILE})"
            )

    @classmethod
    def load(
        cls, model: str | Path, *, encoder: str | None = None, allow_encoder_mismatch: bool = False
    ) -> "OnnxBackend":
        """Load an ONNX export; ``encoder`` cannot apply (the encoder is inside the export)."""
        if encoder:
            raise BundleError(
                f"{model}: an ONNX export carries its encoder ({ENCODER_FILE}); encoder=... (--encoder) applies to "
                "models made by `ser train` only — drop it, or pass the run folder instead of the export"
            )
        return cls(model)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled features (n, n_layers, dim) through ``head.onnx``."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        expected = (self.encoder.n_layers, self.encoder.dim)
        if features.ndim != 3 or features.shape[1:] != expected:
            raise ValueError(f"expected features of shape (n, {expected[0]}, {expected[1]}), got {features.shape}")
        if not len(features):
            return np.zeros((0, len(self.bundle.classes)), dtype=np.float32)
        return self._head.run(None, {"features": features})[0]


def _env_threads() -> int | None:
    value = os.environ.get("SER_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def _read_onnx_meta(folder: Path) -> dict:
    meta_file = folder / META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{folder}: no {META}; pass a folder made by `ser export --format onnx`") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{meta_file}: not valid JSON ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{meta_file}: not a speech-emotion model (format tag "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {BUNDLE_FORMAT!r})"
        )
    if not isinstance(meta.get("version"), int) or meta["version"] > BUNDLE_VERSION:
        raise BundleError(
            f"{meta_file}: bundle version {meta.get('version')!r} is newer than this speech-emotion reads "
            f"({BUNDLE_VERSION}); upgrade speech-emotion"
        )
    onnx_meta = meta.get("onnx")
    if not isinstance(onnx_meta, dict) or onnx_meta.get("format") != ONNX_FORMAT:
        raise BundleError(
            f"{meta_file}: 'onnx' section missing or not {ONNX_FORMAT!r}; re-export with `ser export --format onnx`"
        )
    if not isinstance(onnx_meta.get("version"), int) or onnx_meta["version"] > ONNX_VERSION:
        raise BundleError(
            f"{meta_file}: ONNX export version {onnx_meta.get('version')!r} is newer than this speech-emotion reads "
            f"({ONNX_VERSION}); upgrade speech-emotion"
        )
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        raise BundleError(f"{meta_file}: needs a non-empty 'classes' list in index order")
    schema = LabelSchema.from_dict(meta["schema"])
    if list(schema.classes) != classes:
        raise BundleError(f"{meta_file}: classes {classes} disagree with the schema's classes {list(schema.classes)}")
    return meta


def _check_files(folder: Path, meta: dict) -> dict[str, str]:
    """Every file listed under ``onnx.files`` exists and has its recorded sha256; returns the hashes."""
    files = meta["onnx"].get("files") or {}
    for required in (ENCODER_FILE, HEAD_FILE):
        if required not in files:
            raise BundleError(
                f"{folder / META}: onnx.files does not list {required}; re-export with `ser export --format onnx`"
            )
    hashes = {}
    for name, recorded in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise BundleError(f"{path}: missing; the ONNX export is incomplete (copy the whole folder)")
        actual = file_sha256(path)
        if actual != recorded.get("sha256"):
            raise BundleError(
                f"{path}: sha256 {actual[:12]}… differs from {str(recorded.get('sha256'))[:12]}… recorded in {META} "
                "(the file was changed or replaced); re-export the model"
            )
        hashes[name] = actual
    return hashes
