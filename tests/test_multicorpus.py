"""Several corpora in one model, cross-corpus evaluation and the matrix, unlabelled domain adaptation.

Two small synthetic corpora whose "emotions" are pitch classes: corpus A named as RAVDESS, corpus
B a CSV table in its own folder, recorded "elsewhere" (louder, with a hum and another pitch range),
so that its features are shifted: a domain that adaptation can undo.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import synth_clip
from speech_emotion.cli.app import app
from speech_emotion.inference.evaluate import evaluate
from speech_emotion.inference.predictor import Predictor
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.cv import cross_validate
from speech_emotion.training.pipeline import train

runner = CliRunner()
FAST = TrainConfig(max_epochs=30, stop_on_alarm=False)
PITCH = {"neutral": 130.0, "happy": 260.0, "sad": 520.0}
SCHEMA = {"classes": ["neutral", "happy", "sad"], "merge": {"calm": "neutral"}, "others": "drop"}
"""The classes both synthetic corpora have (common-4 without angry, which neither has)."""


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    """Corpus B: 4 speakers × 3 classes (calm for neutral) × 3 takes, a CSV in folder ``synth-b``."""
    root = tmp_path_factory.mktemp("other") / "synth-b"
    rows = ["path,label,speaker"]
    for speaker in range(4):
        for label, f0 in PITCH.items():
            for take in range(3):
                seed = 7000 + speaker * 100 + int(f0) + take
                hum = 0.2 * np.sin(2 * np.pi * 50 * np.arange(16000) / 16000)
                signal = np.clip(1.6 * synth_clip(f0 * 1.1, seconds=1.0, seed=seed) + hum, -1, 1).astype(np.float32)
                name = f"clips/b{speaker}_{label}_{take}.wav"
                (root / "clips").mkdir(parents=True, exist_ok=True)
                sf.write(root / name, signal, 16000)
                rows.append(f"{name},{'calm' if label == 'neutral' else label},b{speaker}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def multi_run(synth_corpus, other_corpus, tiny_wav2vec2, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "run"
    results = train(
        [str(synth_corpus), str(other_corpus / "meta.csv")],
        encoder=str(tiny_wav2vec2),
        out=out,
        labels=SCHEMA,
        config=FAST,
    )
    return out, results


def test_one_model_on_two_corpora(multi_run):
    run, results = multi_run
    config = json.loads((run / "config.json").read_text())
    assert [source["adapter"] for source in config["data"]] == [None, None]
    assert config["train"]["balance"] == "auto" and config["train_resolved"]["balance"] == "corpus-class"
    assert config["train_resolved"]["domain_norm"] == "corpus" and results["protocol"].endswith("+ corpus-norm")
    labels = json.loads((run / "labels.json").read_text())
    assert labels["by_corpus"]["synth-b"]["counts_after"] == {"neutral": 12, "happy": 12, "sad": 12}  # calm → neutral
    # Validation speakers come from both corpora; every speaker is namespaced.
    assert {s.split(":")[0] for s in results["speakers"]["val"]} == {"ravdess", "synth-b"}
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["data"]["corpus"] == ["ravdess", "synth-b"]
    assert meta["adaptation"] == meta["adaptation"] | {"domain_norm": "corpus", "adapted": False}
    assert set(load_file(run / "model" / "model.safetensors")) >= {"domain/mean", "domain/scale"}
    assert results["val"]["uar"] > 0.8  # pitch classes are learnt across both corpora


def test_adapt_writes_a_bundle_for_the_new_domain(multi_run, other_corpus, tmp_path):
    run, _ = multi_run
    result = runner.invoke(
        app, ["adapt", str(run), str(other_corpus / "clips"), "--out", str(tmp_path / "adapted"), "--json"]
    )
    assert result.exit_code == 0, result.output
    adaptation = json.loads(result.stdout)
    assert adaptation["adapted"] is True and adaptation["n_clips"] == 36 and adaptation["domain"] == "clips"
    meta = json.loads((tmp_path / "adapted" / "model.json").read_text())
    assert (
        meta["adaptation"]["adapted"] is True
        and meta["encoder"] == json.loads((run / "model" / "model.json").read_text())["encoder"]
    )
    # The adapted model standardises the new domain's clips by their own statistics: its features' mean lands on
    # the head's reference mean of the standardised space.
    adapted, original = Predictor.from_pretrained(tmp_path / "adapted"), Predictor.from_pretrained(run)
    clip = synth_clip(260.0 * 1.1, seconds=1.0, seed=1)
    assert adapted(clip, sampling_rate=16000)["probabilities"] != original(clip, sampling_rate=16000)["probabilities"]
    refused = runner.invoke(app, ["adapt", str(run), str(other_corpus / "clips"), "--out", str(tmp_path / "adapted")])
    assert refused.exit_code == 1 and "exists and is not empty" in refused.stderr
    few = runner.invoke(
        app, ["adapt", str(run), str(other_corpus / "clips"), "--out", str(tmp_path / "x"), "--n-clips", "1"]
    )
    assert few.exit_code != 0


def test_evaluate_maps_classes_and_reports_adapted_apart(synth_corpus, other_corpus, tiny_wav2vec2, tmp_path):
    # A model of corpus A alone (its raw labels neutral, happy, sad), scored on corpus B through common-4.
    run = tmp_path / "a"
    train(synth_corpus, encoder=str(tiny_wav2vec2), out=run, val_speakers=["04"], config=FAST)
    result = evaluate(run, other_corpus / "meta.csv", labels="common-4", adapt=True, per_speaker=True)
    assert result["mapping"]["classes"] == ["happy", "neutral", "sad"]  # angry: not in the data, not predicted
    assert result["mapping"]["not_in_data"] == ["angry"]
    assert result["mapping"]["model_classes"] == {"neutral": "neutral", "happy": "happy", "sad": "sad"}
    assert result["n"] == 36 and result["adapted"]["n"] == 36 and result["adapted"]["n_clips"] == 36
    assert result["model_adaptation"] == {"adapted": False}
    assert result["adapted"]["uar"] >= result["uar"]  # the shifted domain: adaptation undoes the shift
    assert result["adapted"]["uar"] > 0.6
    assert result["adapted_per_speaker"]["n"] == 36 and result["adapted_per_speaker"]["uar"] > 0.6


def test_adapt_per_speaker(multi_run, other_corpus, tmp_path):
    run, _ = multi_run
    out = tmp_path / "speakers"
    args = ["adapt", str(run), str(other_corpus / "meta.csv"), "--per-speaker", "--n-clips", "6", "--out", str(out)]
    adaptation = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert adaptation["per_speaker"] is True and adaptation["n_clips"] == 24  # 6 drawn per speaker
    assert adaptation["speakers"] == [{"speaker": f"b{i}", "n_clips": 6} for i in range(4)]
    adapted = Predictor.from_pretrained(out)
    assert adapted.speakers == ["b0", "b1", "b2", "b3"]
    # A speaker's clips are standardised by that speaker's statistics: their mean lands on the head's reference.
    clips = sorted((other_corpus / "clips").glob("b2_*.wav"))
    features = np.stack(adapted.encoder.features([sf.read(c, dtype="float32")[0] for c in clips]))
    stats = adapted.backend.bundle.speakers["b2"]
    moved = stats.move(features, adapted.backend.bundle.reference)
    assert np.abs(moved.mean(axis=0) - adapted.backend.bundle.reference[0]).max() < 0.5 * stats.scale.max()
    assert np.allclose(adapted.predict_features(features, speaker="b2"), adapted.predict_features(moved), atol=1e-6)
    truth = [c.name.split("_")[1] for c in clips]
    assert np.mean([adapted(c, speaker="b2")["label"] == t for c, t in zip(clips, truth)]) > 0.6

    predicted = runner.invoke(app, ["predict", str(out), str(clips[0]), "--speaker", "b2", "--json"])
    assert predicted.exit_code == 0, predicted.output
    unknown = runner.invoke(app, ["predict", str(out), str(clips[0]), "--speaker", "zz"])
    assert unknown.exit_code == 1 and "adapted to 4 speaker(s) (b0, b1, b2, b3)" in " ".join(unknown.stderr.split())
    plain = runner.invoke(app, ["predict", str(run), str(clips[0]), "--speaker", "b2"])
    assert plain.exit_code == 1 and "adapted to no speakers" in " ".join(plain.stderr.split())

    from_names = tmp_path / "from-names"
    pattern = ["--speaker-pattern", "^(b[0-9])_"]
    named = runner.invoke(
        app, ["adapt", str(run), str(other_corpus / "clips"), "--per-speaker", *pattern, "--out", str(from_names)]
    )
    assert named.exit_code == 0, named.output
    assert Predictor.from_pretrained(from_names).speakers == ["b0", "b1", "b2", "b3"]
    unnamed = runner.invoke(
        app, ["adapt", str(run), str(other_corpus / "clips"), "--per-speaker", "--out", str(tmp_path / "x")]
    )
    assert unnamed.exit_code == 1 and "--per-speaker needs to know who speaks" in " ".join(unnamed.stderr.split())
    exported = runner.invoke(app, ["export", str(out), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    assert exported.exit_code == 1 and "export would drop" in " ".join(exported.stderr.split())
    to_hf = runner.invoke(app, ["export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")])
    message = " ".join(to_hf.stderr.split())
    assert to_hf.exit_code == 1 and "4 speaker(s) (ser adapt --per-speaker)" in message, to_hf.output
    assert "export would drop them" in message and not (tmp_path / "hf").exists()


def test_leave_one_corpus_out_matrix(synth_corpus, other_corpus, tiny_wav2vec2, tmp_path):
    summary = cross_validate(
        [str(synth_corpus), str(other_corpus / "meta.csv")],
        encoder=str(tiny_wav2vec2),
        leave_corpus_out=True,
        labels=SCHEMA,
        config=FAST,
        out=tmp_path / "cv",
    )
    cells = {(tuple(c["train"]), c["test"]): c for c in summary["matrix"]}
    assert set(cells) == {(("synth-b",), "ravdess"), (("ravdess",), "synth-b")}
    assert cells[(("ravdess",), "synth-b")]["n"] == 36 and cells[(("synth-b",), "ravdess")]["n"] == 72
    for cell in cells.values():
        assert cell["adapted"]["n_clips"] == cell["n"] and cell["adapted"]["n"] == cell["n"]
    assert summary["leave_one_out"]["adapted_mean"]["uar"] > 0.6
    assert (tmp_path / "cv" / "report.html").is_file() and (
        tmp_path / "cv" / "report" / "matrix.png"
    ).stat().st_size > 0
    with pytest.raises(ValueError, match="needs at least two corpora"):
        cross_validate(synth_corpus, encoder=str(tiny_wav2vec2), leave_corpus_out=True, config=FAST)


def test_augmented_training_clips_are_cached_under_their_own_keys(synth_corpus, tiny_wav2vec2, tmp_path):
    from speech_emotion.features.store import FeatureStore

    store = FeatureStore(tmp_path / "store")
    config = TrainConfig(max_epochs=5, stop_on_alarm=False, augment=("speed:1.1", "noise:10"))
    results = train(
        synth_corpus, encoder=str(tiny_wav2vec2), out=tmp_path / "run", val_speakers=["04"], config=config, store=store
    )
    n_clips, n_train = 72, results["n"]["train"]
    assert store.info()["n_entries"] == n_clips + 2 * n_train  # every clip once, each training clip altered twice
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["augment"] == ["speed:1.1", "noise:10"]
    # A second run with the same augmentations encodes nothing new.
    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=tmp_path / "again",
        val_speakers=["04"],
        config=config,
        store=store,
    )
    assert store.info()["n_entries"] == n_clips + 2 * n_train
    with pytest.raises(ValueError, match="--augment 'echo:1': expected speed:FACTOR"):
        TrainConfig(augment=("echo:1",))
