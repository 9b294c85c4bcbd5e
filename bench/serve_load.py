"""Load check of `ser serve`: latency, throughput, errors and memory at 1, 4 and 16 concurrent clients.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/serve_load.py RUN [--requests 64] [--concurrency 1 4 16]
        [--time-cap 120] [--n-clips 16] [--max-concurrent 1] [--workers 1]

Starts ``ser serve RUN`` on 127.0.0.1 (loopback only, a free port), warms it up, then for
each concurrency level sends a fixed number of requests (real RAVDESS clips of held-out
actors from ``$SER_SHARED``, posted as multipart uploads) and stops issuing new ones when
the level's time cap is reached. Prints p50/p95 latency, throughput, the error count (any
non-200 answer, or a label that differs from the first answer for the same clip) and the
server's resident memory after warm-up and after each level. Exits 1 when any request
failed. The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HOST = "127.0.0.1"  # loopback only: this script never sends traffic off the machine


def read_clips(n_clips: int) -> list[tuple[str, bytes]]:
    """``n_clips`` RAVDESS files of actors 16-18, spread over emotions, as (name, bytes)."""
    files = sorted(
        f
        for actor in ("16", "17", "18")
        for f in (SHARED / "data" / "ravdess-speech-16k" / f"Actor_{actor}").glob("*.flac")
    )
    if not files:
        raise SystemExit(f"no clips under {SHARED / 'data' / 'ravdess-speech-16k'}; set SER_SHARED")
    step = max(1, len(files) // n_clips)
    return [(path.name, path.read_bytes()) for path in files[::step][:n_clips]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, in MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(current, []))
    return total / 1024


def start_server(model: str, port: int, args) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "from speech_emotion.cli.app import main; main()",
        "serve",
        model,
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(args.workers),
        "--max-concurrent",
        str(args.max_concurrent),
        "--max-queue",
        "1024",
    ]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ser serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.terminate()
    raise SystemExit("ser serve did not answer within 180 s")


async def run_level(
    url: str, clips, expected: dict[str, str], *, concurrency: int, n_requests: int, time_cap: float
) -> dict:
    """``n_requests`` requests from ``concurrency`` clients; none issued after ``time_cap`` seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    start = time.perf_counter()

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < n_requests and time.perf_counter() - start < time_cap:
            name, data = clips[issued % len(clips)]
            issued += 1
            sent = time.perf_counter()
            try:
                response = await client.post(url, files={"file": (name, data, "audio/flac")})
            except httpx.HTTPError as error:
                errors.append(f"{name}: {type(error).__name__}: {error}")
                continue
            latencies.append(time.perf_counter() - sent)
            if response.status_code != 200:
                errors.append(f"{name}: HTTP {response.status_code}: {response.text[:200]}")
            elif response.json()["label"] != expected[name]:
                errors.append(f"{name}: label {response.json()['label']!r}, first answer was {expected[name]!r}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(time_cap + 60), limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "n": len(latencies),
        "errors": errors,
        "wall": wall,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "throughput": len(latencies) / wall,
        "capped": issued < n_requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run folder or model bundle folder")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--time-cap", type=float, default=120.0, help="seconds per level after which no new request is sent"
    )
    parser.add_argument("--n-clips", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-concurrent", type=int, default=1, help="ser serve --max-concurrent")
    args = parser.parse_args()

    clips = read_clips(args.n_clips)
    seconds = []
    port = free_port()
    url = f"http://{HOST}:{port}/predict"
    server = start_server(args.model, port, args)
    results, healthy = [], False
    try:
        expected = {}
        for name, data in clips:  # warm up, and note each clip's answer
            body = httpx.post(url, files={"file": (name, data, "audio/flac")}, timeout=120).json()
            expected[name] = body["label"]
            seconds.append(body["duration"])
        rss = [("after warm-up", rss_mib(server.pid))]
        print(
            f"model {args.model}; {len(clips)} clips, mean {np.mean(seconds):.2f} s; server workers={args.workers} "
            f"max-concurrent={args.max_concurrent}; loopback {HOST}:{port}"
        )
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'p50 s':>7} {'p95 s':>7} {'req/s':>7} {'RSS MiB':>8}")
        results = []
        for concurrency in args.concurrency:
            result = asyncio.run(
                run_level(
                    url, clips, expected, concurrency=concurrency, n_requests=args.requests, time_cap=args.time_cap
                )
            )
            rss.append((f"after {concurrency} clients", rss_mib(server.pid)))
            results.append(result)
            capped = " (time cap reached)" if result["capped"] else ""
            print(
                f"{concurrency:>7} {result['n']:>8} {len(result['errors']):>6} {result['p50']:>7.3f} "
                f"{result['p95']:>7.3f} {result['throughput']:>7.2f} {rss[-1][1]:>8.0f}{capped}"
            )
            for error in result["errors"][:5]:
                print(f"        error: {error}")
        growth = rss[-1][1] - rss[0][1]
        print(
            "server RSS: "
            + ", ".join(f"{label} {value:.0f} MiB" for label, value in rss)
            + f"; growth {growth:+.0f} MiB"
        )
        healthy = httpx.get(f"http://{HOST}:{port}/health", timeout=10).json()["status"] == "ok"
        print(f"health after the run: {'ok' if healthy else 'NOT OK'}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    n_errors = sum(len(r["errors"]) for r in results)
    if n_errors or not healthy:
        raise SystemExit(f"{n_errors} request(s) failed")


if __name__ == "__main__":
    main()
