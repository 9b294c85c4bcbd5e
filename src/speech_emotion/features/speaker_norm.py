"""Per-speaker feature standardisation, from each speaker's own unlabelled clips.

A common SER practice: subtracting a speaker's mean feature removes much of who is
speaking and keeps how. It needs several clips of the speaker at prediction time, so every
figure that uses it is labelled ``speaker-norm``; per-utterance inference cannot use it.

Example:
    >>> import numpy as np
    >>> X = np.array([[[1.0]], [[3.0]], [[10.0]], [[14.0]]])
    >>> speaker_normalise(X, ["a", "a", "b", "b"])[:, 0, 0].round(3).tolist()
    [-1.0, 1.0, -1.0, 1.0]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_CLIPS = 2


def speaker_normalise(features: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Standardise each speaker's features with that speaker's own mean and std (no labels used).

    Raises:
        ValueError: a speaker has fewer than 2 clips (no spread to standardise by).
    """
    speakers = np.asarray(speakers)
    out = np.empty_like(features, dtype=np.float32)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        if rows.sum() < MIN_CLIPS:
            raise ValueError(
                f"speaker {speaker!r} has {int(rows.sum())} clip(s); --speaker-norm needs at least {MIN_CLIPS} per "
                "speaker"
            )
        block = features[rows]
        out[rows] = (block - block.mean(axis=0)) / (block.std(axis=0) + 1e-5)
    return out
