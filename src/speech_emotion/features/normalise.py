"""Standardising pooled features by the statistics of a group of clips, estimated without labels.

A group is a speaker (``--speaker-norm``: subtracting a speaker's mean feature removes much of who is
speaking and keeps how) or a domain: a corpus, a recording setup, a language (``domain_norm="corpus"``
in training, ``ser adapt`` for a new domain). Statistics need only unlabelled audio, but they need
several clips of the group: a figure that uses them says so (``speaker-norm``, ``adapted``), and a
single clip cannot be standardised by its own speaker.

Example:
    >>> import numpy as np
    >>> X = np.array([[[1.0]], [[3.0]], [[10.0]], [[14.0]]])
    >>> speaker_normalise(X, ["a", "a", "b", "b"])[:, 0, 0].round(3).tolist()
    [-1.0, 1.0, -1.0, 1.0]
    >>> stats = DomainStatistics.estimate(X[2:])
    >>> stats.n_clips, stats.apply(X[2:])[:, 0, 0].round(3).tolist()
    (2, [-1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_CLIPS = 2
"""Clips a group needs for a spread to standardise by."""

EPSILON = 1e-5
"""Added to every standard deviation: a feature constant within a group stays finite."""


@dataclass(frozen=True)
class DomainStatistics:
    """Mean and scale (std + :data:`EPSILON`) of pooled features over the clips of one group.

    Attributes:
        mean: float32 ``(n_layers, dim)``.
        scale: float32 ``(n_layers, dim)``, positive.
        n_clips: how many clips they were estimated from.
    """

    mean: np.ndarray
    scale: np.ndarray
    n_clips: int

    @classmethod
    def estimate(cls, features: np.ndarray, *, name: str = "the group") -> DomainStatistics:
        """Statistics of ``features`` ``(n, n_layers, dim)``.

        Raises:
            ValueError: fewer than :data:`MIN_CLIPS` clips.
        """
        features = np.asarray(features)
        if len(features) < MIN_CLIPS:
            raise ValueError(
                f"{name} has {len(features)} clip(s); standardising needs at least {MIN_CLIPS} to estimate a spread"
            )
        return cls(
            features.mean(axis=0).astype(np.float32),
            (features.std(axis=0) + EPSILON).astype(np.float32),
            int(len(features)),
        )

    def apply(self, features: np.ndarray) -> np.ndarray:
        """``(features - mean) / scale``, float32."""
        return ((np.asarray(features) - self.mean) / self.scale).astype(np.float32)

    def move(self, features: np.ndarray, target: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Features of this group as they would be in a group with statistics ``target`` (mean, scale), float32."""
        mean, scale = target
        return (self.apply(features) * scale + mean).astype(np.float32)


def standardise_groups(
    features: np.ndarray, groups: Sequence[str], *, kind: str = "speaker"
) -> tuple[np.ndarray, dict[str, DomainStatistics]]:
    """Standardise the clips of each group by that group's own statistics.

    Returns:
        The standardised features (float32, same shape) and each group's statistics.

    Raises:
        ValueError: a group has fewer than :data:`MIN_CLIPS` clips (named, with ``kind``).
    """
    groups = np.asarray(groups)
    out = np.empty_like(features, dtype=np.float32)
    statistics = {}
    for group in np.unique(groups):
        rows = groups == group
        try:
            statistics[str(group)] = DomainStatistics.estimate(features[rows], name=f"{kind} {group!r}")
        except ValueError as error:
            hint = "; --speaker-norm needs at least 2 per speaker" if kind == "speaker" else ""
            raise ValueError(f"{error}{hint}") from None
        out[rows] = statistics[str(group)].apply(features[rows])
    return out, statistics


def apply_by_group(features: np.ndarray, groups: Sequence[str], statistics: dict[str, DomainStatistics]) -> np.ndarray:
    """Standardise each clip by the statistics of its group (estimated elsewhere, e.g. on unaltered clips)."""
    groups = np.asarray(groups)
    out = np.empty_like(features, dtype=np.float32)
    for group in np.unique(groups):
        rows = groups == group
        out[rows] = statistics[str(group)].apply(features[rows])
    return out


def speaker_normalise(features: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Standardise each speaker's features with that speaker's own mean and std (no labels used).

    Raises:
        ValueError: a speaker has fewer than 2 clips (no spread to standardise by).
    """
    return standardise_groups(features, speakers, kind="speaker")[0]
