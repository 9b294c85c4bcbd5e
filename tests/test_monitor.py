"""`ser monitor`: plain lines off a terminal (checked against metrics.jsonl), live following, the Rich view."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from speech_emotion.cli.app import app
from speech_emotion.features.store import FeatureStore
from speech_emotion.monitor import read_run, render, watch
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import resume, train

runner = CliRunner()
SER = [sys.executable, "-c", "import sys; sys.argv[0] = 'ser'; from speech_emotion.cli.app import main; main()"]
PAUSED_RUN = [sys.executable, str(Path(__file__).parent / "paused_run.py")]
EPOCH_LINE = re.compile(r"^epoch (\d+) (.*)$")


def epoch_lines(output: str) -> dict[int, dict[str, float]]:
    """``epoch N name value name value …`` lines → {N: {name: value}} (alarms left out)."""
    epochs = {}
    for line in output.splitlines():
        match = EPOCH_LINE.match(line)
        if match:
            assert int(match.group(1)) not in epochs, f"epoch {match.group(1)} printed twice"
            words = match.group(2).split(" alarms ")[0].split()
            epochs[int(match.group(1))] = {name: float(value) for name, value in zip(words[::2], words[1::2])}
    return epochs


def assert_matches_metrics(output: str, run: Path) -> None:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    printed = epoch_lines(output)
    assert sorted(printed) == [r["epoch"] for r in records]
    for record in records:
        for name in ("train_loss", "val_loss", "val_accuracy", "val_uar"):
            assert printed[record["epoch"]][name] == pytest.approx(record[name], abs=5e-5), (record["epoch"], name)


@pytest.fixture(scope="module")
def finished_run(synth_corpus, tiny_wav2vec2, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("monitor")
    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=root / "run",
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=TrainConfig(max_epochs=8, lr=3e-3, hidden=32, stop_on_alarm=False),
        store=FeatureStore(root / "cache"),
    )
    return root / "run"


def test_no_follow_prints_every_epoch_of_metrics_jsonl(finished_run):
    result = runner.invoke(app, ["monitor", str(finished_run), "--no-follow"])
    assert result.exit_code == 0, result.output
    assert_matches_metrics(result.stdout, finished_run)
    lines = result.stdout.splitlines()
    assert lines[0] == "classes: neutral 24, happy 24, sad 24"
    results = json.loads((finished_run / "results.json").read_text())
    assert lines[-1].startswith(f"finished: best epoch {results['best_epoch']} of {results['epochs_run']}")
    assert f"test accuracy {results['test']['accuracy']:.4f}" in lines[-1]
    for alarm in results["alarms"]:
        assert any(line.startswith(f"alarm {alarm['check']} (") and alarm["message"] in line for line in lines)
    # Following a finished run prints the same and ends at once.
    followed = runner.invoke(app, ["monitor", str(finished_run), "--interval", "0.1"])
    assert followed.exit_code == 0 and followed.stdout == result.stdout


def test_rich_view_shows_stage_epochs_classes_alarms_results(finished_run):
    console = Console(record=True, width=140, force_terminal=False)
    console.print(render(read_run(finished_run)))
    text = console.export_text()
    for expected in (
        "finished",
        "Epochs (8",
        "train loss",
        "val uar",
        "Class distribution",
        "neutral",
        "Results (best epoch",
    ):
        assert expected in text, expected
    last = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{last['train_loss']:.4f}" in text


def test_sanity_alarms_while_running_and_at_the_end(tmp_path):
    from speech_emotion.monitor import PlainLines, RunStatus

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"max_epochs": 10}}))
    status = RunStatus(run)  # this process plays the training run: alive
    status.stage("training", total=10, epoch=1, max_epochs=10)
    record = {
        "epoch": 1,
        "train_loss": 0.0004,
        "val_loss": 0.01,
        "val_accuracy": 1.0,
        "val_uar": 1.0,
        "alarms": ["perfect_first_epoch", "zero_loss"],
    }
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    result = runner.invoke(app, ["monitor", str(run), "--no-follow"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "stage training epoch 1/10",
        "epoch 1 train_loss 0.0004 val_loss 0.0100 val_accuracy 1.0000 val_uar 1.0000 alarms "
        "perfect_first_epoch,zero_loss",
        result.stdout.splitlines()[-1],
    ]
    assert result.stdout.splitlines()[-1].startswith("training epoch 1/10 (updated ")
    console = Console(record=True, width=140)
    console.print(render(read_run(run)))
    text = console.export_text()
    assert "training epoch 1/10" in text and "Sanity alarms" in text and "zero_loss (epoch 1)" in text

    message = "validation accuracy 100.0% after one epoch"
    (run / "results.json").write_text(
        json.dumps(
            {
                "best_epoch": 1,
                "epochs_run": 1,
                "alarms": [{"check": "perfect_first_epoch", "severity": "error", "message": message, "epoch": 1}],
            }
        )
    )
    status.fail("SanityError: perfect_first_epoch")
    lines = PlainLines().update(read_run(run))
    assert lines[-2:] == [
        f"alarm perfect_first_epoch (error epoch 1): {message}",
        "failed at training: SanityError: perfect_first_epoch",
    ]


def test_not_a_run(tmp_path):
    result = runner.invoke(app, ["monitor", str(tmp_path), "--no-follow"])
    assert result.exit_code == 1 and "no run here" in result.stderr
    with pytest.raises(FileNotFoundError, match="no run files"):
        list(watch(tmp_path / "never", interval=0.05, wait=0.2))


def test_follows_a_live_run_until_it_dies_then_the_resumed_run_to_the_end(synth_corpus, tiny_wav2vec2, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "paused"
    spec = {
        "pause": "training:3",
        "marker": str(marker),
        "train": {
            "data": str(synth_corpus),
            "encoder": str(tiny_wav2vec2),
            "out": str(run),
            "test_speakers": ["05", "06"],
            "val_speakers": ["04"],
            "config": {"max_epochs": 6, "lr": 3e-3, "hidden": 32, "stop_on_alarm": False},
        },
    }
    training = subprocess.Popen(
        PAUSED_RUN + [json.dumps(spec)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # Non-interactive, as `ser remote monitor` runs it over ssh: stdout is a pipe, so plain lines.
    monitor = subprocess.Popen(
        SER + ["monitor", str(run), "--follow", "--interval", "0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in monitor.stdout:  # one at a time, as the monitor prints them
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() or not any(line.startswith("epoch 3 ") for line in lines):
            assert training.poll() is None, training.stderr.read().decode()[-3000:]
            assert monitor.poll() is None, monitor.stderr.read()
            assert time.monotonic() < deadline, (
                f"the run did not reach epoch 3 with the monitor following; printed: {lines}"
            )
            time.sleep(0.05)
        training.send_signal(signal.SIGKILL)
        training.wait(timeout=30)
        monitor.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        for process in (training, monitor):
            if process.poll() is None:
                process.kill()
    out = "".join(lines)
    assert monitor.returncode == 1, monitor.stderr.read()
    assert sorted(epoch_lines(out)) == [1, 2, 3]
    assert_matches_metrics(out, run)
    assert any(line.startswith("stage training") for line in out.splitlines())
    assert out.splitlines()[-1].startswith("died: process ") and f"ser train --resume {run}" in out

    resume(run)  # features come from the store the killed run filled
    result = runner.invoke(app, ["monitor", str(run), "--no-follow"])
    assert result.exit_code == 0, result.output
    assert sorted(epoch_lines(result.stdout)) == list(range(1, 7))
    assert_matches_metrics(result.stdout, run)
    assert result.stdout.splitlines()[-1].startswith("finished: best epoch")
