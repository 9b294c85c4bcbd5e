"""What a command runs over: audio files, folders of them, or manifests with a ``path`` column.

``ser predict`` and ``ser cache fill`` (local or on a Ray cluster) take the same inputs, listed
here in one order that every engine keeps.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from speech_emotion.data.corpora import find_audio

MANIFEST_SUFFIXES = (".csv", ".tsv")
"""A file with one of these suffixes is read as a table whose ``path`` column lists audio files."""


def read_path_column(table: str | Path) -> list[Path]:
    """The audio files a CSV/TSV table lists in its ``path`` column (relative paths are relative to the table).

    Other columns (labels, speakers) are not read.

    Raises:
        ValueError: the table has no ``path`` column.

    Example:
        >>> import tempfile, pathlib
        >>> table = pathlib.Path(tempfile.mkdtemp()) / "calls.csv"
        >>> _ = table.write_text("path,label\\na.wav,angry\\nsub/b.flac,calm\\n")
        >>> [p.relative_to(table.parent).as_posix() for p in read_path_column(table)]
        ['a.wav', 'sub/b.flac']
    """
    table = Path(table)
    with open(table, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream, delimiter="\t" if table.suffix.lower() == ".tsv" else ",")
        if "path" not in (reader.fieldnames or []):
            raise ValueError(
                f"{table}: expected a 'path' column listing audio files, got columns "
                f"{', '.join(reader.fieldnames or []) or 'none'}; add a header line with 'path'"
            )
        return [table.parent / row["path"] for row in reader]


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their audio files in sorted order, manifests to their ``path`` column.

    A path that does not exist (or is not audio) is kept as given: whoever decodes it reports
    it as an error row, in its place, rather than dropping it.

    Raises:
        ValueError: a CSV/TSV manifest without a ``path`` column.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("b.wav", "a.flac", "notes.txt"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [p.name for p in expand_inputs([folder, folder / "gone.wav"])]
        ['a.flac', 'b.wav', 'gone.wav']
    """
    expanded: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            expanded.extend(find_audio(item))
        elif item.suffix.lower() in MANIFEST_SUFFIXES and item.is_file():
            expanded.extend(read_path_column(item))
        else:
            expanded.append(item)
    return expanded
