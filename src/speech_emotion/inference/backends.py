"""Backends behind :class:`~speech_emotion.inference.predictor.Predictor`: PyTorch and ONNX Runtime.

A backend holds what a predictor needs: ``meta`` (the model's
:class:`~speech_emotion.model.metadata.BundleMeta`) and ``path`` (its folder), ``encoder``
(``features(signals)`` → pooled per-layer features, plus the ``fingerprint``/``preprocessing``
the feature store keys on) and ``predict_features(X)`` → probabilities with the model's
temperature. Which backend a folder needs is written in its ``model.json`` (``kind``).

- :class:`TorchBackend`: a bundle made by ``ser train`` (``model.safetensors``) and the
  encoder it names, loaded with torch and transformers.
- :class:`OnnxBackend`: a folder made by ``ser export --format onnx``. It runs with
  onnxruntime, numpy, soundfile and soxr alone: torch and transformers are never imported
  (its encoder is :class:`~speech_emotion.features.encoders.onnx.OnnxEncoder`).

This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.errors import BundleError
from speech_emotion.features.encoders.onnx import ENCODER_FILE, WAIT_POLICY, OnnxEncoder, onnx_session
from speech_emotion.model.metadata import META_FILE, BundleMeta, EncoderRef

log = logging.getLogger(__name__)

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
        self.meta: BundleMeta = bundle.meta
        self.path: Path = bundle.path
        self.encoder = encoder

    @classmethod
    def load(
        cls, model: str | Path, *, encoder: str | None = None, allow_encoder_mismatch: bool = False
    ) -> TorchBackend:
        """Load a bundle and the encoder it names, checking fingerprint and preprocessing.

        Raises:
            BundleError: bundle invalid, encoder not found, or fingerprint mismatch.
        """
        use_passive_waiting()  # before torch is first imported
        from speech_emotion.model.bundle import load_bundle

        threads = _env_threads()
        if threads:
            import torch

            torch.set_num_threads(threads)
        bundle = load_bundle(model)
        loaded = _load_recorded_encoder(bundle.meta.encoder, bundle.path, encoder)
        recorded = bundle.meta.encoder
        if loaded.fingerprint != recorded.fingerprint or loaded.preprocessing != (
            bundle.meta.preprocessing or loaded.preprocessing
        ):
            message = (
                f"{bundle.path}: encoder {loaded.reference!r} has fingerprint {loaded.fingerprint[:12]}…, but the "
                f"model was trained on {recorded.reference!r} with fingerprint {str(recorded.fingerprint)[:12]}… "
                "(other weights, config or preprocessing)"
            )
            if not allow_encoder_mismatch:
                raise BundleError(
                    f"{message}; pass the original encoder, or allow_encoder_mismatch=True (--allow-encoder-mismatch) "
                    "to force it"
                )
            log.warning(message + "; continuing because the mismatch was allowed")
        return cls(bundle, loaded)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled features (n, n_layers, dim)."""
        from speech_emotion.model.head import predict_proba

        return predict_proba(self.bundle.head, features, temperature=self.meta.temperature)


def _load_recorded_encoder(recorded: EncoderRef, bundle: Path, given: str | None):
    """The encoder a bundle names: ``given`` if any, else the one inside the bundle, else the recorded folder or id.

    Loading a model never downloads: a recorded hub id is loaded only from this machine's Hugging
    Face cache (:func:`cached_snapshot`). Only an explicit ``given`` (``--encoder``) may name a hub
    id to fetch.

    Raises:
        BundleError: none of them loads (every attempt's error is listed).
    """
    from speech_emotion.features.encoders import load_encoder

    inside = recorded.bundled_folder(bundle)  # a fine-tuned encoder travels inside the bundle
    if given:
        candidates = [given]
    elif inside is not None:
        candidates = [str(inside)]
    else:
        candidates = [c for c in (recorded.path, recorded.reference) if c]
    errors = []
    for candidate in candidates:
        try:
            local = (
                candidate if candidate == given or Path(candidate).expanduser().exists() else cached_snapshot(candidate)
            )
            encoder = load_encoder(local)
            encoder.reference = candidate
            return encoder
        except (OSError, ValueError) as error:
            errors.append(f"{candidate}: {error}")
    raise BundleError(
        f"{bundle}: cannot load the encoder this model was trained on:\n  "
        + "\n  ".join(errors)
        + "\npass encoder=... (--encoder) pointing to a copy of it"
    )


def cached_snapshot(reference: str) -> str:
    """The local folder of a hub id in this machine's Hugging Face cache; nothing is downloaded.

    Raises:
        FileNotFoundError: ``reference`` is not a local folder and not in the cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    if reference.strip().lower() == "egemaps":
        return reference
    try:
        return snapshot_download(reference, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise FileNotFoundError(
            "not a folder on this machine, nor in its Hugging Face cache; loading a model never downloads its "
            "encoder: "
            f"download it yourself (e.g. `huggingface-cli download {reference}`) or pass --encoder FOLDER"
        ) from None


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        self.meta, self.path = BundleMeta.read(folder)
        if self.meta.kind != "onnx":
            raise BundleError(
                f"{self.path / META_FILE}: a model of kind {self.meta.kind!r}, not an ONNX export; export it with "
                "`ser export --format onnx`, or load it with Predictor.from_pretrained"
            )
        threads = threads or _env_threads()
        hashes = _check_files(self.path, self.meta.onnx)
        self.encoder = OnnxEncoder(self.path, self.meta.to_dict(), fingerprint=hashes[ENCODER_FILE], threads=threads)
        self._head = onnx_session(self.path / HEAD_FILE, 1)
        n_outputs = self._head.get_outputs()[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != self.meta.n_classes:
            raise BundleError(
                f"Cannot assign {self.meta.n_classes} labels to a head with {n_outputs} outputs "
                f"({self.path / HEAD_FILE})"
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
            return np.zeros((0, self.meta.n_classes), dtype=np.float32)
        return self._head.run(None, {"features": features})[0]


def _env_threads() -> int | None:
    value = os.environ.get("SER_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def _check_files(folder: Path, onnx: dict) -> dict[str, str]:
    """Every file listed under ``onnx.files`` exists and has its recorded sha256; returns the hashes."""
    files = onnx.get("files") or {}
    for required in (ENCODER_FILE, HEAD_FILE):
        if required not in files:
            raise BundleError(
                f"{folder / META_FILE}: onnx.files does not list {required}; re-export with `ser export --format onnx`"
            )
    hashes = {}
    for name, recorded in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise BundleError(f"{path}: missing; the ONNX export is incomplete (copy the whole folder)")
        actual = file_sha256(path)
        if actual != recorded.get("sha256"):
            raise BundleError(
                f"{path}: sha256 {actual[:12]}… differs from {str(recorded.get('sha256'))[:12]}… recorded in "
                f"{META_FILE} "
                "(the file was changed or replaced); re-export the model"
            )
        hashes[name] = actual
    return hashes
