"""How long work reports progress: a ``Progress`` is ``progress(description, total)`` → ``advance(n)``.

The library never prints: the CLI passes Rich bars (``speech_emotion.cli.console.progress_bar``),
tests and Python users pass nothing and get :func:`no_progress`.

Example:
    >>> with no_progress("encoding", 3) as advance:
    ...     advance(3)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ContextManager

Advance = Callable[[int], None]
"""``advance(n)``: ``n`` more items are done."""

Progress = Callable[[str, "int | None"], ContextManager[Advance]]
"""``progress(description, total)`` → a context that yields ``advance(n)``; ``total`` None when unknown."""


@contextlib.contextmanager
def no_progress(description: str, total: int | None) -> Iterator[Advance]:
    """A :data:`Progress` that shows nothing."""
    yield lambda n=1: None
