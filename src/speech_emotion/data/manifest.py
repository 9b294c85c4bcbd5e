"""The manifest: one row per utterance, as every corpus adapter produces it.

Example:
    >>> m = Manifest([Utterance("a.wav", "01", "happy", "csv"), Utterance("b.wav", "02", "sad", "csv")])
    >>> len(m), m.speakers, m.label_counts()
    (2, ['01', '02'], {'happy': 1, 'sad': 1})
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

CANONICAL_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom")
"""Raw labels shared across corpora, in the canonical order used when no schema is given."""

SYNONYMS = {
    "fear": "fearful",
    "afraid": "fearful",
    "surprise": "surprised",
    "anger": "angry",
    "happiness": "happy",
    "joy": "happy",
    "sadness": "sad",
    "disgusted": "disgust",
    "bored": "boredom",
    "boring": "boredom",
}
"""Common alternative spellings and the canonical label each resolves to."""


def canonical_label(label: str) -> str:
    """Lower-case a label and resolve a known synonym.

    Example:
        >>> canonical_label("Fear"), canonical_label("calm"), canonical_label("frustrated")
        ('fearful', 'calm', 'frustrated')
    """
    text = label.strip().lower()
    return SYNONYMS.get(text, text)


@dataclass(frozen=True)
class Utterance:
    """One recording: where it is, who speaks, what the corpus says it expresses."""

    path: str
    speaker: str
    label: str
    corpus: str
    fields: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Problem:
    """A file that will not load or cannot be parsed, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


class Manifest:
    """Utterances of a corpus plus the files that could not be read into it.

    Args:
        utterances: the rows, in a stable order (adapters sort by path).
        problems: files that were found but could not be turned into a row.
        synonyms: raw spelling → canonical label, for every synonym resolved while reading.
    """

    def __init__(
        self, utterances: list[Utterance], problems: list[Problem] | None = None, synonyms: dict | None = None
    ):
        self.utterances = list(utterances)
        self.problems = list(problems or [])
        self.synonyms = dict(synonyms or {})

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]

    @property
    def paths(self) -> list[str]:
        return [u.path for u in self.utterances]

    @property
    def speakers(self) -> list[str]:
        """Distinct speaker ids, sorted."""
        return sorted({u.speaker for u in self.utterances})

    @property
    def labels(self) -> list[str]:
        """Raw label of every utterance, in row order."""
        return [u.label for u in self.utterances]

    def label_counts(self) -> dict[str, int]:
        """Count per raw label, canonical labels first in canonical order, then others sorted."""
        counts = Counter(self.labels)
        return {label: counts[label] for label in order_labels(counts)}

    def subset(self, indices) -> "Manifest":
        """Rows at ``indices`` (problems and synonyms are kept)."""
        return Manifest([self.utterances[i] for i in indices], self.problems, self.synonyms)

    def without(self, paths: set[str]) -> "Manifest":
        """Rows whose path is not in ``paths``."""
        return Manifest([u for u in self.utterances if u.path not in paths], self.problems, self.synonyms)


def order_labels(labels) -> list[str]:
    """Canonical labels in canonical order, then any others alphabetically.

    Example:
        >>> order_labels({"sad", "frustrated", "neutral"})
        ['neutral', 'sad', 'frustrated']
    """
    labels = set(labels)
    known = [label for label in CANONICAL_LABELS if label in labels]
    return known + sorted(labels - set(known))
