"""Bundles refuse to load when they disagree with themselves, and never hold pickles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speech_emotion.errors import BundleError
from speech_emotion.model.bundle import load_bundle, save_bundle
from speech_emotion.model.head import EmotionHead, HeadConfig
from speech_emotion.model.metadata import BundleMeta, EncoderRef

CLASSES = ["neutral", "happy", "sad"]


@pytest.fixture
def bundle(tmp_path):
    head = EmotionHead(HeadConfig(n_layers=2, dim=4, n_classes=3, hidden=8))
    meta = BundleMeta(classes=tuple(CLASSES), schema={"classes": CLASSES}, encoder=EncoderRef(reference="egemaps"))
    save_bundle(tmp_path, head, meta)
    return tmp_path


def edit(folder, change):
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))


def test_roundtrip(bundle):
    loaded = load_bundle(bundle)
    assert loaded.classes == CLASSES and loaded.head.n_outputs == 3
    assert not list(bundle.glob("*.pt")) and not list(bundle.glob("*.pkl"))


def test_refuses_foreign_format(bundle):
    edit(bundle, lambda m: m.update(format="something-else"))
    with pytest.raises(BundleError, match="not a speech-emotion bundle"):
        load_bundle(bundle)


def test_refuses_newer_version(bundle):
    edit(bundle, lambda m: m.update(version=99))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(bundle)


def test_refuses_classes_that_disagree_with_head(bundle):
    def drop_class(meta):
        meta["classes"] = CLASSES[:2]
        meta["schema"] = {"classes": CLASSES[:2]}

    edit(bundle, drop_class)
    with pytest.raises(BundleError, match="Cannot assign 2 labels to a head with 3 outputs"):
        load_bundle(bundle)


def test_refuses_classes_that_disagree_with_schema(bundle):
    edit(bundle, lambda m: m.update(classes=["neutral", "sad", "happy"]))
    with pytest.raises(BundleError, match="disagree with the schema"):
        load_bundle(bundle)


def test_refuses_weights_of_another_shape(bundle):
    edit(bundle, lambda m: m["head"].update(dim=5))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(bundle)


def test_refuses_missing_weights(bundle):
    (bundle / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle)


def test_refuses_a_folder_without_bundle(tmp_path):
    with pytest.raises(BundleError, match="no model.json"):
        load_bundle(tmp_path)


def _bundle_naming(tmp_path, reference: str, encoder) -> Path:
    head = EmotionHead(HeadConfig(n_layers=encoder.n_layers, dim=encoder.dim, n_classes=3, hidden=0))
    meta = BundleMeta(
        classes=tuple(CLASSES),
        schema={"classes": CLASSES},
        encoder=EncoderRef.of(encoder, reference=reference, path=None),
        preprocessing=encoder.preprocessing,
    )
    save_bundle(tmp_path / "model", head, meta)
    return tmp_path / "model"


def test_loading_a_bundle_never_downloads_its_encoder(tmp_path, tiny_wav2vec2, monkeypatch):
    import shutil
    import socket

    import huggingface_hub.constants

    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.inference.predictor import Predictor

    encoder = load_encoder(str(tiny_wav2vec2))
    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address) or 1 / 0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online as far as the libraries know: only our code keeps it local
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    bundle = _bundle_naming(tmp_path, "some-org/tiny-wav2vec2", encoder)
    with pytest.raises(BundleError, match="loading a model never downloads its encoder"):
        Predictor.from_pretrained(bundle)
    assert attempts == []  # not even tried

    # Once the user has it in the cache, the same bundle loads from there, still without the network.
    snapshot = tmp_path / "hf-cache" / "models--some-org--tiny-wav2vec2" / "snapshots" / "0123abc"
    shutil.copytree(tiny_wav2vec2, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    predictor = Predictor.from_pretrained(bundle)
    assert (
        predictor.encoder.reference == "some-org/tiny-wav2vec2" and predictor.encoder.fingerprint == encoder.fingerprint
    )
    assert attempts == []
