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

    The encoder runs on its device; the head (a few matrix products on pooled features) stays
    on the CPU.

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
        self.device = str(encoder.device)
        self.precision = str(getattr(encoder, "precision", "fp32"))

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        encoder: str | None = None,
        allow_encoder_mismatch: bool = False,
        device: str = "auto",
        precision: str | None = None,
    ) -> TorchBackend:
        """Load a bundle and the encoder it names, checking fingerprint and preprocessing.

        Args:
            device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
            precision: ``fp32`` or ``bf16``; default: the one the model was trained on.

        Raises:
            BundleError: bundle invalid, encoder not found, or fingerprint mismatch.
            ValueError: the device is not here, or the precision is refused.
        """
        use_passive_waiting()  # before torch is first imported
        from speech_emotion.model.bundle import load_bundle

        threads = _env_threads()
        if threads:
            import torch

            torch.set_num_threads(threads)
        bundle = load_bundle(model)
        if precision is None:
            precision = trained_precision(bundle.meta)
        loaded = _load_recorded_encoder(bundle.meta.encoder, bundle.path, encoder, device=device, precision=precision)
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


def trained_precision(meta: BundleMeta) -> str:
    """The precision a model's features were computed in: ``preprocessing["precision"]``, fp32 when absent."""
    return str((meta.preprocessing or {}).get("precision", "fp32"))


def _load_recorded_encoder(recorded: EncoderRef, bundle: Path, given: str | None, *, device: str, precision: str):
    """The encoder a bundle names: ``given`` if any, else the one inside the bundle, else the recorded folder or id.

    Loading a model never downloads: a recorded hub id is loaded only from this machine's Hugging
    Face cache (:func:`cached_snapshot`). Only an explicit ``given`` (``--encoder``) may name a hub
    id to fetch.

    Raises:
        BundleError: none of them loads (every attempt's error is listed).
        ValueError: the device is not here, or the precision is refused (the same for every candidate).
    """
    from speech_emotion.features.devices import check_precision, resolve_device
    from speech_emotion.features.encoders import load_encoder

    resolve_device(device)  # a missing GPU is the user's to fix, not a reason to try the next candidate
    check_precision(precision)

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
            encoder = load_encoder(local, device=device, precision=precision)
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

    Torch devices do not apply: ``device`` picks an ONNX Runtime execution provider instead
    (:func:`onnx_providers`): the CPU's, or with ``cuda`` CUDA's, which needs onnxruntime-gpu and
    is an error without it. The export's own precision is fixed (fp32 or int8), so ``precision``
    may only be None or ``"fp32"``.

    Args:
        folder: the export folder (``model.json``, ``encoder.onnx``, ``head.onnx`` and, for
            Whisper, ``mel_filters.npy``).
        threads: ONNX Runtime intra-op threads (default: ``SER_THREADS`` or ONNX Runtime's
            choice, one per physical core). Idle threads sleep unless ``OMP_WAIT_POLICY=ACTIVE``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see above).
        precision: None or ``"fp32"``.

    Raises:
        ValueError: ``cuda`` without onnxruntime's CUDA provider, or ``bf16``.
    """

    name = "onnx"

    def __init__(
        self, folder: str | Path, *, threads: int | None = None, device: str = "auto", precision: str | None = None
    ):
        self.meta, self.path = BundleMeta.read(folder)
        if self.meta.kind != "onnx":
            raise BundleError(
                f"{self.path / META_FILE}: a model of kind {self.meta.kind!r}, not an ONNX export; export it with "
                "`ser export --format onnx`, or load it with Predictor.from_pretrained"
            )
        if precision not in (None, "fp32"):
            raise ValueError(
                f"{self.path}: an ONNX export runs in the precision it was exported in "
                f"({self.meta.onnx.get('quantization', 'none')} quantization over fp32), not {precision!r}; drop "
                "--precision, or run the PyTorch model it was exported from"
            )
        self.precision = "fp32"
        providers = onnx_providers(device)
        self.device = (
            providers[0] if isinstance(providers[0], str) else f"{providers[0][0]}:{providers[0][1]['device_id']}"
        )
        threads = threads or _env_threads()
        hashes = _check_files(self.path, self.meta.onnx)
        self.encoder = OnnxEncoder(
            self.path, self.meta.to_dict(), fingerprint=hashes[ENCODER_FILE], threads=threads, providers=providers
        )
        self._head = onnx_session(self.path / HEAD_FILE, 1)
        n_outputs = self._head.get_outputs()[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != self.meta.n_classes:
            raise BundleError(
                f"Cannot assign {self.meta.n_classes} labels to a head with {n_outputs} outputs "
                f"({self.path / HEAD_FILE})"
            )

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        encoder: str | None = None,
        allow_encoder_mismatch: bool = False,
        device: str = "auto",
        precision: str | None = None,
    ) -> "OnnxBackend":
        """Load an ONNX export; ``encoder`` cannot apply (the encoder is inside the export)."""
        if encoder:
            raise BundleError(
                f"{model}: an ONNX export carries its encoder ({ENCODER_FILE}); encoder=... (--encoder) applies to "
                "models made by `ser train` only — drop it, or pass the run folder instead of the export"
            )
        return cls(model, device=device, precision=precision)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled features (n, n_layers, dim) through ``head.onnx``."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        expected = (self.encoder.n_layers, self.encoder.dim)
        if features.ndim != 3 or features.shape[1:] != expected:
            raise ValueError(f"expected features of shape (n, {expected[0]}, {expected[1]}), got {features.shape}")
        if not len(features):
            return np.zeros((0, self.meta.n_classes), dtype=np.float32)
        return self._head.run(None, {"features": features})[0]


def onnx_providers(device: str, available: list[str] | None = None) -> list:
    """ONNX Runtime execution providers for a ``--device`` value.

    ``cpu``: the CPU provider. ``cuda``/``cuda:N``: the CUDA provider on GPU N (the CPU provider
    after it only for operators CUDA lacks), and an error when onnxruntime has no CUDA provider
    (the plain ``onnxruntime`` package; ``onnxruntime-gpu`` has it). ``auto``: CUDA's when
    onnxruntime has it, else the CPU's.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        available: the providers onnxruntime offers (default: ``onnxruntime.get_available_providers()``).

    Raises:
        ValueError: a bad device, or ``cuda`` without onnxruntime's CUDA provider.

    Example:
        >>> onnx_providers("auto", available=["CPUExecutionProvider"])
        ['CPUExecutionProvider']
        >>> onnx_providers("cuda:1", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
        [('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']
        >>> onnx_providers("cuda", available=["CPUExecutionProvider"])
        Traceback (most recent call last):
        ...
        ValueError: device 'cuda': this onnxruntime has no CUDA provider (it offers CPUExecutionProvider); ...
    """
    from speech_emotion.features.devices import check_device

    normalised = check_device(device)
    kind, _, index = normalised.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    has_cuda = "CUDAExecutionProvider" in available
    if kind == "cuda" and not has_cuda:
        raise ValueError(
            f"device {device!r}: this onnxruntime has no CUDA provider (it offers {', '.join(available)}); install "
            "onnxruntime-gpu in place of onnxruntime, or pass --device cpu"
        )
    if not has_cuda:  # auto without a CUDA provider
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


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
