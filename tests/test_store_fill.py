"""`ser cache fill --engine local`: the store filled ahead, then `ser train` encodes nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from speech_emotion.cli.app import app
from speech_emotion.features.encoders import SSLEncoder
from speech_emotion.features.store import FeatureStore
from speech_emotion.features.store_fill import fill_store

runner = CliRunner()


def test_fill_then_fill_again_reads_everything(synth_corpus, tiny_wav2vec2, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    files = [*sorted(synth_corpus.rglob("*.wav"))[:6], bad]
    store = FeatureStore(tmp_path / "store")
    first = fill_store(files, encoder=str(tiny_wav2vec2), store=store, device="cpu")
    assert (first.n_files, first.n_encoded, first.n_cached, first.n_errors) == (7, 6, 0, 1)
    assert first.errors[0]["path"] == str(bad) and "cannot decode" in first.errors[0]["error"]
    again = fill_store(files, encoder=str(tiny_wav2vec2), store=store, device="auto")  # another device string
    assert (again.n_encoded, again.n_cached) == (0, 6)
    bf16 = fill_store(files[:2], encoder=str(tiny_wav2vec2), store=store, precision="bf16")
    assert bf16.n_encoded == 2 and bf16.preprocessing["precision"] == "bf16"  # bf16 features have keys of their own


def test_cli_fill_then_train_encodes_nothing(synth_corpus, tiny_wav2vec2, tmp_path, monkeypatch):
    filled = runner.invoke(app, ["cache", "fill", str(synth_corpus), "--encoder", str(tiny_wav2vec2), "--json"])
    assert filled.exit_code == 0, filled.output
    summary = json.loads(filled.stdout.splitlines()[-1])
    assert summary["engine"] == "local" and summary["n_encoded"] == summary["n_files"] == 72

    def no_encoding(self, signals, **options):
        raise AssertionError(f"encoded {len(signals)} clip(s) although the store was filled")

    monkeypatch.setattr(SSLEncoder, "features", no_encoding)
    trained = runner.invoke(
        app,
        ["train", str(synth_corpus), "--encoder", str(tiny_wav2vec2), "--out", str(tmp_path / "run")]
        + ["--test-speakers", "06", "--val-speakers", "05", "--epochs", "3", "--warn-only"],
    )
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "fp32"
    assert FeatureStore().info()["n_entries"] == 72


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "2"], "--workers apply to --engine ray only"),
        (["--device", "gpu"], "device: expected auto"),
        (["--precision", "fp16"], "fp16 is refused"),
    ],
)
def test_cli_fill_option_errors(synth_corpus, options, message):
    result = runner.invoke(app, ["cache", "fill", str(synth_corpus), "--encoder", "egemaps", *options])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
