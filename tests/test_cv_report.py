"""`ser cv`, speaker-norm, calibration and run reports."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from speech_emotion import Predictor
from speech_emotion.cli.app import app
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import train

runner = CliRunner()
FAST = ["--epochs", "40", "--lr", "3e-3", "--hidden", "32", "--warn-only"]


def test_cv_tests_every_speaker_once(synth_corpus, tiny_wav2vec2, tmp_path):
    result = runner.invoke(
        app,
        [
            "cv",
            str(synth_corpus),
            "--folds",
            "3",
            "--encoder",
            str(tiny_wav2vec2),
            "--out",
            str(tmp_path / "cv"),
            "--json",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    tested = [s for fold in summary["folds"] for s in fold["test_speakers"]]
    assert sorted(tested) == ["01", "02", "03", "04", "05", "06"]
    for fold in summary["folds"]:
        assert not set(fold["test_speakers"]) & set(fold["val_speakers"])
        assert set(fold) >= {"test_speakers", "val_speakers", "accuracy", "uar", "macro_f1"}
    assert set(summary["mean"]) == set(summary["std"]) == {"accuracy", "uar", "macro_f1"}
    assert summary["mean"]["accuracy"] >= 0.8
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["mean"] == summary["mean"]


def test_speaker_norm_is_recorded_and_refuses_single_clips(synth_corpus, tiny_wav2vec2, tmp_path):
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
            "06",
            "--val-speakers",
            "05",
            "--speaker-norm",
            "--json",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "speaker-norm" in json.loads(result.stdout)["protocol"]
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["speaker_norm"] is True
    evaluated = runner.invoke(app, ["evaluate", str(run), str(synth_corpus / "Actor_06"), "--speaker-norm", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["speaker_norm"] is True and report["n"] == 12 and report["accuracy"] >= 0.75
    with pytest.raises(ValueError, match="per speaker"):
        Predictor.from_pretrained(run)(next((synth_corpus / "Actor_06").glob("*.wav")))


def test_report_and_calibration(synth_corpus, tiny_wav2vec2, tmp_path):
    run = tmp_path / "run"
    results = train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=run,
        test_speakers=["06"],
        val_speakers=["05"],
        config=TrainConfig(max_epochs=40, lr=3e-3, hidden=32, stop_on_alarm=False),
    )
    calibration = results["calibration"]
    assert calibration["temperature"] > 0 and {
        "ece_val_before",
        "ece_val_after",
        "ece_test_before",
        "ece_test_after",
    } <= set(calibration)
    assert calibration["ece_val_after"] <= calibration["ece_val_before"] + 1e-6  # fitted to minimise NLL on val
    page = (run / "report.html").read_text()
    for section in (
        "Labels",
        "Split and leakage",
        "Training curves",
        "Confusion",
        "Per class",
        "per speaker",
        "Calibration",
        "Sanity monitors",
    ):
        assert section in page, section
    for png in ("curves.png", "confusion.png", "reliability.png"):
        assert (run / "report" / png).stat().st_size > 1000
    (run / "report.html").unlink()
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    assert (run / "report.html").is_file()
    # Predictions use the calibrated temperature.
    predictor = Predictor.from_pretrained(run)
    assert predictor.meta.temperature == pytest.approx(calibration["temperature"])
