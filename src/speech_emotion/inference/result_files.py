"""Prediction rows to a file: ``.jsonl``, ``.csv`` or ``.parquet``, chosen by the file's suffix.

The rows are those of ``ser predict`` (:meth:`~speech_emotion.inference.predictor.Predictor.predict_files`,
``--timeline`` segments, or a Ray engine's): ``{"path", "label", "probabilities"}``, ``{"path",
"error"}`` for a file that will not load, plus ``"start"``/``"end"`` for timeline segments and
``"uncertain"`` with a confidence floor. Each format holds them as ``ser predict`` prints them:

- ``.jsonl``: one compact JSON object per line, exactly the lines of ``--format json``;
- ``.csv``: the table of ``--format csv`` (``path``, [``start``, ``end``], ``label``,
  ``p_<class>`` per class with 6 decimals, ``error``);
- ``.parquet``: the same columns, typed (probabilities as float64, missing values null),
  written in row groups as rows come (needs pyarrow: ``pip install 'speech-emotion[ray]'``).

The file is written beside its final path and renamed into place when complete, so a failed
run never leaves half a results file under the name asked for.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_SUFFIXES = (".jsonl", ".csv", ".parquet")
"""Suffixes :class:`ResultWriter` writes."""

PARQUET_ROWS = 4096
"""Rows per Parquet row group."""


def check_result_path(path: str | Path) -> Path:
    """``path`` if its suffix names a format here, else a ValueError that lists them.

    Example:
        >>> check_result_path("out/results.parquet").suffix
        '.parquet'
        >>> check_result_path("results.xlsx")
        Traceback (most recent call last):
        ...
        ValueError: --out results.xlsx: expected a file ending in .jsonl, .csv or .parquet, got '.xlsx'
    """
    path = Path(path)
    if path.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(
            f"--out {path}: expected a file ending in {', '.join(RESULT_SUFFIXES[:-1])} or {RESULT_SUFFIXES[-1]}, "
            f"got {path.suffix or 'no suffix'!r}"
        )
    return path


class ResultWriter:
    """Write prediction rows to ``path`` in its suffix's format (a context manager).

    Args:
        path: ``.jsonl``, ``.csv`` or ``.parquet`` file (its folder is created).
        classes: class names in index order (the ``p_<class>`` columns).
        timeline: rows carry ``start`` and ``end`` (``--timeline``).
        uncertain: rows carry ``uncertain`` (a confidence floor was given).

    Attributes:
        n_rows: rows written so far; n_errors: of which error rows.

    Raises:
        ValueError: an unknown suffix.
        ImportError: ``.parquet`` without pyarrow.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.csv"
        >>> with ResultWriter(path, ["calm", "angry"]) as writer:
        ...     writer.write({"path": "a.wav", "label": "calm", "probabilities": {"calm": 0.75, "angry": 0.25}})
        ...     writer.write({"path": "b.wav", "error": "file not found"})
        >>> print(path.read_text(), end="")
        path,label,p_calm,p_angry,error
        a.wav,calm,0.750000,0.250000,
        b.wav,,,,file not found
    """

    def __init__(self, path: str | Path, classes: list[str], *, timeline: bool = False, uncertain: bool = False):
        self.path = check_result_path(path)
        self.classes, self.timeline, self.uncertain = list(classes), timeline, uncertain
        self.kind = self.path.suffix.lower().lstrip(".")
        self.n_rows = self.n_errors = 0
        self._pending: list[dict] = []
        self._parquet: Any = None
        if self.kind == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as error:
                raise ImportError(
                    f"--out {self.path}: writing Parquet needs pyarrow, which is not installed; pip install "
                    "'speech-emotion[ray]' (or pyarrow), or write .jsonl/.csv"
                ) from error
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self._stream = None if self.kind == "parquet" else open(self._tmp, "w", encoding="utf-8", newline="")
        if self.kind == "csv":
            self._csv = csv.writer(self._stream, lineterminator="\n")
            self._csv.writerow(self._columns(csv_text=True))

    def _columns(self, *, csv_text: bool = False) -> list[str]:
        times = ["start", "end"] if self.timeline else []
        extra = [] if csv_text or not self.uncertain else ["uncertain"]
        return ["path", *times, "label", *(f"p_{c}" for c in self.classes), "error", *extra]

    def write(self, row: dict) -> None:
        """Write one row (in the order rows are given)."""
        self.n_rows += 1
        self.n_errors += "error" in row
        if self.kind == "jsonl":
            self._stream.write(json.dumps(row, separators=(",", ":"), default=str) + "\n")
        elif self.kind == "csv":
            times = [row.get("start", ""), row.get("end", "")] if self.timeline else []
            if "error" in row:
                self._csv.writerow([row["path"], *times, "", *([""] * len(self.classes)), row["error"]])
            else:
                p = row["probabilities"]
                label = row["label"] or ""
                self._csv.writerow([row["path"], *times, label, *(f"{p[c]:.6f}" for c in self.classes), ""])
        else:
            self._pending.append(row)
            if len(self._pending) >= PARQUET_ROWS:
                self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, self._pending = self._pending, []
        columns: dict[str, list] = {name: [] for name in self._columns()}
        for row in rows:
            probabilities = row.get("probabilities") or {}
            columns["path"].append(row["path"])
            if self.timeline:
                columns["start"].append(row.get("start"))
                columns["end"].append(row.get("end"))
            columns["label"].append(row.get("label"))
            for c in self.classes:
                columns[f"p_{c}"].append(probabilities.get(c))
            columns["error"].append(row.get("error"))
            if self.uncertain:
                columns["uncertain"].append(row.get("uncertain"))
        types = {"path": pa.string(), "label": pa.string(), "error": pa.string(), "uncertain": pa.bool_()}
        schema = pa.schema([(name, types.get(name, pa.float64())) for name in columns])
        table = pa.table({name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()})
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._tmp, schema)
        self._parquet.write_table(table)

    def close(self) -> None:
        """Finish the file and rename it into place."""
        if self.kind == "parquet":
            if self._pending or self._parquet is None:
                self._flush_parquet()
            self._parquet.close()
        else:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file (nothing appears at ``path``)."""
        try:
            if self._stream is not None:
                self._stream.close()
            if self._parquet is not None:
                self._parquet.close()
        finally:
            Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
