"""An ONNX export deploys without torch: `ser evaluate` scores it, `ser serve --workers 2` serves it.

Both run on the small ONNX export of tests/fixtures/v1 (a tiny wav2vec 2.0 trained on the
synthetic corpus), as real subprocesses.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import synth_clip
from speech_emotion.inference.evaluate import evaluate
from speech_emotion.inference.predictor import Predictor

V1 = Path(__file__).parent / "fixtures" / "v1"
EXPORT = V1 / "onnx-export"

BLOCK_TORCH = """
import sys

class _Blocked:
    '''Any import of torch or transformers fails, as on a machine where they are not installed.'''

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def run_cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    script = (
        BLOCK_TORCH
        + "import atexit, sys\n"
        + "atexit.register(lambda: print('MODULES', 'torch' in sys.modules, 'transformers' in sys.modules))\n"
        + f"sys.argv = ['ser', *{list(args)!r}]\n"
        + "from speech_emotion.cli.app import main\n"
        + "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_evaluate_an_onnx_export_without_torch(synth_corpus):
    done = run_cli_without_torch("evaluate", str(EXPORT), str(synth_corpus), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "MODULES False False"  # neither was imported (nor could be)
    result = json.loads(lines[-2])
    assert result["n"] == 24 and result["speakers"] == ["05", "06"]  # the held-out speakers only
    assert result["contaminated"]["n"] == 48  # speakers 01-04, trained or validated on, counted apart
    expected = evaluate(Predictor.from_pretrained(EXPORT), synth_corpus)  # the same export, in this process
    assert result["accuracy"] == expected["accuracy"] and result["confusion"] == expected["confusion"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wav_bytes(signal: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, 16000, format="WAV")
    return buffer.getvalue()


def test_serve_an_onnx_export_with_two_workers(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'ser'; from speech_emotion.cli.app import main; main()"]
        + ["serve", str(EXPORT), "--workers", "2", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"ser serve exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer from {url} in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        predictor = Predictor.from_pretrained(EXPORT)
        clip = synth_clip(260.0, seconds=1.0, seed=2)
        expected = predictor(clip, sampling_rate=16000)
        for _ in range(8):  # several requests, spread over the workers: each answers with the same model
            answer = httpx.post(f"{url}/predict", content=wav_bytes(clip), headers={"content-type": "audio/wav"})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["label"] == expected["label"]
            assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        model = httpx.get(f"{url}/model").json()
        assert model["classes"] == predictor.classes and model["encoder"]["family"] == "ssl"
    finally:
        server.terminate()
        server.wait(timeout=30)
