"""Decode ahead in worker threads, results in input order, so that an encoder never waits for audio.

Decoding (libsndfile) and resampling (soxr) release the GIL, so threads decode in parallel
while the encoder computes. :func:`map_ahead` runs any function over items that way, keeping
at most ``ahead`` results in flight (bounded memory) and yielding them in input order;
:func:`decode_ahead` is it for audio files, with an unreadable file as an error entry rather
than an exception, so that one bad file never stops the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from speech_emotion.data.audio import load_audio
from speech_emotion.errors import AudioError

Item = TypeVar("Item")
Result = TypeVar("Result")

DECODE_WORKERS = max(2, min(8, (os.cpu_count() or 2) // 4))
"""Decoding threads by default: a quarter of the cores, from 2 to 8 (the rest compute)."""


class DecodedFile(NamedTuple):
    """One file's outcome: its samples at 16 kHz (mono float32), or why it could not be used."""

    path: str
    signal: np.ndarray | None
    error: str | None


def map_ahead(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    *,
    workers: int = DECODE_WORKERS,
    ahead: int | None = None,
) -> Iterator[Result]:
    """``function(item)`` for every item, computed in ``workers`` threads, yielded in input order.

    ``items`` is consumed lazily, at most ``ahead`` items ahead of what was yielded. An
    exception raised by ``function`` is raised here when its item's turn comes; the threads
    are shut down when the iterator is closed or garbage-collected.

    Args:
        function: Called once per item, in a worker thread.
        items: Any iterable (consumed once).
        workers: Worker threads (at least 1).
        ahead: Results in flight at most (default ``4 * workers``).

    Yields:
        ``function(item)``, in the order of ``items``.

    Raises:
        ValueError: ``workers`` or ``ahead`` below 1.

    Example:
        >>> import time
        >>> def slow_square(x):
        ...     time.sleep(0.01 * (5 - x))  # later items finish first
        ...     return x * x
        >>> list(map_ahead(slow_square, range(5), workers=3))
        [0, 1, 4, 9, 16]
    """
    if workers < 1:
        raise ValueError(f"workers: expected at least 1 thread, got {workers}")
    ahead = 4 * workers if ahead is None else ahead
    if ahead < 1:
        raise ValueError(f"ahead: expected at least 1 item in flight, got {ahead}")
    pending: deque[Future] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ser-decode") as pool:
        try:
            for item in source:
                pending.append(pool.submit(function, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # closed early: do not decode what nobody will read
                future.cancel()


def decode_file(path: str | Path) -> DecodedFile:
    """Decode one file to 16 kHz mono float32 (:func:`~speech_emotion.data.audio.load_audio`), or say why not.

    Example:
        >>> decode_file("no/such.wav").error
        'file not found'
    """
    try:
        return DecodedFile(str(path), load_audio(path)[0], None)
    except AudioError as error:
        return DecodedFile(str(path), None, error.reason)


def decode_ahead(
    paths: Iterable[str | Path], *, workers: int = DECODE_WORKERS, ahead: int | None = None
) -> Iterator[DecodedFile]:
    """Audio files decoded in ``workers`` threads, yielded in input order (:func:`map_ahead` of :func:`decode_file`).

    Args:
        paths: Audio files in any format :func:`~speech_emotion.data.audio.load_audio` reads.
        workers: Decoding threads.
        ahead: Files decoded ahead of the consumer at most (default ``4 * workers``).

    Yields:
        A :class:`DecodedFile` per path, in input order; an unreadable file has ``signal``
        None and ``error`` set (the others go on).
    """
    return map_ahead(decode_file, paths, workers=workers, ahead=ahead)
