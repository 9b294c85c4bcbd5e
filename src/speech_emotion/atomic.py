"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> write_json(path, {"k": 1}); path.read_text()
    '{\\n  "k": 1\\n}\\n'
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    """Indented JSON, written atomically."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def replace_folder(staging: str | Path, out: str | Path) -> None:
    """Move a fully written ``staging`` folder to ``out``, replacing what was there (the caller asked to)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    Path(staging).rename(out)


def append_line(path: str | Path, obj) -> None:
    """Append one JSON line and flush it to disk (JSONL logs are append-only, never rewritten)."""
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
