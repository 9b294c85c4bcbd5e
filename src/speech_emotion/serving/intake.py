"""Admission and intake of uploads: refuse (503) before reading a body, stream it to disk, time it out (408).

A request is admitted before a byte of its body is read: at most ``max_concurrent +
max_queue`` requests are in the server at once (receiving their body, waiting for their turn
or running), and the next one gets 503 at once. An admitted body is streamed to a temporary
file as it arrives (never held in memory; a multipart part spills to disk past 1 MB) and must
arrive whole within ``body_timeout`` seconds, or the request gets 408 and its connection is
closed. So slow or many clients hold bounded memory, bounded disk and bounded time.

Example:
    >>> admission = Admission(ServeLimits(max_concurrent=1, max_queue=0))
    >>> with admission.ticket():
    ...     with admission.ticket():
    ...         pass
    Traceback (most recent call last):
    ...
    speech_emotion.errors.UploadError: 1 requests are already in the server (max_concurrent=1 + max_queue=0);
    retry shortly
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from speech_emotion.errors import UploadError
from speech_emotion.serving.limits import ServeLimits
from speech_emotion.serving.uploads import check_content_type

MAX_FILENAME = 120
"""Characters of a client's file name kept for messages."""


class Admission:
    """Counts the requests in the server (admitted, not yet answered) against ``limits.max_admitted``.

    The event loop is the only caller, so a plain counter is safe.
    """

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.admitted = 0

    @contextlib.contextmanager
    def ticket(self) -> Iterator[None]:
        """Hold a place while the request is read, waits and runs.

        Raises:
            UploadError: 503 when ``max_concurrent + max_queue`` requests are already in.
        """
        if self.admitted >= self.limits.max_admitted:
            waiting = self.admitted - self.limits.max_concurrent
            detail = (
                f"{waiting} requests are already waiting (max_queue={self.limits.max_queue}); retry shortly"
                if waiting > 0
                else f"{self.admitted} requests are already in the server (max_concurrent="
                f"{self.limits.max_concurrent} + max_queue={self.limits.max_queue}); retry shortly"
            )
            raise UploadError(503, "busy", detail)
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1


@dataclass(frozen=True)
class ReceivedUpload:
    """A request body on disk.

    Attributes:
        path: the temporary file holding the audio bytes.
        filename: the name to use in messages (the client's file name, or ``"body"``).
    """

    path: Path
    filename: str


def upload_media_type(request: Request) -> str:
    """The media type of the request's body, refused (415) when it cannot carry audio; reads no body.

    Raises:
        UploadError: 415 for a url-encoded form or a declared type that is not audio.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        raise UploadError(
            415,
            "unsupported_media_type",
            "a url-encoded form cannot carry audio; send multipart/form-data with field 'file', or the raw file as the "
            "body",
        )
    if media_type != "multipart/form-data":
        check_content_type(request.headers.get("content-type"), what="body")
    return media_type


@contextlib.asynccontextmanager
async def receive_upload(request: Request, limits: ServeLimits) -> AsyncIterator[ReceivedUpload]:
    """Stream the audio of ``request`` (multipart field ``file``, or the raw body) to a temporary file.

    The file is removed on exit.

    Raises:
        UploadError: 408 when the body takes longer than ``limits.body_timeout``; 400 for a
            multipart body without a file field ``file`` or a client that hung up; 415 for a
            url-encoded form or a part that is not audio.
        StarletteHTTPException: 413 past ``max_bytes`` (from the body-size middleware), 400
            for malformed multipart.
    """
    media_type = upload_media_type(request)
    handle, name = tempfile.mkstemp(prefix="ser-upload-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            try:
                with anyio.fail_after(limits.body_timeout):
                    if media_type == "multipart/form-data":
                        filename = await _receive_multipart(request, stream)
                    else:
                        async for chunk in request.stream():
                            stream.write(chunk)
                        filename = "body"
            except TimeoutError:
                raise UploadError(
                    408,
                    "body_timeout",
                    f"the request body did not arrive within {limits.body_timeout:g} s (body_timeout); send it in one "
                    "go, or a shorter clip",
                ) from None
            except ClientDisconnect:
                raise UploadError(400, "client_disconnected", "the client closed the connection mid-body") from None
        yield ReceivedUpload(path, filename)
    finally:
        path.unlink(missing_ok=True)


async def _receive_multipart(request: Request, stream) -> str:
    """Parse a multipart body (parts past 1 MB spill to disk); copy field ``file`` into ``stream``."""
    form = await request.form()
    try:
        part = form.get("file")
        if part is None:
            fields = ", ".join(repr(_client_name(key)) for key in form.keys()) or "none"
            raise UploadError(
                400,
                "missing_file",
                f"the multipart body has no file field 'file' (fields sent: {fields}); send the audio as field 'file'",
            )
        if not isinstance(part, UploadFile):
            raise UploadError(
                400,
                "missing_file",
                "field 'file' must be a file upload (a form part with a filename), not a text value",
            )
        filename = _client_name(part.filename or "file")
        check_content_type(part.content_type, what=f"field 'file' ({filename})")
        await anyio.to_thread.run_sync(shutil.copyfileobj, part.file, stream, 1 << 20)
        return filename
    finally:
        await form.close()


def _client_name(name: str) -> str:
    """A client-sent name, fit for messages and logs: no control characters, at most :data:`MAX_FILENAME`."""
    cleaned = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(name))
    return cleaned if len(cleaned) <= MAX_FILENAME else cleaned[: MAX_FILENAME - 1] + "…"
