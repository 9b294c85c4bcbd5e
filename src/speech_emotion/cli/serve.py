"""`ser serve`: a REST service and web page for a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from speech_emotion.cli.console import err_console, fail
from speech_emotion.cli.device_options import DeviceOpt, ModelPrecisionOpt


def serve(
    model: Annotated[Path, typer.Argument(help="Run folder or model bundle folder.", exists=True, file_okay=False)],
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The default answers this machine only; 0.0.0.0 opens it to the network."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own copy of the model.", min=1)] = 1,
    max_bytes: Annotated[int, typer.Option(help="Largest accepted upload in bytes (413 above).", min=1)] = 20_000_000,
    max_duration: Annotated[float, typer.Option(help="Longest accepted clip in seconds (413 above).", min=0.0)] = 120.0,
    formats: Annotated[
        str,
        typer.Option(help="Accepted audio formats, comma-separated, from: wav, flac, ogg, mp3, aiff (415 for others)."),
    ] = "wav,flac,ogg,mp3",
    max_concurrent: Annotated[
        int,
        typer.Option(help="Inferences run at once per worker; the rest wait (on CPU, 1 is usually fastest).", min=1),
    ] = 1,
    max_queue: Annotated[
        int,
        typer.Option(
            help="Requests that may wait per worker, counted before their body is read (receiving it, or waiting "
            "for a turn); more get 503.",
            min=0,
        ),
    ] = 64,
    max_sampling_rate: Annotated[
        int, typer.Option(help="Highest sampling rate of an upload in Hz (413 above), read from its header.", min=1)
    ] = 192_000,
    max_channels: Annotated[int, typer.Option(help="Most channels of an upload (413 above).", min=1)] = 8,
    max_samples: Annotated[
        int,
        typer.Option(
            help="Decode budget of one upload: most samples (frames × channels) it may decode to (413 above; default: "
            "120 s of 48 kHz stereo). Checked from the header before decoding, and while decoding in blocks.",
            min=1,
        ),
    ] = 11_520_000,
    max_windows: Annotated[
        int, typer.Option(help="Most windows a ?timeline=1 request may cut its clip into (422 above).", min=1)
    ] = 120,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may take to arrive (408 after; the connection closes).")
    ] = 30.0,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Another name this server answers to in the Host header (repeatable; '*': any). By default only the "
            "--host address and loopback names (and, for 0.0.0.0, IP addresses and this machine's names): other "
            "names get 400, which stops DNS rebinding.",
        ),
    ] = None,
    cors_origin: Annotated[
        Optional[list[str]],
        typer.Option(
            help="An origin (scheme://host[:port]) whose web pages may call the API (repeatable). None by default: "
            "requests from other sites get 403.",
        ),
    ] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Where the model's encoder is now, if it moved.")] = None,
    allow_encoder_mismatch: Annotated[
        bool, typer.Option(help="Use an encoder whose fingerprint differs from training (unreliable).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    device: DeviceOpt = "auto",
    precision: ModelPrecisionOpt = None,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, GET /model, and a web page at /."""
    from speech_emotion.errors import BundleError
    from speech_emotion.serving import ServeLimits, run_server

    try:
        limits = ServeLimits(
            max_bytes=max_bytes,
            max_duration=max_duration,
            formats=formats,
            max_concurrent=max_concurrent,
            max_queue=max_queue,
            max_sampling_rate=max_sampling_rate,
            max_channels=max_channels,
            max_samples=max_samples,
            max_windows=max_windows,
            body_timeout=body_timeout,
        )
    except ValueError as error:
        raise fail(error) from None
    err_console.print(f"serving {model} on http://{host}:{port}/ (API docs at /docs); Ctrl+C stops", highlight=False)
    try:
        run_server(
            model,
            host=host,
            port=port,
            workers=workers,
            limits=limits,
            encoder=encoder,
            allow_encoder_mismatch=allow_encoder_mismatch,
            log_level=log_level,
            allowed_hosts=allow_host or (),
            cors_origins=cors_origin or (),
            device=device,
            precision=precision,
        )
    except (BundleError, OSError, ValueError) as error:
        raise fail(error) from None
