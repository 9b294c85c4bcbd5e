"""Kill/resume: a run SIGKILLed during encoding or training ends with bit-identical weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from speech_emotion.cli.app import app
from speech_emotion.features.store import FeatureStore
from speech_emotion.monitor import read_run, read_status
from speech_emotion.training.checkpoint import load_checkpoint, save_checkpoint
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.loop import fit_head
from speech_emotion.training.pipeline import resume, train

runner = CliRunner()
SER = [sys.executable, "-c", "import sys; sys.argv[0] = 'ser'; from speech_emotion.cli.app import main; main()"]
PAUSED_RUN = [sys.executable, str(Path(__file__).parent / "paused_run.py")]
EPOCHS = 12
CONFIG = TrainConfig(
    max_epochs=EPOCHS, patience=EPOCHS, lr=3e-3, hidden=32, stop_on_alarm=False
)  # dropout 0.2: the global RNG matters


@pytest.fixture(scope="module")
def reference(synth_corpus, tiny_wav2vec2, tmp_path_factory) -> Path:
    """An uninterrupted run (in process, its own cold feature store) with the settings of the killed runs."""
    root = tmp_path_factory.mktemp("reference")
    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=root / "run",
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=CONFIG,
        store=FeatureStore(root / "cache"),
    )
    return root / "run"


def start_paused(spec: dict, where: str, marker: Path, log: Path) -> subprocess.Popen:
    """A run (tests/paused_run.py) that stops at ``where`` (``STAGE:N``) and writes ``marker`` there."""
    spec = spec | {"pause": where, "marker": str(marker)}
    return subprocess.Popen(
        PAUSED_RUN + [json.dumps(spec)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb")
    )


def kill_when_paused(process: subprocess.Popen, run: Path, marker: Path, log: Path, timeout: float = 180.0) -> dict:
    """Wait for the run to stop at its pause point, then SIGKILL it (no chance to clean up); its last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before pausing:\n{log.read_text()[-3000:]}")
        if marker.exists():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            assert process.returncode == -signal.SIGKILL
            marker.unlink()
            return read_status(run)
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"the run did not pause within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def run_to_end(args: list[str], log: Path) -> None:
    done = subprocess.run(
        SER + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), timeout=300
    )
    assert done.returncode == 0, log.read_text()[-3000:]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].dtype == wb[key].dtype and np.array_equal(wa[key], wb[key]), f"{key} differs"


def test_sigkill_during_encoding_then_training_resumes_bit_identical(synth_corpus, tiny_wav2vec2, reference, tmp_path):
    run, log, marker = tmp_path / "run", tmp_path / "train.log", tmp_path / "paused"
    config = {"max_epochs": EPOCHS, "patience": EPOCHS, "lr": 3e-3, "hidden": 32, "stop_on_alarm": False}
    assert TrainConfig(**config) == CONFIG
    spec = {
        "train": {
            "data": str(synth_corpus),
            "encoder": str(tiny_wav2vec2),
            "out": str(run),
            "test_speakers": ["05", "06"],
            "val_speakers": ["04"],
            "config": config,
        }
    }

    # 1. Killed while encoding: after the first chunk of 64 clips went to the feature store,
    #    before the last 8 did (the step hook is called between encoding a chunk and storing it).
    status = kill_when_paused(start_paused(spec, "encoding:65", marker, log), run, marker, log)
    assert status["stage"] == "encoding" and status["progress"]["total"] == 72
    assert FeatureStore().info()["n_entries"] == 64
    assert read_run(run).state == "died"
    assert not (run / "metrics.jsonl").exists() and not (run / "model").exists()

    # 2. Resumed with no other argument; killed again during training, right after epoch 5's
    #    metrics line and before epoch 5's checkpoint.
    status = kill_when_paused(start_paused({"resume": str(run)}, "training:5", marker, log), run, marker, log)
    assert status["stage"] == "training" and status["epoch"] == 5 and status["resumed"] == 1
    assert FeatureStore().info()["n_entries"] == 72
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0004.json", "epoch-0004.safetensors"]

    # 3. Resumed again: continues after epoch 4; epoch 5 is recorded once.
    run_to_end(["train", "--resume", str(run)], log)
    assert_same_weights(run, reference)
    assert (run / "metrics.jsonl").read_text() == (
        reference / "metrics.jsonl"
    ).read_text()  # same epochs, same numbers, no duplicates
    final = read_status(run)
    assert final["stage"] == "finished" and final["resumed"] == 2
    results, expected = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert (
        results["test"] == expected["test"]
        and results["best_epoch"] == expected["best_epoch"]
        and results["resumed"] == 2
    )

    # A finished run is not resumed again; --resume takes no other settings.
    with pytest.raises(FileExistsError, match="finished already"):
        resume(run)
    refused = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert refused.exit_code == 1 and "drop --epochs" in refused.stderr


def test_resume_refuses_a_checkpoint_from_other_settings(synth_corpus, tiny_wav2vec2, tmp_path):
    run = tmp_path / "run"
    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=run,
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=TrainConfig(max_epochs=3, lr=3e-3, hidden=32, stop_on_alarm=False),
    )
    config = json.loads((run / "config.json").read_text())
    assert (
        config["train"]["max_epochs"] == 3
        and config["test_speakers"] == ["05", "06"]
        and Path(config["encoder_path"]).is_dir()
    )
    status = json.loads((run / "status.json").read_text())
    weights, metrics = (run / "model" / "model.safetensors").read_bytes(), (run / "metrics.jsonl").read_text()
    # Killed after its last checkpoint (while writing the bundle or the report): resuming only finishes it.
    (run / "status.json").write_text(json.dumps(status | {"stage": "failed"}))
    (run / "results.json").unlink()
    resume(run)
    assert (run / "model" / "model.safetensors").read_bytes() == weights and (
        run / "metrics.jsonl"
    ).read_text() == metrics
    assert json.loads((run / "results.json").read_text())["resumed"] == 1

    (run / "status.json").write_text(json.dumps(status | {"stage": "failed"}))
    config["train"]["lr"] = 1e-2
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="another train .*delete .*checkpoints"):
        resume(run)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(
            max_epochs=8, patience=3, hidden=16, lr=1e-2, batch_size=16
        ),  # AdamW: moments and shuffling restored
        TrainConfig(
            max_epochs=8, patience=8, hidden=0, weight_decay=0.01
        ),  # L-BFGS: each epoch starts from the weights alone
    ],
    ids=["adamw", "lbfgs"],
)
def test_fit_head_resumed_from_a_saved_checkpoint_matches_uninterrupted(tmp_path, config):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    X = rng.normal(size=(90, 3, 8)).astype(np.float32)
    X[:, :, 0] += y[:, None]
    args = (X[::2], y[::2], X[1::2], y[1::2])

    saved = []
    full = fit_head(
        *args,
        n_classes=3,
        config=config,
        on_checkpoint=lambda state: (
            saved.append(state.epoch) or (save_checkpoint(tmp_path, state, meta={}) if state.epoch == 2 else None)
        ),
    )
    state, _ = load_checkpoint(tmp_path)
    assert state.epoch == 2 and len(full.history) > 2 and saved == list(range(1, len(full.history) + 1))
    torch.manual_seed(123)  # the resumed fit restores every RNG it uses
    resumed = fit_head(*args, n_classes=3, config=config, resume=state)
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch
    for key, value in full.head.state_dict().items():
        assert torch.equal(value, resumed.head.state_dict()[key]), key
