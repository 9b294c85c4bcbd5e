"""Exceptions raised by speech_emotion.

Every message says what was expected, what arrived, where (file, speaker or class),
and what to do about it.
"""


def printable_path(path) -> str:
    """``path`` as text that can always be printed and written as UTF-8.

    A file name that is not valid UTF-8 reaches Python with its bad bytes as lone
    surrogates, which every UTF-8 stream refuses to write; they are shown as ``\\xNN``.

    Example:
        >>> import os
        >>> printable_path(os.fsdecode(b"caf\\xe9.wav"))
        'caf\\\\xe9.wav'
    """
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def undecodable_name(path) -> str | None:
    """Why ``path`` cannot be used as a name (it is not valid UTF-8), or ``None`` when it can.

    Example:
        >>> import os
        >>> undecodable_name(os.fsdecode(b"caf\\xe9.wav"))[:46]
        'the file name is not valid UTF-8 (bytes e9); r'
        >>> undecodable_name("café.wav") is None
        True
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as error:
        raw = str(path)[error.start : error.end].encode("utf-8", "surrogateescape")
        return (
            f"the file name is not valid UTF-8 (bytes {raw.hex(' ')}); rename the file to a UTF-8 name (e.g. "
            "`convmv -f latin1 -t utf8 --notest FILE`)"
        )
    return None


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty, too short, silent or not finite.

    Attributes:
        path: the file, as printable text (see :func:`printable_path`).
        reason: what is wrong with it and what to do.
    """

    def __init__(self, path, reason: str):
        self.path = printable_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioLimitError(AudioError):
    """An audio file asks for more decoding than the limits allow (rate, channels, samples).

    Attributes:
        limit: which limit: ``"max_sampling_rate"``, ``"max_channels"`` or ``"max_samples"``.
    """

    def __init__(self, path, reason: str, *, limit: str):
        self.limit = limit
        super().__init__(path, reason)


class TimelineLimitError(ValueError):
    """A timeline would cut a recording into more windows than allowed (``max_windows``).

    Attributes:
        n_windows: windows the recording would make (an upper bound when checked from the header).
        max_windows: the limit.
    """

    def __init__(self, message: str, *, n_windows: int, max_windows: int):
        self.n_windows = n_windows
        self.max_windows = max_windows
        super().__init__(message)


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
