"""From a corpus on disk to labelled, decoded-and-checked rows, in one validated step.

:func:`load_dataset` is the boundary: it reads the corpus, applies the label schema,
decodes every file once (a truncated file can have a valid header) and hashes its
samples. Later code trusts what it returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from speech_emotion.data.audio import MIN_DURATION, audio_hash, load_audio
from speech_emotion.data.decode_limits import DecodeLimits
from speech_emotion.data.labels import LabelSchema
from speech_emotion.data.manifest import Manifest, Problem
from speech_emotion.data.prefetch import map_ahead
from speech_emotion.data.sources import CorpusSource, as_sources, read_corpora
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
    data: str | Path | Sequence[str | Path | CorpusSource],
    *,
    corpus: str | None = None,
    labels: "str | Path | dict | LabelSchema | None" = None,
    speaker_pattern: str | None = None,
    skip_bad: bool = False,
    min_duration: float = MIN_DURATION,
    allow_single_label_speakers: bool = False,
    progress: Callable[[int], None] | None = None,
    limits: DecodeLimits | None = None,
) -> Dataset:
    """Read, label, decode and hash one corpus or several (files decoded in worker threads, kept in order).

    Args:
        data: a corpus folder or CSV/TSV manifest, or a list of them (``PATH`` or
            ``PATH::ADAPTER`` strings, or :class:`~speech_emotion.data.sources.CorpusSource`):
            several corpora are read into one dataset with speakers namespaced by corpus.
        corpus: adapter name (one corpus only); detected when omitted.
        labels: ``--labels`` value: built-in name, schema file, mapping, or ``None`` for all raw labels.
        speaker_pattern: speaker regex for folder-per-label corpora (matched against file names).
        skip_bad: keep going past files that will not load or parse (they are listed in
            ``problems``); otherwise they are an error.
        min_duration: shortest accepted clip in seconds.
        allow_single_label_speakers: accept data where (nearly) every speaker has one label
            (see :func:`check_speaker_labels`).
        progress: called with the number of files just decoded.
        limits: sampling rate, channels and decoded size allowed per file (default
            :class:`~speech_emotion.data.decode_limits.DecodeLimits()`); a file beyond them is a
            problem like an unreadable one, named with the limit and the fix.

    Returns:
        A :class:`Dataset`.

    Raises:
        CorpusError: unreadable or unparseable files and ``skip_bad`` is false (the message
            lists each file and reason), or speakers that each have a single label.
        LabelError: labels the schema does not cover.
    """
    manifest = read_corpora(as_sources(data, corpus=corpus, speaker_pattern=speaker_pattern))
    schema = LabelSchema.resolve(labels, manifest.labels)
    labelled = schema.apply(manifest)
    if not allow_single_label_speakers:
        check_speaker_labels([u.speaker for u in labelled.manifest], labelled.y, schema.classes)
    hashes, durations, keep, problems = [], [], [], list(manifest.problems)

    def hash_file(path: str) -> tuple[str, float] | AudioError:
        """Content hash and duration of one file (decoded in a worker thread), or its error."""
        try:
            signal, sampling_rate = load_audio(path, min_duration=min_duration, limits=limits)
        except AudioError as error:
            return error
        return audio_hash(signal), len(signal) / sampling_rate

    paths = [utterance.path for utterance in labelled.manifest]
    for row, outcome in enumerate(map_ahead(hash_file, paths)):
        if isinstance(outcome, AudioError):
            problems.append(Problem(outcome.path, outcome.reason))
        else:
            keep.append(row)
            hashes.append(outcome[0])
            durations.append(outcome[1])
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


SINGLE_LABEL_SHARE = 0.9
"""Share of speakers with a single label above which the speaker ids are taken to be wrong."""


def check_speaker_labels(speakers: Sequence[str], y: np.ndarray, classes: Sequence[str]) -> None:
    """Refuse data where (nearly) every speaker has one label: the speaker ids are almost surely wrong.

    When speakers are parsed from a label folder (``Angry/1157_…`` → speaker ``Angry/1157``), each
    "speaker" holds one emotion and one real speaker lands in both train and test while the
    leakage check passes. Checked on speakers with at least 2 clips, when there are at least 3
    of them and 2 classes.

    Raises:
        CorpusError: at least :data:`SINGLE_LABEL_SHARE` of the speakers have one label each.

    Example:
        >>> check_speaker_labels(["a", "a", "b", "b", "c", "c"], np.array([0, 0, 1, 1, 0, 0]), ["x", "y"])
        Traceback (most recent call last):
        ...
        speech_emotion.errors.CorpusError: every one of 3 speakers has a single label (a: x, b: y, c: x): ...
    """
    labels_of: dict[str, set[int]] = {}
    clips_of: Counter = Counter(speakers)
    for speaker, label in zip(speakers, np.asarray(y).tolist()):
        labels_of.setdefault(speaker, set()).add(label)
    counted = [s for s in labels_of if clips_of[s] >= 2]
    single = [s for s in counted if len(labels_of[s]) == 1]
    if len(counted) < 3 or len(set(np.asarray(y).tolist())) < 2 or len(single) < SINGLE_LABEL_SHARE * len(counted):
        return
    examples = ", ".join(f"{s}: {classes[next(iter(labels_of[s]))]}" for s in sorted(single)[:4])
    share = "every one" if len(single) == len(counted) else f"{len(single)}"
    raise CorpusError(
        f"{share} of {len(counted)} speakers has a single label ({examples}{', …' if len(single) > 4 else ''}): the "
        "speaker ids are almost surely wrong (parsed from label folders, not from who speaks), and a split by them "
        "would put one real speaker in train and test. Check --speaker-pattern (it is matched against file names); "
        "if every speaker really has one label, pass --allow-single-label-speakers"
    )


def describe_problems(problems: list[Problem], limit: int = 20) -> str:
    """One line per problem file (at most ``limit``), for error messages."""
    lines = [f"  {p.path}: {p.reason}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  … and {len(problems) - limit} more")
    return f"{len(problems)} file(s) cannot be used:\n" + "\n".join(lines)
