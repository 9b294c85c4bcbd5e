"""The REST service: ``create_app(model)`` → a FastAPI app; ``run_server`` runs it with uvicorn.

Routes:
    ``POST /predict``: audio as multipart field ``file`` or as the raw body →
    :class:`~speech_emotion.serving.schemas.Prediction`; ``?timeline=1`` adds segments.
    ``GET /health``, ``GET /model``, ``GET /`` (a web page), ``/docs`` (OpenAPI).

Uploads are checked by :mod:`speech_emotion.serving.uploads` and predicted by the same
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
import importlib.resources
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.errors import AudioError
from speech_emotion.serving.schemas import EncoderInfo, ErrorBody, Health, ModelInfo, Prediction, Segment
from speech_emotion.serving.uploads import ServeLimits, UploadError, check_content_type, decode_file, upload_on_disk

log = logging.getLogger(__name__)

CONFIG_ENV = "SER_SERVE_CONFIG"
"""Environment variable through which ``run_server`` hands its settings to uvicorn worker processes."""

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
        400: "Empty upload, missing field 'file', malformed body.",
        413: "Upload larger than max_bytes, or clip longer than max_duration.",
        415: "Not an accepted audio format (or a non-audio content type).",
        422: "Audio that does not decode into usable samples (corrupt, truncated, NaN, silent, too short), or an "
        "invalid query parameter.",
        503: "Too many requests waiting; retry later.",
    }.items()
}


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises HTTP exceptions)."""


def create_app(
    model: Any,
    *,
    limits: ServeLimits | None = None,
    name: str | None = None,
    encoder: str | None = None,
    allow_encoder_mismatch: bool = False,
) -> FastAPI:
    """A FastAPI app that serves one model.

    Args:
        model: a :class:`~speech_emotion.inference.predictor.Predictor`, or a run or bundle
            folder to load one from (as ``ser predict`` does).
        limits: accepted size, duration, formats and concurrency (default :class:`ServeLimits()`).
        name: model name in answers (default: the run folder's name).
        encoder: where the model's encoder is now, if it moved (only when ``model`` is a path).
        allow_encoder_mismatch: load an encoder whose fingerprint differs (only with a path).

    Returns:
        The app; run it with uvicorn, or test it with ``fastapi.testclient.TestClient``.

    Raises:
        BundleError: ``model`` is a path to an invalid bundle, or its encoder cannot be loaded.
    """
    if isinstance(model, (str, Path)):
        from speech_emotion.inference.predictor import Predictor

        predictor = Predictor.from_pretrained(model, encoder=encoder, allow_encoder_mismatch=allow_encoder_mismatch)
    else:
        predictor = model
    limits = limits or ServeLimits()
    model_name = name or _model_name(predictor)

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
    app.add_middleware(_BodyLimit, max_body=limits.max_bytes + MULTIPART_SLACK)
    _add_error_handlers(app)

    def limiter() -> anyio.CapacityLimiter:
        # Made in the lifespan; made here when a test client skips the lifespan.
        if getattr(app.state, "limiter", None) is None:
            app.state.limiter = anyio.CapacityLimiter(limits.max_concurrent)
        return app.state.limiter

    @app.post("/predict", response_model=Prediction, response_model_exclude_none=True, responses=_ERROR_RESPONSES)
    async def predict(
        request: Request,
        file: Annotated[
            UploadFile | None,
            File(description="The audio file (WAV, FLAC, Ogg Vorbis/Opus, MP3). Or send it as the raw body."),
        ] = None,
        timeline: Annotated[bool, Query(description="Also predict over sliding windows (for long audio).")] = False,
        window: Annotated[
            float | None, Query(gt=0, description="Timeline window in seconds (default: the timeline's).")
        ] = None,
        hop: Annotated[
            float | None, Query(gt=0, description="Timeline hop in seconds (default: the timeline's).")
        ] = None,
        vad: Annotated[
            bool, Query(description="Timeline: cut windows inside detected speech only (false: over the whole clip).")
        ] = True,
    ) -> dict:
        """Predict the emotion of one clip."""
        data, filename = await _read_upload(request, file)
        tokens = limiter()
        if tokens.available_tokens == 0 and tokens.statistics().tasks_waiting >= limits.max_queue:
            raise UploadError(
                503,
                "busy",
                f"{tokens.statistics().tasks_waiting} requests are already waiting (max_queue={limits.max_queue}); "
                "retry shortly",
            )
        timeline_args = (
            {k: v for k, v in {"window": window, "hop": hop, "vad": vad}.items() if v is not None} if timeline else None
        )
        result = await anyio.to_thread.run_sync(
            _infer, predictor, limits, data, filename, timeline_args, limiter=tokens
        )
        result["model"] = model_name
        return result

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        """Liveness, load and limits."""
        tokens = limiter()
        return {
            "status": "ok",
            "model": model_name,
            "in_flight": int(tokens.borrowed_tokens),
            "waiting": tokens.statistics().tasks_waiting,
            "limits": limits.to_dict(),
        }

    @app.get("/model", response_model=ModelInfo)
    async def model_info() -> dict:
        """Classes in index order, encoder and metrics from model.json."""
        meta = predictor.meta
        recorded = meta.encoder.to_dict()
        return {
            "name": model_name,
            "classes": list(predictor.classes),
            "encoder": EncoderInfo(**{k: recorded.get(k) for k in EncoderInfo.model_fields if k in recorded}),
            "metrics": meta.metrics,
            "protocol": meta.data.get("protocol"),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    app.mount("/static", StaticFiles(packages=[("speech_emotion.serving", "static")]), name="static")
    return app


async def _read_upload(request: Request, file: UploadFile | None) -> tuple[bytes, str]:
    """The uploaded bytes and a name for messages, from multipart field ``file`` or the raw body."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        if file is None:
            form = await request.form()
            fields = ", ".join(repr(k) for k in form.keys()) or "none"
            raise UploadError(
                400,
                "missing_file",
                f"the multipart body has no file field 'file' (fields sent: {fields}); send the audio as field 'file'",
            )
        filename = file.filename or "file"
        check_content_type(file.content_type, what=f"field 'file' ({filename})")
        return await file.read(), filename
    if media_type == "application/x-www-form-urlencoded":
        raise UploadError(
            415,
            "unsupported_media_type",
            "a url-encoded form cannot carry audio; send multipart/form-data with field 'file', or the raw file as the "
            "body",
        )
    check_content_type(content_type, what="body")
    return await request.body(), "body"


def _infer(predictor, limits: ServeLimits, data: bytes, filename: str, timeline_args: dict | None) -> dict:
    """Decode and predict in a worker thread (the same ``load_audio`` + ``Predictor.predict`` as ``ser predict``)."""
    with upload_on_disk(data, limits, filename=filename) as path:
        signal = decode_file(path, limits, filename=filename)
        try:
            result = dict(predictor.predict([signal])[0])
        except ValueError as error:  # an encoder that refuses the signal (e.g. shorter than its receptive field)
            raise UploadError(422, "unreadable_audio", f"{filename}: {error}") from None
        result["duration"] = round(len(signal) / SAMPLING_RATE, 3)
        if timeline_args is not None:
            predict_timeline = _timeline_function()
            try:
                segments = [
                    Segment(**segment).model_dump() for segment in predict_timeline(predictor, path, **timeline_args)
                ]
            except ImportError as error:  # an optional dependency of the timeline (the VAD) is missing
                raise UploadError(
                    501, "not_implemented", f"timeline=1 is not available on this server: {error}"
                ) from None
            except AudioError as error:
                raise UploadError(
                    422, "unreadable_audio", f"{filename}: {error.reason.replace(str(path), filename)}"
                ) from None
            except ValueError as error:
                raise UploadError(
                    422, "invalid_request", f"timeline: {str(error).replace(str(path), filename)}"
                ) from None
            result["segments"] = segments
    return result


def _timeline_function():
    try:
        from speech_emotion.inference.timeline import predict_timeline
    except ImportError as error:
        raise UploadError(
            501,
            "not_implemented",
            f"timeline=1 is not available in this installation ({error}); upgrade speech-emotion",
        ) from None
    return predict_timeline


class _BodyLimit:
    """ASGI middleware: refuse a request body over ``max_body`` bytes with 413, before or while it streams."""

    def __init__(self, app, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                n_bytes = int(declared)
            except ValueError:
                await _error_response(
                    400, "bad_request", f"Content-Length {declared.decode(errors='replace')!r} is not a number"
                )(scope, receive, send)
                return
            if n_bytes > self.max_body:
                message = (
                    f"request body of {n_bytes} bytes is more than this server's limit of {self.max_body} bytes; "
                    "send a shorter or compressed clip"
                )
                await _error_response(413, "too_large", message)(scope, receive, send)
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge(
                        413,
                        f"request body passed this server's limit of {self.max_body} bytes; send a shorter or "
                        "compressed clip",
                    )
            return message

        await self.app(scope, limited_receive, send)


def _error_response(status_code: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status_code)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        log.info("%s %s → %d %s: %s", request.method, request.url.path, error.status_code, error.code, error)
        return _error_response(error.status_code, error.code, str(error))

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
        return _error_response(error.status_code, _STATUS_CODES.get(error.status_code, "http_error"), detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            location = item.get("loc", ())
            if tuple(location[:2]) == ("body", "file"):
                return _error_response(
                    400,
                    "missing_file",
                    "field 'file' must be a file upload (a form part with a filename), not a text value",
                )
            where = " ".join(str(part) for part in location) or "request"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return _error_response(422, "invalid_request", "; ".join(problems))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises after this answer is sent, so the server logs the traceback.
        return _error_response(
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


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn worker processes: settings come from ``$SER_SERVE_CONFIG`` (JSON)."""
    config = json.loads(os.environ[CONFIG_ENV])
    app = create_app(
        config["model"],
        limits=ServeLimits(**config["limits"]),
        encoder=config.get("encoder"),
        allow_encoder_mismatch=config.get("allow_encoder_mismatch", False),
    )
    warm_up(app.state.predictor)
    return app


def run_server(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    limits: ServeLimits | None = None,
    encoder: str | None = None,
    allow_encoder_mismatch: bool = False,
    log_level: str = "info",
) -> None:
    """Serve ``model`` with uvicorn until interrupted.

    With ``workers`` > 1 each worker process loads its own copy of the model (memory grows
    with ``workers``); the bundle is checked here first so that a bad path fails at once.

    Raises:
        BundleError: the model or its encoder cannot be loaded.
        ValueError: the model cannot label single clips (see :func:`warm_up`).
    """
    import uvicorn

    limits = limits or ServeLimits()
    if workers > 1:
        from speech_emotion.model.metadata import BundleMeta

        BundleMeta.read(model)  # a PyTorch bundle or an ONNX export: each worker loads it with Predictor
        os.environ[CONFIG_ENV] = json.dumps(
            {
                "model": str(model),
                "limits": limits.to_dict(),
                "encoder": encoder,
                "allow_encoder_mismatch": allow_encoder_mismatch,
            }
        )
        import inspect

        # Each worker loads the model before it answers uvicorn's health check (5 s by default in
        # the uvicorn versions that have one): give it time, or workers are killed and restarted forever.
        slow_start = (
            {"timeout_worker_healthcheck": 600}
            if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters
            else {}
        )
        uvicorn.run(
            "speech_emotion.serving.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            **slow_start,
        )
        return
    app = create_app(model, limits=limits, encoder=encoder, allow_encoder_mismatch=allow_encoder_mismatch)
    warm_up(app.state.predictor)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


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
