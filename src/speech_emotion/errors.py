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


class RemoteError(RuntimeError):
    """A command on the remote host, or the connection to it, failed."""


class TrackingError(ValueError):
    """The tracking server could not be used (unreachable, refused, wrong URI)."""


class UploadError(ValueError):
    """An upload the server refuses, with the HTTP status and a short error code.

    Attributes:
        status_code: 400 (bad request), 413 (too large or too long), 415 (not an accepted
            audio format) or 422 (an audio format that does not decode into usable samples).
        code: machine-readable kind, e.g. ``"too_large"``, ``"unsupported_format"``.
    """

    def __init__(self, status_code: int, code: str, message: str):
        self.status_code = status_code
        self.code = code
        super().__init__(message)
