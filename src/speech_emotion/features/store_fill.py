"""Fill the feature store ahead of training: ``ser cache fill DATA --encoder ENC`` (one machine).

Every audio file under DATA is decoded (in worker threads, ahead of the encoder), hashed and
encoded once under its feature-store key (audio content hash, encoder fingerprint,
preprocessing, format version: never a path, a label or a device). ``ser train`` and
``ser cv`` on the same audio, encoder and precision then read every feature from the store and
encode nothing, wherever the store was filled: one machine here, a Ray cluster with
:func:`~speech_emotion.inference.ray_store_fill.fill_store_with_ray`. Unreadable files are listed
in the summary, never dropped in silence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speech_emotion.data.audio import audio_hash
from speech_emotion.data.prefetch import DECODE_WORKERS, DecodedFile, decode_ahead
from speech_emotion.features.store import FeatureStore, extract_features

CHUNK_FILES = 64
"""Files decoded, encoded and written to the store together."""


@dataclass
class FillSummary:
    """What a fill did.

    Attributes:
        root: the store's folder.
        encoder: the encoder reference; fingerprint: its fingerprint; preprocessing: its
            preprocessing (with the precision when bf16): together, what the keys hold.
        n_files: files listed; n_cached: already in the store; n_encoded: encoded now;
            n_errors: unreadable (each in ``errors`` as ``{"path", "error"}``).
        engine: ``"local"`` or ``"ray"``; device: where the encoder ran; seconds: wall time.
    """

    root: str
    encoder: str
    fingerprint: str
    preprocessing: dict
    engine: str
    device: str
    n_files: int = 0
    n_cached: int = 0
    n_encoded: int = 0
    n_errors: int = 0
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str, path: str, error: str | None = None) -> None:
        """Count one file: ``status`` is ``"cached"``, ``"encoded"`` or ``"error"`` (with its reason)."""
        self.n_files += 1
        if status == "error":
            self.n_errors += 1
            self.errors.append({"path": path, "error": error or "unreadable"})
        elif status == "cached":
            self.n_cached += 1
        else:
            self.n_encoded += 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_statuses(
    encoder: Any, files: Sequence[DecodedFile], store: FeatureStore
) -> tuple[list[str], list[str | None]]:
    """Encode the decoded files missing from ``store`` and write them; per file, its status and error.

    Args:
        encoder: a loaded encoder (``fingerprint``, ``preprocessing``, ``features``).
        files: decoded files (:class:`~speech_emotion.data.prefetch.DecodedFile`), in order.
        store: where to read and write.

    Returns:
        ``(statuses, errors)``: per file ``"cached"`` (its key was in the store), ``"encoded"``
        (written now) or ``"error"`` (unreadable, or the encoder refused it), and the reason.
    """
    statuses: list[str] = []
    errors: list[str | None] = []
    signals, hashes, rows = [], [], []
    for row, file in enumerate(files):
        if file.signal is None:
            statuses.append("error")
            errors.append(file.error)
            continue
        digest = audio_hash(file.signal)
        key = FeatureStore.key(
            audio_hash=digest, encoder_fingerprint=encoder.fingerprint, preprocessing=encoder.preprocessing
        )
        statuses.append("cached" if key in store else "encoded")
        errors.append(None)
        if statuses[-1] == "encoded":
            signals.append(file.signal)
            hashes.append(digest)
            rows.append(row)
    if signals:
        try:
            extract_features(encoder, signals, hashes, store)
        except ValueError:  # one clip the encoder refuses (too short): find it, keep the others
            for signal, digest, row in zip(signals, hashes, rows):
                try:
                    extract_features(encoder, [signal], [digest], store)
                except ValueError as error:
                    statuses[row], errors[row] = "error", str(error)
    return statuses, errors


def fill_store(
    paths: Sequence[str | Path],
    *,
    encoder: str,
    store: FeatureStore | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
    decode_workers: int = DECODE_WORKERS,
) -> FillSummary:
    """Encode every file of ``paths`` missing from the store, on this machine.

    Args:
        paths: audio files (see :func:`~speech_emotion.data.inputs.expand_inputs`).
        encoder: encoder folder, hub id, or ``"egemaps"``.
        store: the feature store (default: ``$SER_CACHE`` or the platform cache folder).
        device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); not part of any key.
        precision: ``fp32`` or ``bf16`` (bf16 entries have their own keys).
        progress: called with the number of files finished.
        decode_workers: threads that decode ahead of the encoder.

    Returns:
        A :class:`FillSummary`.

    Raises:
        ValueError: the encoder cannot be loaded, the device is not here, the precision is refused.
    """
    from speech_emotion.features.encoders import load_encoder

    started = time.perf_counter()
    store = store if store is not None else FeatureStore()
    loaded = load_encoder(encoder, device=device, precision=precision)
    summary = FillSummary(
        root=str(store.root),
        encoder=encoder,
        fingerprint=loaded.fingerprint,
        preprocessing=loaded.preprocessing,
        engine="local",
        device=str(loaded.device),
    )
    decoded = decode_ahead(paths, workers=decode_workers, ahead=max(2 * CHUNK_FILES, decode_workers))
    try:
        while chunk := [file for _, file in zip(range(CHUNK_FILES), decoded)]:
            statuses, errors = store_statuses(loaded, chunk, store)
            for file, status, error in zip(chunk, statuses, errors):
                summary.count(status, file.path, error)
            if progress is not None:
                progress(len(chunk))
    finally:
        decoded.close()
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary
