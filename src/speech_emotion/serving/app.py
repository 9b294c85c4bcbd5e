"""The REST service: ``create_app(model)`` → a FastAPI app; ``run_server`` runs it with uvicorn.

Routes:
    ``POST /predict``: audio as multipart field ``file`` or as the raw body →
    :class:`~speech_emotion.serving.schemas.Prediction`; ``?timeline=1`` adds segments.
    ``GET /health``, ``GET /model``, ``GET /`` (a web page), ``/docs`` (OpenAPI).

A request is admitted (or refused with 503) before its body is read, and its body streams
to a temporary file within ``body_timeout`` (:mod:`speech_emotion.serving.intake`); requests
from another site or for another host name are refused first
(:mod:`speech_emotion.serving.guards`). Uploads are checked from their header
(:mod:`speech_emotion.serving.uploads`), then predicted by the same
:class:`~speech_emotion.inference.predictor.Predictor` call ``ser predict`` makes, so both
give the same answer. Decoding and inference run in worker threads, at most
``limits.max_concurrent`` at once; the event loop keeps answering. Every refused request gets
a 4xx with ``{"error": code, "detail": message}``.

Example:
    >>> from fastapi.testclient import TestClient
    >>> app = create_app(_EchoPredictor(["calm", "angry"]))
    >>> client = TestClient(app)
    >>> client.get("/health").json()["status"]
    'ok'
    >>> client.post("/predict", content=b"", headers={"content-type": "audio/wav"}).json()
    {'error': 'empty', 'detail': "body: empty upload (0 bytes); send the audio file's bytes"}
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.resources
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.errors import AudioError, AudioLimitError, TimelineLimitError
from speech_emotion.serving.guards import BodyLimit, RequestGuard, check_origins, error_response
from speech_emotion.serving.intake import Admission, receive_upload, upload_media_type
from speech_emotion.serving.limits import ServeLimits
from speech_emotion.serving.schemas import EncoderInfo, ErrorBody, Health, ModelInfo, Prediction, Segment
from speech_emotion.serving.uploads import UploadError, UploadInfo, check_upload, decode_file

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024
"""Bytes a request body may exceed ``max_bytes`` by, for multipart boundaries and headers."""

_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "busy",
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Empty upload, missing field 'file', malformed body, or a Host header that is not this server's.",
        403: "A request from another site (its Origin is neither this server nor an allowed --cors-origin).",
        408: "The body did not arrive within body_timeout seconds.",
        413: "Upload larger than max_bytes, clip longer than max_duration, or beyond the decode limits "
        "(max_sampling_rate, max_channels, max_samples).",
        415: "Not an accepted audio format (or a non-audio content type).",
        422: "Audio that does not decode into usable samples (corrupt, truncated, NaN, silent, too short), an "
        "invalid query parameter, or a timeline of more than max_windows windows.",
        503: "Too many requests in the server (max_concurrent + max_queue); retry later.",
    }.items()
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The audio file (WAV, FLAC, Ogg Vorbis/Opus, MP3).",
                        }
                    },
                }
            },
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
"""The body of ``POST /predict`` for the OpenAPI page: it is read by hand, after admission, not by FastAPI."""


def create_app(
    model: Any,
    *,
    limits: ServeLimits | None = None,
    name: str | None = None,
    encoder: str | None = None,
    allow_encoder_mismatch: bool = False,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    device: str = "auto",
    precision: str | None = None,
) -> FastAPI:
    """A FastAPI app that serves one model.

    Args:
        model: a :class:`~speech_emotion.inference.predictor.Predictor`, or a run or bundle
            folder to load one from (as ``ser predict`` does).
        limits: accepted size, duration, formats, decode budget, timeline windows, body time
            and concurrency (default :class:`ServeLimits()`).
        name: model name in answers (default: the run folder's name).
        encoder: where the model's encoder is now, if it moved (only when ``model`` is a path).
        allow_encoder_mismatch: load an encoder whose fingerprint differs (only with a path).
        host: the address the server listens on: requests must name it (or a loopback name) in
            their ``Host`` header (see :mod:`speech_emotion.serving.guards`).
        allowed_hosts: more host names to answer to (``"*"``: any).
        cors_origins: origins allowed to call the API from a web page (none by default).
        device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``; only with a path).
        precision: ``fp32``/``bf16`` (only with a path); default: the model's own.

    Returns:
        The app; run it with uvicorn, or test it with ``fastapi.testclient.TestClient``.

    Raises:
        BundleError: ``model`` is a path to an invalid bundle, or its encoder cannot be loaded.
        ValueError: an entry of ``cors_origins`` that is not an origin.
    """
    check_origins(cors_origins)  # before loading a model
    if isinstance(model, (str, Path)):
        from speech_emotion.inference.predictor import Predictor

        predictor = Predictor.from_pretrained(
            model, encoder=encoder, allow_encoder_mismatch=allow_encoder_mismatch, device=device, precision=precision
        )
    else:
        predictor = model
    limits = limits or ServeLimits()
    model_name = name or _model_name(predictor)
    admission = Admission(limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.limiter = anyio.CapacityLimiter(limits.max_concurrent)
        log.info("serving model %s (%s), limits %s", model_name, ", ".join(predictor.classes), limits.to_dict())
        yield

    app = FastAPI(
        title="speech-emotion",
        summary=f"Speech emotion recognition with model {model_name!r}.",
        description="POST audio to /predict (multipart field `file`, or the raw body). The page at / does it from a "
        "browser.",
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.limits = limits
    app.state.admission = admission
    app.add_middleware(BodyLimit, max_body=limits.max_bytes + MULTIPART_SLACK)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(RequestGuard, bind=host, allowed_hosts=tuple(allowed_hosts), cors_origins=tuple(cors_origins))
    _add_error_handlers(app)

    def limiter() -> anyio.CapacityLimiter:
        # Made in the lifespan; made here when a test client skips the lifespan.
        if getattr(app.state, "limiter", None) is None:
            app.state.limiter = anyio.CapacityLimiter(limits.max_concurrent)
        return app.state.limiter

    @app.post(
        "/predict",
        response_model=Prediction,
        response_model_exclude_none=True,
        responses=_ERROR_RESPONSES,
        openapi_extra=_UPLOAD_BODY,
    )
    async def predict(
        request: Request,
        timeline: Annotated[bool, Query(description="Also predict over sliding windows (for long audio).")] = False,
        window: Annotated[
            float | None, Query(gt=0, description="Timeline window in seconds (default: the timeline's).")
        ] = None,
        hop: Annotated[
            float | None,
            Query(gt=0, description="Timeline hop in seconds, at least a tenth of the window (default: the window)."),
        ] = None,
        vad: Annotated[
            bool, Query(description="Timeline: cut windows inside detected speech only (false: over the whole clip).")
        ] = True,
    ) -> dict:
        """Predict the emotion of one clip: multipart field ``file`` (WAV, FLAC, Ogg, MP3), or the raw body."""
        timeline_args = _timeline_args(window, hop, vad, limits) if timeline else None
        tokens = limiter()
        upload_media_type(request)  # 415 before 503: a request that cannot succeed is told why
        with admission.ticket():  # before a byte of the body is read
            async with receive_upload(request, limits) as upload:
                info = await anyio.to_thread.run_sync(
                    functools.partial(check_upload, filename=upload.filename), upload.path, limits
                )
                if timeline_args is not None and info.duration is not None:
                    _check_windows(info.duration, timeline_args, limits, upload.filename)
                result = await anyio.to_thread.run_sync(
                    _infer, predictor, limits, info, upload.filename, timeline_args, limiter=tokens
                )
        result["model"] = model_name
        return result

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        """Liveness, load and limits."""
        running = int(limiter().borrowed_tokens)
        return {
            "status": "ok",
            "model": model_name,
            "in_flight": running,
            "waiting": max(0, admission.admitted - running),
            "limits": limits.health_dict(),
        }

    @app.get("/model", response_model=ModelInfo)
    async def model_info() -> dict:
        """Classes in index order, encoder and metrics from model.json (no path of this machine)."""
        meta = predictor.meta
        recorded = meta.encoder.to_dict()
        shown = {k: recorded.get(k) for k in EncoderInfo.model_fields if k in recorded}
        shown["reference"] = public_reference(recorded.get("reference"), local=recorded.get("path") is not None)
        return {
            "name": model_name,
            "classes": list(predictor.classes),
            "encoder": EncoderInfo(**shown),
            "metrics": meta.metrics,
            "protocol": meta.data.get("protocol"),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    app.mount("/static", StaticFiles(packages=[("speech_emotion.serving", "static")]), name="static")
    return app


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""A Hugging Face hub id (``openai/whisper-base``) or a bare name (``egemaps``)."""


def public_reference(reference: str | None, *, local: bool = False) -> str | None:
    """An encoder reference fit to show to clients: a hub id as it is, a local folder by its name only.

    Args:
        reference: the ``--encoder`` value recorded in ``model.json``.
        local: the reference was a local folder (``model.json`` recorded its path).

    Example:
        >>> public_reference("/home/ana/models/whisper-base", local=True), public_reference("openai/whisper-base")
        ('whisper-base', 'openai/whisper-base')
        >>> public_reference("../shared/models/whisper-tiny.en-encoder"), public_reference("C:\\\\m\\\\w2v")
        ('whisper-tiny.en-encoder', 'w2v')
    """
    if reference is None:
        return None
    if not local and _HUB_ID.fullmatch(reference) and not reference.startswith("."):
        return reference
    name = re.split(r"[\\/]", reference.rstrip("/\\"))[-1]
    return name or None


def _timeline_args(window: float | None, hop: float | None, vad: bool, limits: ServeLimits) -> dict:
    """The timeline's options, checked before the request is admitted (422 out of range, 501 unavailable)."""
    timeline = _timeline_module()
    try:
        checked_hop = timeline.check_timeline_options(
            window=timeline.WINDOW if window is None else window, hop=hop, max_windows=limits.max_windows
        )
    except ValueError as error:
        raise UploadError(422, "invalid_request", f"timeline: {error}") from None
    return {"window": timeline.WINDOW if window is None else window, "hop": checked_hop, "vad": vad}


def _check_windows(duration: float, timeline_args: dict, limits: ServeLimits, filename: str) -> None:
    """Refuse a timeline of more than ``max_windows`` windows from the header's duration, before any decoding."""
    try:
        _timeline_module().check_window_count(
            duration, hop=timeline_args["hop"], max_windows=limits.max_windows, where=filename
        )
    except TimelineLimitError as error:
        raise UploadError(422, "too_many_windows", _windows_message(error, limits)) from None


def _windows_message(error: TimelineLimitError, limits: ServeLimits) -> str:
    return (
        f"{str(error).split(';')[0]} (this server's limit); pass a larger hop or window, or send a shorter clip"
        if error.max_windows == limits.max_windows
        else str(error)
    )


def _infer(predictor, limits: ServeLimits, info: UploadInfo, filename: str, timeline_args: dict | None) -> dict:
    """Decode and predict in a worker thread (the same ``load_audio`` + ``Predictor.predict`` as ``ser predict``)."""
    path = info.path
    signal = decode_file(path, limits, filename=filename)
    try:
        result = dict(predictor.predict([signal])[0])
    except ValueError as error:  # an encoder that refuses the signal (e.g. shorter than its receptive field)
        raise UploadError(422, "unreadable_audio", f"{filename}: {_without_paths(error, predictor)}") from None
    result["duration"] = round(len(signal) / SAMPLING_RATE, 3)
    if timeline_args is not None:
        predict_timeline = _timeline_module().predict_timeline
        try:
            segments = [
                Segment(**segment).model_dump()
                for segment in predict_timeline(
                    predictor, path, **timeline_args, max_windows=limits.max_windows, limits=limits.decode_limits
                )
            ]
        except ImportError as error:  # an optional dependency of the timeline (the VAD) is missing
            raise UploadError(501, "not_implemented", f"timeline=1 is not available on this server: {error}") from None
        except TimelineLimitError as error:
            message = _windows_message(error, limits).replace(str(path), filename)
            raise UploadError(422, "too_many_windows", message) from None
        except AudioLimitError as error:
            raise UploadError(413, "too_many_samples", f"{filename}: {error.reason}") from None
        except AudioError as error:
            raise UploadError(
                422, "unreadable_audio", f"{filename}: {error.reason.replace(str(path), filename)}"
            ) from None
        except ValueError as error:
            raise UploadError(422, "invalid_request", f"timeline: {str(error).replace(str(path), filename)}") from None
        result["segments"] = segments
    return result


def _without_paths(error: Exception, predictor) -> str:
    """A library message without this machine's model path (a client has no use for it)."""
    text = str(error)
    model_path = str(getattr(predictor, "path", "") or "")
    return text.replace(model_path, "the model") if model_path and model_path not in (".", "model") else text


def _timeline_module():
    try:
        timeline = importlib.import_module("speech_emotion.inference.timeline")
    except ImportError as error:
        raise UploadError(
            501,
            "not_implemented",
            f"timeline=1 is not available in this installation ({error}); upgrade speech-emotion",
        ) from None
    return timeline


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        log.info("%s %s → %d %s: %s", request.method, request.url.path, error.status_code, error.code, error)
        return error_response(error.status_code, error.code, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = str(error.detail)
        if error.status_code == 404:
            detail = f"no route {request.url.path}; the API is POST /predict, GET /health, GET /model (see /docs)"
        elif error.status_code == 405:
            detail = (
                f"{request.method} is not allowed on {request.url.path}; see /docs for the methods each route takes"
            )
        elif error.status_code == 400:
            detail = "malformed request body" if detail == "There was an error parsing the body" else detail.rstrip(".")
            detail += "; send multipart/form-data with the audio in field 'file', or the raw file as the body"
        return error_response(error.status_code, _STATUS_CODES.get(error.status_code, "http_error"), detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            location = item.get("loc", ())
            if tuple(location[:2]) == ("body", "file"):
                return error_response(
                    400,
                    "missing_file",
                    "field 'file' must be a file upload (a form part with a filename), not a text value",
                )
            where = " ".join(str(part) for part in location) or "request"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(problems))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises after this answer is sent, so the server logs the traceback.
        return error_response(
            500, "internal", f"{type(error).__name__}: the server failed on this request; it keeps serving others"
        )


def _model_name(predictor) -> str:
    path = Path(getattr(predictor, "path", "model"))
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def _static_text(name: str) -> str:
    return (importlib.resources.files("speech_emotion.serving") / "static" / name).read_text(encoding="utf-8")


def warm_up(predictor) -> None:
    """One prediction on a second of quiet noise before serving.

    The first request then costs what every other does, and a model that cannot label
    single clips (one trained with ``--speaker-norm``) fails here, with the predictor's
    message, instead of on every request.

    Raises:
        ValueError: the model cannot predict single clips.
    """
    signal = 0.01 * np.random.default_rng(0).standard_normal(SAMPLING_RATE).astype(np.float32)
    predictor.predict([signal])


class _EchoPredictor:
    """A stand-in predictor for the module's doctest: the first class, always."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.path = Path("echo")

    def predict(self, signals, *, min_confidence=None):
        return [
            {"label": self.classes[0], "probabilities": {c: float(i == 0) for i, c in enumerate(self.classes)}}
            for _ in signals
        ]
