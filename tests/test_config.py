"""Typed configuration: what was asked is kept, what was resolved is recorded, unknown keys are named."""

from __future__ import annotations

import dataclasses
import json

import pytest

from speech_emotion.errors import BundleError
from speech_emotion.model.metadata import BUNDLE_FORMAT, BundleMeta, EncoderRef
from speech_emotion.training.config import RUN_CONFIG_VERSION, RunConfig, TrainConfig


def test_train_config_keeps_what_was_asked_and_resolves_a_copy():
    asked = TrainConfig(hf_compatible=True, finetune=0)
    resolved = asked.resolved()
    assert (asked.optimizer, asked.mixing) == ("auto", "concat")  # frozen and unchanged
    assert (resolved.optimizer, resolved.mixing) == ("lbfgs", "softmax")
    assert resolved.resolved() == resolved
    tuned = TrainConfig(finetune=2, lr=2e-3)
    assert tuned.encoder_lr is None and tuned.resolved().encoder_lr == pytest.approx(2e-4)
    assert tuned.resolved().optimizer == "adamw"
    with pytest.raises(dataclasses.FrozenInstanceError):
        asked.optimizer = "adamw"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"optimizer": "sgd"}, "optimizer: expected one of lbfgs, adamw or auto, got 'sgd'"),
        ({"mixing": "sum"}, "mixing: expected one of softmax, concat, got 'sum'"),
        ({"finetune": 1, "optimizer": "lbfgs"}, "finetune needs mini-batch steps"),
        ({"mixup": float("inf")}, "mixup: expected"),
    ],
)
def test_train_config_refuses_bad_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_run_config_round_trips_and_records_asked_and_resolved(tmp_path):
    labels = tmp_path / "schema.yaml"
    labels.write_text("classes: [neutral, happy]\n")
    config = RunConfig.create(
        tmp_path / "corpus",
        encoder="egemaps",
        labels=labels,
        train=TrainConfig(seed=4),
        test_speakers=["05", "06"],
        tracking_uri=None,
    )
    spec = config.to_dict()
    assert spec["format"] == "speech-emotion/run-config" and spec["version"] == RUN_CONFIG_VERSION
    assert spec["labels_file"] == str(labels.resolve()) and config.labels_source == str(labels.resolve())
    assert spec["train"]["optimizer"] == "auto" and spec["train_resolved"]["optimizer"] == "lbfgs"
    assert spec["encoder"] == "egemaps" and spec["encoder_path"] is None
    assert RunConfig.from_dict(json.loads(json.dumps(spec))) == config


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update(epochs=3), r"config.json: unknown key 'epochs'"),
        (lambda s: s["train"].update(learning_rate=1.0), r"config.json: train: unknown key 'learning_rate'"),
        (lambda s: s.update(version=RUN_CONFIG_VERSION + 1), "newer than this speech-emotion reads"),
        (lambda s: s.update(format="speech-emotion/bundle"), "not a run config"),
        (lambda s: s.pop("data"), "no 'data'"),
    ],
)
def test_run_config_refuses_what_it_cannot_read(edit, match):
    spec = RunConfig.create("corpus", encoder="egemaps").to_dict()
    edit(spec)
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict(spec)


def test_a_missing_config_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder made by `ser train`"):
        RunConfig.read(tmp_path)


def meta_spec(**changes) -> dict:
    spec = {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "classes": ["neutral", "happy"],
        "schema": {"classes": ["neutral", "happy"]},
        "encoder": {"reference": "egemaps", "family": "egemaps"},
    }
    return spec | changes


def test_bundle_meta_kind_comes_from_the_metadata():
    assert BundleMeta.from_dict(meta_spec()).kind == "torch"
    onnx = {"format": "speech-emotion/onnx", "version": 1, "files": {}}
    assert BundleMeta.from_dict(meta_spec(onnx=onnx)).kind == "onnx"  # written before `kind` existed
    assert BundleMeta.from_dict(meta_spec(kind="onnx", onnx=onnx)).to_dict()["kind"] == "onnx"
    with pytest.raises(BundleError, match="kind 'tflite' is not one of torch, onnx"):
        BundleMeta.from_dict(meta_spec(kind="tflite"))
    with pytest.raises(BundleError, match="'onnx' section missing"):
        BundleMeta.from_dict(meta_spec(kind="onnx"))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (meta_spec(weights="x"), "unknown key 'weights'"),
        (meta_spec(encoder={"reference": "egemaps", "sha": "x"}), "encoder: unknown key 'sha'"),
        (meta_spec(encoder={"path": "/somewhere"}), "expected an object with the encoder's 'reference'"),
        (meta_spec(schema={"classes": ["happy", "neutral"]}), "disagree with the schema"),
        (meta_spec(head={"n_layers": 1, "dim": 2, "n_classes": 3}), "Cannot assign 2 labels to a head with 3 outputs"),
    ],
)
def test_bundle_meta_refuses_what_does_not_fit(spec, match):
    with pytest.raises(BundleError, match=match):
        BundleMeta.from_dict(spec)


def test_encoder_ref_keeps_a_bundled_encoder_inside_the_bundle(tmp_path):
    ref = EncoderRef(reference="openai/whisper-base", bundled="encoder")
    assert ref.bundled_folder(tmp_path) == tmp_path / "encoder"
    assert EncoderRef.from_dict(ref.to_dict()) == ref and "base_fingerprint" not in ref.to_dict()
    for outside in ("../elsewhere", "/etc"):
        with pytest.raises(BundleError, match="must be a folder inside the bundle"):
            EncoderRef(reference="x", bundled=outside).bundled_folder(tmp_path)
