"""Content-addressed, label-free cache of per-utterance features.

An entry is one numpy array, stored as ``.npy`` (no pickle), under a key that hashes the
audio's content hash, the encoder's fingerprint, the preprocessing parameters and the store's
format version (DESIGN invariant 2). Entries hold no labels: labels are applied at training
time from the schema, so a changed label mapping can never meet stale cached labels, and a
changed encoder or preprocessing makes a new key instead of a silent reuse.

:func:`extract_features` ties a store to an encoder: cached items are read back, the others
are computed in batches and written.

Fine-tuning also caches frame-level hidden states (:func:`extract_frame_states`): for each
clip, the input of the first trained layer, in float16, so that each training step runs only
the top layers. They sit beside the pooled features as ``<key>.frames.npy``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from speech_emotion.data.audio import load_audio
from speech_emotion.data.prefetch import DECODE_WORKERS, map_ahead
from speech_emotion.features.signal import check_encoder_input
from speech_emotion.progress import Progress, no_progress

if TYPE_CHECKING:
    from speech_emotion.data.dataset import Dataset
    from speech_emotion.features.augment import Augmentation
    from speech_emotion.features.encoders import Encoder, FinetunableEncoder

logger = logging.getLogger(__name__)

SignalSource = Union[np.ndarray, Callable[[], np.ndarray]]
"""A 1-D float32 signal at 16 kHz, or a callable without arguments that loads one."""

_KEY = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = ".npy"
_SUFFIXES = {"features": _SUFFIX, "frames": f".frames{_SUFFIX}"}
_TMP_SUFFIX = ".tmp"
_CHECKSUM_TAG = b"SER-SHA256"  # then 32 bytes: the sha256 of the .npy bytes before the tag
_STALE_TMP_SECONDS = 3600.0


class FeatureStore:
    """A folder of feature arrays addressed by content.

    Layout: ``root/<first two hex digits of the key>/<key>.npy``. Writes are atomic and
    durable (a temporary file in the same folder, flushed to disk, then ``os.replace``, then the
    folder flushed), so several processes may fill the same store at once and a reader sees
    either no entry or a complete one. Each entry ends with the sha256 of its array: an entry
    that a crash or a power cut left damaged (cut short, zero-filled) fails the check and is
    treated as missing, then recomputed. Arrays keep the dtype they were given (float32 for
    pooled features, float16 is fine for frame-level hidden states). Nothing is pickled: the
    array part is ``.npy`` read with ``allow_pickle=False``.

    Args:
        root: Folder of the store. Default: ``$SER_CACHE`` if set, else
            ``platformdirs.user_cache_dir("speech-emotion")/features``. Created on the
            first write.

    Attributes:
        root: Folder of the store.
        FORMAT_VERSION: Version of the entry format; part of every key, so a new version
            never reads entries written by an old one.

    Example:
        >>> import tempfile
        >>> store = FeatureStore(tempfile.mkdtemp())
        >>> key = FeatureStore.key(audio_hash="ab" * 32, encoder_fingerprint="cd" * 32,
        ...                        preprocessing={"sampling_rate": 16000, "pooling": "mean+std"})
        >>> store.get(key) is None  # not computed yet
        True
        >>> store.put(key, np.ones((7, 1024), dtype=np.float32))
        >>> store.get(key).shape, store.get(key).dtype
        ((7, 1024), dtype('float32'))
        >>> store.info()["n_entries"]
        1
        >>> store.clear()
        1
    """

    FORMAT_VERSION: int = 2  # 2: entries end with a checksum

    def __init__(self, root: str | os.PathLike[str] | None = None):
        if root is None:
            env = os.environ.get("SER_CACHE")
            if env:
                root = env
            else:
                import platformdirs

                root = Path(platformdirs.user_cache_dir("speech-emotion")) / "features"
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"FeatureStore(root={str(self.root)!r})"

    @staticmethod
    def key(
        *,
        audio_hash: str,
        encoder_fingerprint: str,
        preprocessing: Mapping[str, Any],
        content: Mapping[str, Any] | None = None,
    ) -> str:
        """The key of one entry: sha256 over all inputs and ``FORMAT_VERSION``.

        Args:
            audio_hash: Content hash of the decoded audio (never a path or a label).
            encoder_fingerprint: ``Encoder.fingerprint``.
            preprocessing: ``Encoder.preprocessing`` (JSON-able; key order does not matter).
            content: What the entry holds when it is not the pooled features, e.g.
                ``{"frame_states": 3, "dtype": "float16"}`` (see :func:`extract_frame_states`);
                None (pooled features) leaves the key as it always was.

        Returns:
            64 lowercase hex digits.

        Raises:
            ValueError: An argument is empty, or ``preprocessing`` is not JSON-able.

        Example:
            >>> a = FeatureStore.key(audio_hash="1" * 64, encoder_fingerprint="f" * 64,
            ...                      preprocessing={"sampling_rate": 16000})
            >>> b = FeatureStore.key(audio_hash="1" * 64, encoder_fingerprint="f" * 64,
            ...                      preprocessing={"sampling_rate": 8000})
            >>> len(a), a == b  # any change of input is a new key
            (64, False)
        """
        for name, value in (("audio_hash", audio_hash), ("encoder_fingerprint", encoder_fingerprint)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: expected a non-empty str, got {value!r}")
        if not isinstance(preprocessing, Mapping):
            raise ValueError(f"preprocessing: expected a dict, got {type(preprocessing).__name__}")
        fields = {
            "format_version": FeatureStore.FORMAT_VERSION,
            "audio_hash": audio_hash,
            "encoder_fingerprint": encoder_fingerprint,
            "preprocessing": preprocessing,
        }
        if content is not None:
            fields["content"] = dict(content)
        try:
            payload = json.dumps(
                fields,
                sort_keys=True,
                separators=(",", ":"),
                allow_nan=False,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"preprocessing: expected JSON-able values (str, numbers, bools, lists, dicts), got "
                f"{preprocessing!r} ({exc})"
            ) from exc
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, key: str, *, kind: str = "features") -> Path:
        """File that holds (or would hold) the entry ``key``.

        Args:
            key: From :meth:`key`.
            kind: ``"features"`` (pooled features, ``<key>.npy``) or ``"frames"`` (frame-level
                hidden states, ``<key>.frames.npy``): the file name tells :meth:`info` which.

        Raises:
            ValueError: ``key`` is not 64 lowercase hex digits, or ``kind`` is unknown.
        """
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"key: expected 64 lowercase hex digits from FeatureStore.key(), got {key!r}")
        if kind not in _SUFFIXES:
            raise ValueError(f"kind: expected one of {', '.join(map(repr, _SUFFIXES))}, got {kind!r}")
        return self.root / key[:2] / f"{key}{_SUFFIXES[kind]}"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str, *, kind: str = "features") -> np.ndarray | None:
        """Read one entry.

        Args:
            key: From :meth:`key`.
            kind: ``"features"`` or ``"frames"`` (see :meth:`path`).

        Returns:
            The stored array, or None when there is no entry. An unreadable entry (a file
            cut short by a crash or a full disk) is logged and treated as missing, so it is
            recomputed and overwritten.

        Raises:
            ValueError: ``key`` is malformed.
        """
        path = self.path(key, kind=kind)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("%s: unreadable feature-store entry (%s); it will be recomputed", path, exc)
            return None
        body, tag, digest = data[: -len(_CHECKSUM_TAG) - 32], data[-len(_CHECKSUM_TAG) - 32 : -32], data[-32:]
        if tag != _CHECKSUM_TAG or hashlib.sha256(body).digest() != digest:
            logger.warning("%s: damaged feature-store entry (checksum mismatch); it will be recomputed", path)
            return None
        try:
            return np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            logger.warning("%s: unreadable feature-store entry (%s); it will be recomputed", path, exc)
            return None

    def put(self, key: str, array: np.ndarray, *, kind: str = "features") -> None:
        """Write one entry atomically; an existing entry with this key is replaced.

        Args:
            key: From :meth:`key`.
            array: Numeric numpy array; its dtype and shape are kept.
            kind: ``"features"`` or ``"frames"`` (see :meth:`path`).

        Raises:
            ValueError: ``key`` is malformed or ``array`` is not a numeric array.
        """
        path = self.path(key, kind=kind)
        array = np.asarray(array)
        if array.dtype.hasobject or array.dtype.fields is not None or array.dtype.kind not in "biuf":
            raise ValueError(
                f"array: expected a numeric array (float32, float16, ...), got dtype {array.dtype}; "
                "the store holds plain numbers only"
            )
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        body = buffer.getvalue()
        data = body + _CHECKSUM_TAG + hashlib.sha256(body).digest()
        for attempt in range(3):
            try:
                _write_durably(path, data, prefix=f".{key[:16]}.")
                return
            except FileNotFoundError:
                # `ser cache clear` (another process) removed the shard folder between our mkdir and write.
                if attempt == 2:
                    raise

    def get_many(self, keys: Iterable[str]) -> list[np.ndarray | None]:
        """:meth:`get` for several keys, in order."""
        return [self.get(key) for key in keys]

    def put_many(self, items: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]) -> None:
        """:meth:`put` for several ``key -> array`` items."""
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, array in pairs:
            self.put(key, array)

    def _entries(self) -> Iterable[os.DirEntry[str]]:
        if not self.root.is_dir():
            return
        for shard in os.scandir(self.root):
            if shard.is_dir(follow_symlinks=False) and len(shard.name) == 2:
                yield from os.scandir(shard.path)

    def info(self) -> dict[str, Any]:
        """Size of the store.

        Returns:
            ``{"root": str, "n_entries": int, "bytes": int}`` over every entry, plus, when
            there are any, ``"frames": {"n_entries": int, "bytes": int}`` for the frame-level
            hidden states that fine-tuning caches (:func:`extract_frame_states`), which are
            included in the totals; temporary files of writes in progress are not counted.
        """
        n_entries = 0
        n_bytes = 0
        n_frames = 0
        frame_bytes = 0
        for entry in self._entries():
            if entry.name.endswith(_SUFFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    size = entry.stat(follow_symlinks=False).st_size
                    n_bytes += size
                    n_entries += 1
                    if entry.name.endswith(_SUFFIXES["frames"]):
                        frame_bytes += size
                        n_frames += 1
        summary: dict[str, Any] = {"root": str(self.root), "n_entries": n_entries, "bytes": n_bytes}
        if n_frames:
            summary["frames"] = {"n_entries": n_frames, "bytes": frame_bytes}
        return summary

    def clear(self) -> int:
        """Delete every entry (and temporary files older than an hour, left by killed writers).

        Returns:
            Number of entries removed.
        """
        n_removed = 0
        now = time.time()
        for entry in list(self._entries()):
            with contextlib.suppress(FileNotFoundError):
                if entry.name.endswith(_SUFFIX):
                    os.unlink(entry.path)
                    n_removed += 1
                elif entry.name.endswith(_TMP_SUFFIX) and now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                    os.unlink(entry.path)
        if self.root.is_dir():
            for shard in os.scandir(self.root):
                if shard.is_dir(follow_symlinks=False) and len(shard.name) == 2:
                    with contextlib.suppress(OSError):
                        os.rmdir(shard.path)  # only succeeds when empty
        return n_removed


def _write_durably(path: Path, data: bytes, *, prefix: str) -> None:
    """Write ``data`` beside ``path``, flush it to disk, rename it over ``path``, then flush the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)


def extract_features(
    encoder: Encoder,
    signals: Sequence[SignalSource],
    audio_hashes: Sequence[str],
    store: FeatureStore | None,
    *,
    progress: Callable[[int], None] | None = None,
    batch_seconds: float | None = None,
    chunk_size: int = 64,
    content: Mapping[str, Any] | None = None,
    decode_workers: int = DECODE_WORKERS,
) -> np.ndarray:
    """Features of many utterances, read from the store where cached, computed otherwise.

    Items whose key (audio hash, encoder fingerprint, preprocessing, format version) is in
    the store are read back without touching their signal, so a warm cache never decodes
    audio when ``signals`` holds loaders. The other items are loaded ``chunk_size`` at a time
    (in ``decode_workers`` threads, the next chunk while this one is encoded), encoded with
    ``encoder.features`` (sorted and batched there) and written to the store chunk by chunk,
    so an interrupted run keeps what it finished. Items with the same key (identical audio)
    are computed once. The key never holds the device the encoder runs on.

    Args:
        encoder: An :class:`~speech_emotion.features.encoders.Encoder` (anything with
            ``fingerprint``, ``preprocessing``, ``n_layers``, ``dim`` and ``features``).
        signals: Per item, a 1-D float32 array at 16 kHz or a callable without arguments
            that returns one (called only when the item is not cached).
        audio_hashes: Per item, the content hash of its audio.
        store: Where to read and write entries; None computes everything and stores nothing.
        progress: Called with the number of items finished, as they finish (cached items
            first, in one call).
        batch_seconds: Padded audio seconds per forward pass; default: the encoder's.
        chunk_size: Signals loaded and encoded per store write.
        content: What the signals are when they are not the clips themselves (e.g. an augmentation,
            :meth:`~speech_emotion.features.augment.Augmentation.to_dict`): part of every key.
        decode_workers: Threads that call the loaders ahead of the encoder.

    Returns:
        float32 array of shape ``(n_items, encoder.n_layers, encoder.dim)``, in input order.

    Raises:
        ValueError: ``signals`` and ``audio_hashes`` differ in length, ``chunk_size`` is not
            positive, or the encoder rejects a signal.

    Example:
        >>> import tempfile
        >>> class MeanEncoder:  # any object with these attributes works as an encoder
        ...     fingerprint, preprocessing, n_layers, dim = "demo", {"pooling": "mean"}, 1, 1
        ...     def features(self, signals, *, batch_seconds=None, progress=None):
        ...         return [np.full((1, 1), s.mean(), dtype=np.float32) for s in signals]
        >>> store = FeatureStore(tempfile.mkdtemp())
        >>> loads = []
        >>> def loader(value):
        ...     def load():
        ...         loads.append(value)
        ...         return np.full(16000, value, dtype=np.float32)
        ...     return load
        >>> signals = [loader(0.25), loader(0.5)]
        >>> extract_features(MeanEncoder(), signals, ["a" * 64, "b" * 64], store).ravel()
        array([0.25, 0.5 ], dtype=float32)
        >>> extract_features(MeanEncoder(), signals, ["a" * 64, "b" * 64], store).ravel()
        array([0.25, 0.5 ], dtype=float32)
        >>> loads  # the second call read the store and decoded nothing
        [0.25, 0.5]
    """
    n_items = len(signals)
    if len(audio_hashes) != n_items:
        raise ValueError(
            f"Expected one audio hash per signal, got {len(audio_hashes)} audio hashes for {n_items} signals"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
    shape = (int(encoder.n_layers), int(encoder.dim))
    output = np.empty((n_items, *shape), dtype=np.float32)

    fingerprint, preprocessing = encoder.fingerprint, encoder.preprocessing
    indices_by_key: dict[str, list[int]] = {}
    for i, audio_hash in enumerate(audio_hashes):
        key = FeatureStore.key(
            audio_hash=audio_hash, encoder_fingerprint=fingerprint, preprocessing=preprocessing, content=content
        )
        indices_by_key.setdefault(key, []).append(i)

    missing: list[str] = []
    n_cached = 0
    for key, indices in indices_by_key.items():
        array = store.get(key) if store is not None else None
        if array is not None and array.shape != shape:
            logger.warning(
                "%s: cached features have shape %s, expected %s; recomputing",
                store.path(key) if store is not None else key,
                array.shape,
                shape,
            )
            array = None
        if array is None:
            missing.append(key)
        else:
            output[indices] = array
            n_cached += len(indices)
    if progress is not None and n_cached:
        progress(n_cached)

    firsts = [indices_by_key[key][0] for key in missing]
    chunks = _loaded_chunks(encoder, signals, audio_hashes, firsts, chunk_size=chunk_size, workers=decode_workers)
    with contextlib.closing(chunks):  # an error stops the decoding threads
        for start, loaded in zip(range(0, len(missing), chunk_size), chunks):
            keys = missing[start : start + chunk_size]
            results = encoder.features(loaded, batch_seconds=batch_seconds, progress=progress)
            if len(results) != len(keys):
                raise ValueError(f"{encoder!r}: returned {len(results)} feature arrays for {len(keys)} signals")
            n_duplicates = 0
            for key, result in zip(keys, results):
                result = np.asarray(result, dtype=np.float32)
                if result.shape != shape:
                    raise ValueError(f"{encoder!r}: expected features of shape {shape}, got {result.shape}")
                output[indices_by_key[key]] = result
                n_duplicates += len(indices_by_key[key]) - 1
                if store is not None:
                    store.put(key, result)
            if progress is not None and n_duplicates:
                progress(n_duplicates)
    return output


def encode_dataset(
    dataset: Dataset,
    encoder: Encoder,
    *,
    store: FeatureStore | None = None,
    progress: Progress = no_progress,
    augmentation: Augmentation | None = None,
    rows: Sequence[int] | None = None,
) -> np.ndarray:
    """Pooled features of the rows of a dataset, ``(n, n_layers, dim)``, through the feature store.

    Audio is decoded only for rows whose features are not cached yet. ``store`` defaults to
    :class:`FeatureStore()` (``$SER_CACHE`` or the platform cache folder). With ``augmentation``,
    the features of the altered clips, under their own keys; ``rows`` (default: all) selects rows.
    """
    store = store if store is not None else FeatureStore()
    rows = range(len(dataset)) if rows is None else rows
    paths, hashes = [dataset.paths[i] for i in rows], [dataset.hashes[i] for i in rows]
    loaders = [functools.partial(_decode, path, audio_hash, augmentation) for path, audio_hash in zip(paths, hashes)]
    content = augmentation.to_dict() if augmentation is not None else None
    described = f"encoding ({encoder.family}{f', {augmentation}' if augmentation else ''})"
    with progress(described, len(loaders)) as advance:
        return extract_features(encoder, loaders, hashes, store, progress=advance, content=content)


def _decode(path: str, audio_hash: str, augmentation: Augmentation | None) -> np.ndarray:
    signal = load_audio(path)[0]
    return augmentation.apply(signal, audio_hash) if augmentation is not None else signal


def _loaded_chunks(
    encoder: Encoder,
    signals: Sequence[SignalSource],
    audio_hashes: Sequence[str],
    indices: Sequence[int],
    *,
    chunk_size: int,
    workers: int,
) -> Iterator[list[np.ndarray]]:
    """The signals at ``indices``, loaded and checked in ``workers`` threads, ``chunk_size`` at a time, in order.

    Up to two chunks are in flight, so the next chunk decodes while the encoder works on this one.
    """
    loads = map_ahead(
        lambda index: _load_signal(encoder, signals, audio_hashes, index),
        indices,
        workers=workers,
        ahead=max(2 * chunk_size, workers),
    )
    try:
        for start in range(0, len(indices), chunk_size):
            yield [next(loads) for _ in indices[start : start + chunk_size]]
    finally:
        loads.close()


def _load_signal(encoder: Encoder, signals: Sequence, audio_hashes: Sequence[str], index: int) -> np.ndarray:
    """Signal ``index`` (decoded now when given as a loader), checked for the encoder."""
    source = signals[index]
    return check_encoder_input(
        source() if callable(source) else source,
        name=f"signals[{index}] (audio hash {audio_hashes[index]})",
        min_samples=getattr(encoder, "min_samples", 1),
    )


def frame_states_key(encoder: FinetunableEncoder, audio_hash: str, *, top: int, dtype: str = "float16") -> str:
    """Store key of the frame-level hidden state that enters the top ``top`` layers of ``encoder``.

    The pooled-feature key (audio hash, encoder fingerprint, preprocessing, format version)
    plus what the entry holds: the hidden-state index and the dtype.
    """
    return FeatureStore.key(
        audio_hash=audio_hash,
        encoder_fingerprint=encoder.fingerprint,
        preprocessing=encoder.preprocessing,
        content={"frame_states": encoder.frozen_state_index(top), "dtype": str(np.dtype(dtype))},
    )


def extract_frame_states(
    encoder: FinetunableEncoder,
    signals: Sequence[SignalSource],
    audio_hashes: Sequence[str],
    store: FeatureStore | None,
    *,
    top: int,
    dtype: str = "float16",
    progress: Callable[[int], None] | None = None,
    batch_seconds: float | None = None,
    chunk_size: int = 64,
    decode_workers: int = DECODE_WORKERS,
) -> tuple[list[np.ndarray], np.ndarray]:
    """What fine-tuning the top ``top`` layers keeps fixed, read from the store where cached.

    Per item, the frame-level hidden state that enters the first trained layer
    (``encoder.frozen_state_index(top)``; shape ``(n_frames, hidden_size)``, the windows of a
    clip over 30 s concatenated in time, split again by ``encoder.window_frames(n_samples)``),
    stored in ``dtype`` as a ``frames`` entry keyed like the pooled features plus the state
    index and dtype; and the pooled features of every layer, the ordinary entry. Items
    missing either are encoded once with ``encoder.frozen_states``, which gives both; a pooled
    entry already in the store is kept and returned as it is.

    Args:
        encoder: A Whisper or wav2vec 2.0-family encoder (``can_run_top``).
        signals: Per item, a 1-D float32 array at 16 kHz or a callable that loads one.
        audio_hashes: Per item, the content hash of its audio.
        store: Where to read and write; None computes everything and stores nothing.
        top: Number of top layers that will train.
        dtype: Dtype of the stored states (``"float16"`` halves the size; ``"float32"`` keeps
            every bit).
        progress: Called with the number of items finished.
        batch_seconds: Padded audio seconds per forward pass.
        chunk_size: Signals loaded and encoded per store write.
        decode_workers: Threads that call the loaders ahead of the encoder.

    Returns:
        ``(states, pooled)``: a list of ``dtype`` arrays ``(n_frames_i, hidden_size)`` and a
        float32 array ``(n_items, n_layers, dim)``, in input order.

    Raises:
        ValueError: ``signals`` and ``audio_hashes`` differ in length, ``top`` is out of range,
            or the encoder rejects a signal.
    """
    n_items = len(signals)
    if len(audio_hashes) != n_items:
        raise ValueError(
            f"Expected one audio hash per signal, got {len(audio_hashes)} audio hashes for {n_items} signals"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
    dtype = str(np.dtype(dtype))
    shape = (int(encoder.n_layers), int(encoder.dim))
    states: list[np.ndarray | None] = [None] * n_items
    pooled = np.empty((n_items, *shape), dtype=np.float32)
    fingerprint, preprocessing = encoder.fingerprint, encoder.preprocessing

    by_key: dict[tuple[str, str], list[int]] = {}
    for i, audio_hash in enumerate(audio_hashes):
        keys = (
            FeatureStore.key(audio_hash=audio_hash, encoder_fingerprint=fingerprint, preprocessing=preprocessing),
            frame_states_key(encoder, audio_hash, top=top, dtype=dtype),
        )
        by_key.setdefault(keys, []).append(i)

    missing: list[tuple[str, str]] = []
    kept_pooled: dict[tuple[str, str], np.ndarray] = {}
    n_cached = 0
    for keys, indices in by_key.items():
        vector = store.get(keys[0]) if store is not None else None
        if vector is not None and vector.shape != shape:
            vector = None
        frames = store.get(keys[1], kind="frames") if store is not None else None
        if frames is not None and (frames.ndim != 2 or frames.shape[1] != encoder.hidden_size or frames.dtype != dtype):
            logger.warning(
                "%s: cached frame states have shape %s and dtype %s, expected (n, %d) %s; recomputing",
                store.path(keys[1], kind="frames"),
                frames.shape,
                frames.dtype,
                encoder.hidden_size,
                dtype,
            )
            frames = None
        if vector is not None:
            kept_pooled[keys] = vector
        if vector is None or frames is None:
            missing.append(keys)
            continue
        pooled[indices] = vector
        for i in indices:
            states[i] = frames
        n_cached += len(indices)
    if progress is not None and n_cached:
        progress(n_cached)

    firsts = [by_key[keys][0] for keys in missing]
    chunks = _loaded_chunks(encoder, signals, audio_hashes, firsts, chunk_size=chunk_size, workers=decode_workers)
    with contextlib.closing(chunks):  # an error stops the decoding threads
        for start, loaded in zip(range(0, len(missing), chunk_size), chunks):
            chunk = missing[start : start + chunk_size]
            results = encoder.frozen_states(loaded, top=top, batch_seconds=batch_seconds, progress=progress)
            n_duplicates = 0
            for keys, (frames, vector) in zip(chunk, results):
                frames = np.ascontiguousarray(frames, dtype=dtype)
                if keys in kept_pooled:
                    vector = kept_pooled[keys]
                elif store is not None:
                    store.put(keys[0], vector)
                if store is not None:
                    store.put(keys[1], frames, kind="frames")
                pooled[by_key[keys]] = vector
                for i in by_key[keys]:
                    states[i] = frames
                n_duplicates += len(by_key[keys]) - 1
            if progress is not None and n_duplicates:
                progress(n_duplicates)
    return states, pooled  # type: ignore[return-value]
