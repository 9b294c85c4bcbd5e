"""What an older speech-emotion wrote still works: a killed run resumes, a bundle and an ONNX export load and predict.

The fixtures in tests/fixtures/v1 were made by the code before the run pipeline and the typed
configuration (see tests/fixtures/README.md); they have no format tag in config.json and no
``kind`` in model.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import synth_clip
from speech_emotion.inference.predictor import Predictor
from speech_emotion.model.metadata import BundleMeta
from speech_emotion.training.config import RunConfig
from speech_emotion.training.pipeline import resume

V1 = Path(__file__).parent / "fixtures" / "v1"
CLIPS = [synth_clip(f0, seconds=1.0, seed=seed) for f0, seed in ((130.0, 1), (260.0, 2), (520.0, 3))]


@pytest.fixture
def v1(tmp_path) -> Path:
    """A copy of the fixtures whose config.json files point at this test's corpus and encoder."""
    copy = tmp_path / "v1"
    shutil.copytree(V1, copy)
    return copy


def point_at(run: Path, corpus: Path, encoder: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config.update(data=str(corpus), encoder=str(encoder), encoder_path=str(encoder))
    (run / "config.json").write_text(json.dumps(config))


def probabilities(predictor: Predictor) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in predictor.classes] for p in predictor.predict(CLIPS)])


def expected(name: str, classes: list[str]) -> np.ndarray:
    rows = json.loads((V1 / "expected.json").read_text())[name]
    return np.array([[row[c] for c in classes] for row in rows])


def test_v1_config_reads_as_a_run_config():
    config = RunConfig.read(V1 / "run-killed")
    assert config.train.hidden == 32 and config.train.optimizer == "adamw" and config.test_speakers == ("05", "06")
    assert config.to_dict()["format"] == "speech-emotion/run-config" and config.to_dict()["version"] == 2


def test_v1_bundle_and_onnx_export_load_and_predict_the_same(v1):
    torch_meta, _ = BundleMeta.read(v1 / "run-finished")
    onnx_meta, _ = BundleMeta.read(v1 / "onnx-export")
    assert (torch_meta.kind, onnx_meta.kind) == ("torch", "onnx")  # told apart by their metadata
    predictor = Predictor.from_pretrained(v1 / "run-finished", encoder=str(v1 / "encoder"))
    assert predictor.backend_name == "torch"
    np.testing.assert_allclose(probabilities(predictor), expected("run-finished", predictor.classes), atol=1e-6)
    exported = Predictor.from_pretrained(v1 / "onnx-export")
    assert exported.backend_name == "onnx"
    np.testing.assert_allclose(probabilities(exported), expected("onnx-export", exported.classes), atol=1e-6)


def test_v1_killed_run_resumes_to_the_weights_of_the_uninterrupted_run(v1, synth_corpus):
    run = v1 / "run-killed"
    point_at(run, synth_corpus, v1 / "encoder")
    results = resume(run)
    assert results["resumed"] == 1 and [json.loads(line)["epoch"] for line in open(run / "metrics.jsonl")] == list(
        range(1, 9)
    )
    resumed, finished = (load_file(r / "model" / "model.safetensors") for r in (run, v1 / "run-finished"))
    assert resumed.keys() == finished.keys()
    for key in resumed:
        assert np.array_equal(resumed[key], finished[key]), f"{key} differs from the run that was never killed"
    assert results["test"] == json.loads((v1 / "run-finished" / "results.json").read_text())["test"]
