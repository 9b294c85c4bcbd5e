"""End-to-end training, evaluation and prediction on synthesized and real audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speech_emotion import Predictor
from speech_emotion.cli.app import app
from speech_emotion.inference.evaluate import evaluate
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import train

runner = CliRunner()
FAST = TrainConfig(
    max_epochs=60, patience=20, lr=3e-3, hidden=32, stop_on_alarm=False
)  # synthetic pitch classes are easy


def test_tiny_wav2vec2_learns_pitch_classes_on_unseen_speakers(synth_corpus, tiny_wav2vec2, tmp_path):
    results = train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=tmp_path / "run",
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=FAST,
    )
    assert results["classes"] == ["neutral", "happy", "sad"]
    assert results["speakers"]["test"] == ["05", "06"]
    # Three pitch classes an octave apart: a random-weight encoder still separates them.
    assert results["test"]["accuracy"] >= 0.8, results["test"]
    report = evaluate(tmp_path / "run", synth_corpus)
    assert report["contaminated"]["speakers"] == ["01", "02", "03", "04"]
    assert report["speakers"] == ["05", "06"] and report["n"] == 24
    assert report["accuracy"] == pytest.approx(results["test"]["accuracy"])


def test_whisper_tiny_cli_train_evaluate_predict(synth_corpus, whisper_tiny, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(synth_corpus),
            "--encoder",
            str(whisper_tiny),
            "--out",
            str(run),
            "--test-speakers",
            "05-06",
            "--val-speakers",
            "04",
            "--epochs",
            "60",
            "--lr",
            "3e-3",
            "--warn-only",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["test"]["accuracy"] >= 0.9
    for name in (
        "config.json",
        "labels.json",
        "split.json",
        "metrics.jsonl",
        "results.json",
        "model/model.json",
        "model/model.safetensors",
    ):
        assert (run / name).is_file(), name
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))

    # Refuses to overwrite the run without --force.
    again = runner.invoke(app, ["train", str(synth_corpus), "--encoder", str(whisper_tiny), "--out", str(run)])
    assert again.exit_code == 1 and "--force" in again.stderr

    evaluated = runner.invoke(app, ["evaluate", str(run), str(synth_corpus), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["n"] == 24 and report["contaminated"]["n"] == 48
    assert set(report) >= {"accuracy", "uar", "macro_f1", "n", "labels", "per_class", "confusion", "contaminated"}

    clips = sorted((synth_corpus / "Actor_06").glob("*.wav"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    predicted = runner.invoke(
        app, ["predict", str(run), str(clips[0]), str(bad), str(synth_corpus / "Actor_05"), "--json"]
    )
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [line["path"] for line in lines[:2]] == [str(clips[0]), str(bad)]
    assert "error" in lines[1] and len(lines) == 2 + 12
    assert lines[0]["label"] == "neutral"  # code 01
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5

    predictor = Predictor.from_pretrained(run)
    from_file = predictor(clips[0])
    import soundfile as sf
    import soxr

    signal, rate = sf.read(clips[0], dtype="float32")
    from_array = predictor(soxr.resample(signal, 16000, 48000), sampling_rate=48000)
    assert from_array["label"] == from_file["label"]
    assert from_file["probabilities"] == pytest.approx(lines[0]["probabilities"], abs=1e-5)


def test_same_seed_same_weights(synth_corpus, tiny_wav2vec2, tmp_path):
    from safetensors.numpy import load_file

    for name in ("a", "b"):
        train(synth_corpus, encoder=str(tiny_wav2vec2), out=tmp_path / name, config=FAST)
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_label_schema_change_never_meets_stale_labels(synth_corpus, tiny_wav2vec2, tmp_path):
    from speech_emotion.features.store import FeatureStore

    first = train(synth_corpus, encoder=str(tiny_wav2vec2), out=tmp_path / "three", config=FAST)
    n_entries = FeatureStore().info()["n_entries"]
    # Merge happy into neutral: same cached features, new labels from the new schema.
    schema = {"classes": ["neutral", "sad"], "merge": {"happy": "neutral"}}
    second = train(synth_corpus, encoder=str(tiny_wav2vec2), out=tmp_path / "two", labels=schema, config=FAST)
    assert FeatureStore().info()["n_entries"] == n_entries  # features reused: they hold no labels
    labels = json.loads((tmp_path / "two" / "labels.json").read_text())
    assert labels["encoded_values"] == [0, 1] and labels["counts_after"] == {"neutral": 48, "sad": 24}
    assert second["classes"] == ["neutral", "sad"] and first["classes"] == ["neutral", "happy", "sad"]


def test_encoder_change_makes_new_features(synth_corpus, tiny_wav2vec2, tmp_path):
    from transformers import Wav2Vec2Model

    from speech_emotion.features.store import FeatureStore

    train(synth_corpus, encoder=str(tiny_wav2vec2), out=tmp_path / "a", config=FAST)
    before = FeatureStore().info()["n_entries"]
    changed = tmp_path / "changed-encoder"
    model = Wav2Vec2Model.from_pretrained(tiny_wav2vec2)
    with __import__("torch").no_grad():
        model.encoder.layers[0].attention.q_proj.weight.mul_(1.5)
    model.save_pretrained(changed)
    for name in ("preprocessor_config.json",):
        (changed / name).write_text((tiny_wav2vec2 / name).read_text())
    train(synth_corpus, encoder=str(changed), out=tmp_path / "b", config=FAST)
    assert FeatureStore().info()["n_entries"] == 2 * before
    # And a bundle refuses to run on an encoder whose weights changed.
    from speech_emotion.errors import BundleError

    with pytest.raises(BundleError, match="fingerprint"):
        Predictor.from_pretrained(tmp_path / "a", encoder=str(changed))
    Predictor.from_pretrained(tmp_path / "a", encoder=str(changed), allow_encoder_mismatch=True)


def test_evaluate_skip_unknown_and_48k(synth_corpus, tiny_wav2vec2, tmp_path):
    import soundfile as sf
    import soxr

    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=tmp_path / "run",
        labels={"classes": ["neutral", "happy"], "drop": ["sad"]},
        test_speakers=["06"],
        val_speakers=["05"],
        config=FAST,
    )
    # Actor 06 re-recorded at 48 kHz: resampled on load. 'sad' is dropped by the model's schema, as in
    # training; 'angry' (code 05) is a label the model never had.
    held = tmp_path / "held" / "Actor_06"
    held.mkdir(parents=True)
    for clip in sorted((synth_corpus / "Actor_06").glob("*.wav")):
        signal, rate = sf.read(clip, dtype="float32")
        sf.write(held / clip.name, soxr.resample(signal, rate, 48000), 48000)
        if "-04-" in clip.name:
            sf.write(held / clip.name.replace("03-01-04", "03-01-05"), soxr.resample(signal, rate, 48000), 48000)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "held"), "--json"])
    assert result.exit_code == 1 and "'angry'" in result.stderr
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "held"), "--skip-unknown", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["skipped_labels"] == {"angry": 4} and report["n"] == 8 and report["contaminated"]["n"] == 0
    assert report["accuracy"] >= 0.75


def test_lbfgs_linear_head_is_the_logistic_regression_probe():
    # The default head (linear over concatenated layers, L-BFGS, L2 penalty λ) minimises the same
    # objective as scikit-learn's class-balanced multinomial LogisticRegression with C = 1/(λ n).
    from sklearn.linear_model import LogisticRegression

    from speech_emotion.model.head import predict_proba
    from speech_emotion.training.loop import fit_head

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [40, 80, 60])  # imbalanced: class weights matter
    X = rng.normal(size=(len(y), 2, 5)) + 0.8 * np.eye(5)[y][:, None, :]
    X = ((X - X.mean(0)) / X.std(0, ddof=1)).astype(np.float32)  # already standard: the head's scaler is the identity
    l2 = 0.05
    config = TrainConfig(weight_decay=l2, max_epochs=200)
    assert config.optimizer == "auto" and config.resolved().optimizer == "lbfgs"  # asked, then resolved
    fit = fit_head(X, y, None, None, n_classes=3, config=config)
    reference = LogisticRegression(C=1 / (l2 * len(y)), class_weight="balanced", tol=1e-10, max_iter=10_000).fit(
        X.reshape(len(y), -1), y
    )
    np.testing.assert_allclose(predict_proba(fit.head, X), reference.predict_proba(X.reshape(len(y), -1)), atol=2e-4)


def test_mixup_softens_an_overconfident_probe_and_still_learns():
    from speech_emotion.model.head import predict_proba
    from speech_emotion.training.loop import fit_head

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    X = (rng.normal(size=(len(y), 1, 4)) + 3.0 * np.eye(4)[y][:, None, :]).astype(np.float32)  # separable
    held_y = np.repeat([0, 1, 2], 20)
    held_X = (rng.normal(size=(len(held_y), 1, 4)) + 3.0 * np.eye(4)[held_y][:, None, :]).astype(np.float32)

    def fit(mixup: float, seed: int = 0):
        return fit_head(
            X, y, None, None, n_classes=3, config=TrainConfig(weight_decay=1e-4, max_epochs=50, mixup=mixup, seed=seed)
        ).head

    plain, mixed = fit(0.0), fit(1.0)
    # Without mixup a weak L2 penalty lets separable classes drive the margins up; mixed
    # examples ask for intermediate probabilities between classes, which keeps them moderate.
    assert predict_proba(plain, X).max(axis=1).mean() > 0.99
    assert predict_proba(mixed, X).max(axis=1).mean() < 0.97
    assert (predict_proba(mixed, held_X).argmax(axis=1) == held_y).mean() >= 0.9
    same = fit(1.0)
    assert all(torch.equal(a, b) for a, b in zip(mixed.state_dict().values(), same.state_dict().values()))
    other = fit(1.0, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(mixed.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mixup": -0.5}, "mixup: expected"),
        ({"mixup": float("inf")}, "mixup: expected"),
        ({"mixup": 0.4, "finetune": 1}, "drop --mixup or --finetune"),
    ],
)
def test_mixup_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_default_recipe_learns_pitch_classes(synth_corpus, tiny_wav2vec2, tmp_path):
    results = train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=tmp_path / "run",
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=TrainConfig(stop_on_alarm=False),
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["optimizer"] == "auto" and config["train_resolved"]["optimizer"] == "lbfgs"
    assert results["test"]["accuracy"] >= 0.8, results["test"]
