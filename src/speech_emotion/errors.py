"""Exceptions raised by speech_emotion.

Every message says what was expected, what arrived, where (file, speaker or class),
and what to do about it.
"""


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty, too short, silent or not finite."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CorpusError(ValueError):
    """A corpus folder or table cannot be read into a manifest."""


class LabelError(ValueError):
    """A label schema is invalid or does not cover the labels in the data."""


class SplitError(ValueError):
    """A split cannot be made as asked (too few speakers, unknown speakers, ...)."""


class LeakageError(SplitError):
    """Speakers or identical audio appear in more than one part of a split."""


class BundleError(ValueError):
    """A model bundle is malformed or disagrees with itself or its encoder."""


class SanityError(RuntimeError):
    """Training looks wrong in a way that almost always means a data bug."""
