"""Running the service: :func:`run_server` serves a model with uvicorn, in one process or several.

With ``workers > 1`` uvicorn starts each worker from :func:`create_app_from_env`, which reads
the settings ``run_server`` wrote to ``$SER_SERVE_CONFIG``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from speech_emotion.serving.app import create_app, warm_up
from speech_emotion.serving.guards import check_origins
from speech_emotion.serving.limits import ServeLimits

CONFIG_ENV = "SER_SERVE_CONFIG"
"""Environment variable through which ``run_server`` hands its settings to uvicorn worker processes."""


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn worker processes: settings come from ``$SER_SERVE_CONFIG`` (JSON)."""
    config = json.loads(os.environ[CONFIG_ENV])
    app = create_app(
        config["model"],
        limits=ServeLimits(**config["limits"]),
        encoder=config.get("encoder"),
        allow_encoder_mismatch=config.get("allow_encoder_mismatch", False),
        host=config.get("host", "127.0.0.1"),
        allowed_hosts=config.get("allowed_hosts", ()),
        cors_origins=config.get("cors_origins", ()),
        device=config.get("device", "auto"),
        precision=config.get("precision"),
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
    allowed_hosts: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    device: str = "auto",
    precision: str | None = None,
) -> None:
    """Serve ``model`` with uvicorn until interrupted.

    With ``workers`` > 1 each worker process loads its own copy of the model (memory grows
    with ``workers``; on ``cuda`` every copy sits on the same GPU); the bundle, the spelling of
    ``device`` and ``precision`` are checked here first so that a bad path fails at once.
    ``device`` and ``precision`` are those of
    :meth:`~speech_emotion.inference.predictor.Predictor.from_pretrained`.
    Requests must name ``host`` (or a loopback name, or one of ``allowed_hosts``) in their
    ``Host`` header; browsers may call the API only from its own page or ``cors_origins``
    (see :mod:`speech_emotion.serving.guards`).

    Raises:
        BundleError: the model or its encoder cannot be loaded.
        ValueError: the model cannot label single clips (see :func:`warm_up`), or an entry of
            ``cors_origins`` is not an origin; the device is not here; the precision is refused.
    """
    import uvicorn

    check_origins(cors_origins)  # here, not in each worker
    limits = limits or ServeLimits()
    if workers > 1:
        from speech_emotion.features.devices import check_device, check_precision
        from speech_emotion.model.metadata import BundleMeta

        check_device(device)
        if precision is not None:
            check_precision(precision)
        BundleMeta.read(model)  # a PyTorch bundle or an ONNX export: each worker loads it with Predictor
        os.environ[CONFIG_ENV] = json.dumps(
            {
                "model": str(model),
                "limits": limits.to_dict(),
                "encoder": encoder,
                "allow_encoder_mismatch": allow_encoder_mismatch,
                "host": host,
                "allowed_hosts": list(allowed_hosts),
                "cors_origins": list(cors_origins),
                "device": device,
                "precision": precision,
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
            "speech_emotion.serving.server:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            **slow_start,
        )
        return
    app = create_app(
        model,
        limits=limits,
        encoder=encoder,
        allow_encoder_mismatch=allow_encoder_mismatch,
        host=host,
        allowed_hosts=allowed_hosts,
        cors_origins=cors_origins,
        device=device,
        precision=precision,
    )
    warm_up(app.state.predictor)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
