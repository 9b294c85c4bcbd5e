"""Slow and many clients against a real `ser serve` (uvicorn in a subprocess; speech_emotion.serving.intake).

A request is admitted (or refused with 503) before its body is read, and a body that does not
arrive within ``--body-timeout`` gets 408 and a closed connection, while the server keeps
answering others. Clients here are raw sockets, so they can send headers and then trickle.
The model is the small ONNX export of tests/fixtures/v1 (no training, no torch in the server).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

EXPORT = Path(__file__).parent / "fixtures" / "v1" / "onnx-export"
BODY_TIMEOUT = 2.0
MAX_CONCURRENT, MAX_QUEUE = 1, 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wav_bytes(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 260 * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ser serve` with a 2 s body timeout and room for 1 running + 2 waiting requests; yields (host, port)."""
    port = free_port()
    log = tmp_path_factory.mktemp("intake-log") / "serve.log"
    command = [sys.executable, "-c", "from speech_emotion.cli.app import main; main()", "serve", str(EXPORT)]
    command += ["--port", str(port), "--body-timeout", str(BODY_TIMEOUT), "--log-level", "warning"]
    command += ["--max-concurrent", str(MAX_CONCURRENT), "--max-queue", str(MAX_QUEUE)]
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"ser serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"ser serve did not answer in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class SlowClient:
    """A raw HTTP client that sends the request line and headers, then the body a byte at a time (or never)."""

    def __init__(
        self, address: tuple[str, int], *, content_type: str = "audio/wav", length: int = 32044, start: bytes = b""
    ):
        self.socket = socket.create_connection(address, timeout=30)
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        self.socket.sendall(head.encode() + start)
        self.stop = threading.Event()
        self.sent_after_answer = False

    def trickle(self, every: float = 0.2) -> threading.Thread:
        """Send one byte every ``every`` seconds, in a thread, until the server closes or :meth:`close`."""

        def run():
            while not self.stop.wait(every):
                try:
                    self.socket.send(b"R")
                except OSError:
                    return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def answer(self, timeout: float = 30.0) -> bytes:
        """Everything the server sends until it closes the connection (or ``timeout``)."""
        self.socket.settimeout(timeout)
        received = b""
        try:
            while chunk := self.socket.recv(65536):
                received += chunk
        except (TimeoutError, socket.timeout):
            pass
        except ConnectionResetError:
            pass
        return received

    def close(self) -> None:
        self.stop.set()
        self.socket.close()


def test_a_trickling_body_is_cut_off_with_408_while_others_are_served(server):
    url = f"http://{server[0]}:{server[1]}"
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    for content_type, start in (("audio/wav", b"RIFF"), ("multipart/form-data; boundary=xyz", part + b"RIFF")):
        slow = SlowClient(server, content_type=content_type, start=start)
        started = time.monotonic()
        slow.trickle()
        try:
            # While it trickles, the only inference slot is free and others are answered.
            for _ in range(3):
                fine = httpx.post(
                    f"{url}/predict", content=wav_bytes(), headers={"content-type": "audio/wav"}, timeout=30
                )
                assert fine.status_code == 200, fine.text
            answer = slow.answer(timeout=BODY_TIMEOUT + 20)
            elapsed = time.monotonic() - started
        finally:
            slow.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b'"error":"body_timeout"' in answer and b"body_timeout" in answer
        assert b"connection: close" in answer.lower()  # and the connection was closed: answer() returned
        assert BODY_TIMEOUT - 0.2 <= elapsed < BODY_TIMEOUT + 15
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert (health["in_flight"], health["waiting"]) == (0, 0)


def test_requests_past_the_queue_get_503_before_their_body_is_read(server):
    url = f"http://{server[0]}:{server[1]}"
    holders = [SlowClient(server) for _ in range(MAX_CONCURRENT + MAX_QUEUE)]  # headers sent, no body: admitted
    try:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health", timeout=10).json()["waiting"] < len(holders):
            assert time.monotonic() < deadline, "the slow requests were not admitted"
            time.sleep(0.05)
        # One more sends only its headers: it is answered at once, without its body.
        extra = SlowClient(server, length=20_000_000)
        started = time.monotonic()
        answer = extra.answer(timeout=10)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        assert b'"error":"busy"' in answer and b"max_queue=2" in answer
        assert time.monotonic() - started < 5  # answered at once, not after waiting for a body
        busy = httpx.post(f"{url}/predict", content=wav_bytes(), headers={"content-type": "audio/wav"}, timeout=30)
        assert busy.status_code == 503 and busy.json()["error"] == "busy"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the loop answers while they hold
        for holder in holders:  # each is cut off after the body timeout and frees its place
            assert holder.answer(timeout=BODY_TIMEOUT + 20).startswith(b"HTTP/1.1 408")
    finally:
        for holder in holders:
            holder.close()
    fine = httpx.post(f"{url}/predict", content=wav_bytes(), headers={"content-type": "audio/wav"}, timeout=30)
    assert fine.status_code == 200, fine.text


def test_a_rebinding_host_and_a_foreign_origin_are_refused_by_the_real_server(server):
    url = f"http://{server[0]}:{server[1]}"
    rebound = httpx.post(
        f"{url}/predict", content=wav_bytes(), headers={"content-type": "audio/wav", "host": "attacker.example:8000"}
    )
    assert rebound.status_code == 400 and rebound.json()["error"] == "invalid_host"
    foreign = httpx.post(
        f"{url}/predict",
        files={"file": ("clip.wav", wav_bytes(), "audio/wav")},
        headers={"origin": "https://attacker.example"},
    )
    assert foreign.status_code == 403 and foreign.json()["error"] == "cross_origin"
    own = httpx.post(
        f"{url}/predict", files={"file": ("clip.wav", wav_bytes(), "audio/wav")}, headers={"origin": url}, timeout=30
    )
    assert own.status_code == 200, own.text
    model = httpx.get(f"{url}/model").json()
    assert "/" not in (model["encoder"]["reference"] or "")  # the export's encoder folder, by name only
