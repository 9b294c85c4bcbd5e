"""MLflow tracking against a real `mlflow server` (sqlite backend, local artifact folder) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from speech_emotion.cli.app import app
from speech_emotion.training.pipeline import resume

runner = CliRunner()
SERVER_START_S = 300  # sqlite migrations and imports take a while on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server in its own process group, stopped (with its workers) after the module."""
    try:  # not a skip: CI installs the dev extra and must run this test
        import mlflow  # noqa: F401
    except ImportError:
        pytest.fail("mlflow is not installed; it is in the dev extra: pip install -e '.[dev]'")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no background job workers: not needed here
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {server.returncode}:\n{(root / 'server.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not healthy after {SERVER_START_S} s:\n{(root / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield uri, root
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_train_logs_params_epochs_reports_and_bundle(mlflow_server, synth_corpus, tiny_wav2vec2, tmp_path):
    from mlflow import MlflowClient

    uri, root = mlflow_server
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(synth_corpus),
            "--encoder",
            str(tiny_wav2vec2),
            "--out",
            str(run),
            "--test-speakers",
            "05-06",
            "--val-speakers",
            "04",
            "--epochs",
            "6",
            "--lr",
            "3e-3",
            "--hidden",
            "32",
            "--warn-only",
            "--tracking-uri",
            uri,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    tracking = json.loads((run / "tracking.json").read_text())
    assert tracking["uri"] == uri and tracking["experiment"] == "speech-emotion"

    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(tracking["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    params = logged.data.params
    assert (
        params["encoder"] == str(tiny_wav2vec2)
        and params["test_speakers"] == "05,06"
        and params["val_speakers"] == "04"
    )
    assert params["train.lr"] == "0.003" and params["train.hidden"] == "32" and params["train.max_epochs"] == "6"
    assert params["train.stop_on_alarm"] == "False" and params["data"] == str(synth_corpus.resolve())

    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("train_loss", "val_loss", "val_accuracy", "val_uar"):
        history = sorted(client.get_metric_history(tracking["run_id"], name), key=lambda m: m.step)
        assert [m.step for m in history] == [e["epoch"] for e in epochs], name
        assert [m.value for m in history] == pytest.approx([e[name] for e in epochs], abs=1e-12), name
    assert logged.data.metrics["test_accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert logged.data.metrics["best_epoch"] == results["best_epoch"]
    assert logged.data.metrics["best_val_uar"] == pytest.approx(results["val"]["uar"])

    top = {a.path for a in client.list_artifacts(tracking["run_id"])}
    assert {
        "labels.json",
        "split.json",
        "results.json",
        "metrics.jsonl",
        "config.json",
        "report.html",
        "report",
        "model",
    } <= top
    assert "report/confusion.png" in {a.path for a in client.list_artifacts(tracking["run_id"], "report")}
    assert {"model/model.safetensors", "model/model.json"} <= {
        a.path for a in client.list_artifacts(tracking["run_id"], "model")
    }
    downloaded = Path(client.download_artifacts(tracking["run_id"], "model/model.safetensors", str(tmp_path)))
    assert downloaded.read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    split = json.loads(Path(client.download_artifacts(tracking["run_id"], "split.json", str(tmp_path))).read_text())
    assert "leakage" in split
    assert any((root / "artifacts").rglob("confusion.png"))  # stored in the server's local artifact folder

    # A resumed run (here: marked failed at the end) goes on logging to the same MLflow run, no epoch twice.
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps(status | {"stage": "failed"}))
    resume(run)
    assert json.loads((run / "tracking.json").read_text())["run_id"] == tracking["run_id"]
    assert len(client.get_metric_history(tracking["run_id"], "val_uar")) == len(epochs)
    assert client.get_run(tracking["run_id"]).info.status == "FINISHED"


def test_tracking_uri_from_environment_and_a_clear_error_without_mlflow(monkeypatch, tmp_path):
    from speech_emotion.tracking import MlflowTracker, tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(None) == "http://127.0.0.1:5999" and tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None) is None
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'speech-emotion\[all\]'"):
        MlflowTracker("http://127.0.0.1:5999", tmp_path)
