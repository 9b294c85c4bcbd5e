"""From a corpus on disk to labelled, decoded-and-checked rows, in one validated step.

:func:`load_dataset` is the boundary: it reads the corpus, applies the label schema,
decodes every file once (a truncated file can have a valid header) and hashes its
samples. Later code trusts what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from speech_emotion.data.audio import MIN_DURATION, audio_hash, load_audio
from speech_emotion.data.corpora import read_corpus
from speech_emotion.data.labels import LabelSchema
from speech_emotion.data.manifest import Manifest, Problem
from speech_emotion.errors import AudioError, CorpusError


@dataclass
class Dataset:
    """Rows that loaded, with class indices, content hashes and durations.

    Attributes:
        manifest: the rows kept, in path order.
        schema: the label schema applied.
        y: class index of every row (0..K-1).
        hashes: content hash of every row's decoded samples.
        durations: seconds of audio per row.
        problems: every file found but not kept, with the reason.
        label_report: counts before/after mapping, encoded values, K.
    """

    manifest: Manifest
    schema: LabelSchema
    y: np.ndarray
    hashes: list[str]
    durations: list[float]
    problems: list[Problem]
    label_report: dict

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def speakers(self) -> list[str]:
        """Speaker id of every row."""
        return [u.speaker for u in self.manifest]

    @property
    def paths(self) -> list[str]:
        return self.manifest.paths

    def subset(self, rows) -> "Dataset":
        """The rows at ``rows`` (problems and label report kept)."""
        rows = [int(i) for i in rows]
        return Dataset(
            self.manifest.subset(rows),
            self.schema,
            self.y[rows],
            [self.hashes[i] for i in rows],
            [self.durations[i] for i in rows],
            self.problems,
            self.label_report,
        )


def load_dataset(
    data: str | Path,
    *,
    corpus: str | None = None,
    labels: "str | Path | dict | LabelSchema | None" = None,
    speaker_pattern: str | None = None,
    skip_bad: bool = False,
    min_duration: float = MIN_DURATION,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Read, label, decode and hash a corpus.

    Args:
        data: corpus folder or CSV/TSV manifest.
        corpus: adapter name; detected when omitted.
        labels: ``--labels`` value: built-in name, schema file, mapping, or ``None`` for all raw labels.
        speaker_pattern: speaker regex for folder-per-label corpora.
        skip_bad: keep going past files that will not load or parse (they are listed in
            ``problems``); otherwise they are an error.
        min_duration: shortest accepted clip in seconds.
        progress: called with the number of files just decoded.

    Returns:
        A :class:`Dataset`.

    Raises:
        CorpusError: unreadable or unparseable files and ``skip_bad`` is false; the
            message lists each file and reason.
        LabelError: labels the schema does not cover.
    """
    manifest = read_corpus(data, corpus=corpus, speaker_pattern=speaker_pattern)
    schema = LabelSchema.resolve(labels, manifest.labels)
    labelled = schema.apply(manifest)
    hashes, durations, keep, problems = [], [], [], list(manifest.problems)
    for row, utterance in enumerate(labelled.manifest):
        try:
            signal, sampling_rate = load_audio(utterance.path, min_duration=min_duration)
        except AudioError as error:
            problems.append(Problem(error.path, error.reason))
        else:
            keep.append(row)
            hashes.append(audio_hash(signal))
            durations.append(len(signal) / sampling_rate)
        if progress:
            progress(1)
    if problems and not skip_bad:
        raise CorpusError(
            describe_problems(problems)
            + "\nFix or remove these files, or pass --skip-bad to leave them out (they are listed in the run's report)."
        )
    kept = labelled.manifest.subset(keep)
    y = labelled.y[keep]
    report = type(labelled)(kept, schema, y, manifest).report()
    return Dataset(kept, schema, y, hashes, durations, problems, report)


def describe_problems(problems: list[Problem], limit: int = 20) -> str:
    """One line per problem file (at most ``limit``), for error messages."""
    lines = [f"  {p.path}: {p.reason}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  … and {len(problems) - limit} more")
    return f"{len(problems)} file(s) cannot be used:\n" + "\n".join(lines)
