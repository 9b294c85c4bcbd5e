"""`--engine ray` on a real local Ray cluster: the local engine's rows, a killed actor, a filled store.

One small cluster (2 CPUs) for the module; the model is a tiny randomly initialised wav2vec 2.0
with a head trained in seconds on the synthetic corpus, and there are three pipelines in all
(each starts its actors afresh), so that the module stays CI-sized.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speech_emotion.cli.app import app
from speech_emotion.features.encoders import SSLEncoder
from speech_emotion.features.store import FeatureStore
from speech_emotion.inference.predictor import Predictor
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import train

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from speech_emotion.inference.ray_engine import RayOptions, connect, predict_with_ray  # noqa: E402

runner = CliRunner()
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 logical CPUs, joined by this process (the engine reuses it)."""
    if ray.is_initialized():
        ray.shutdown()
    connect(None, num_cpus=2)  # the engine's calls then join this cluster
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def run(synth_corpus, tiny_wav2vec2, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-run") / "run"
    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=out,
        test_speakers=["06"],
        val_speakers=["05"],
        config=TrainConfig(max_epochs=5, stop_on_alarm=False),
        store=FeatureStore(tmp_path_factory.mktemp("ray-run-cache")),
        device="cpu",
    )
    return out


@pytest.fixture(scope="module")
def inputs(synth_corpus, tmp_path_factory):
    """Twenty clips with an unreadable file and a missing one among them."""
    clips = sorted(synth_corpus.rglob("*.wav"))[:20]
    bad = tmp_path_factory.mktemp("ray-bad") / "bad.wav"
    bad.write_bytes(b"not audio")
    return [*clips[:5], bad, *clips[5:13], bad.with_name("gone.wav"), *clips[13:]]


def same_rows(got: list[dict], expected: list[dict]) -> None:
    """Row by row: same paths, labels, errors and times; probabilities within TOLERANCE."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert {k: v for k, v in a.items() if k != "probabilities"} == {
            k: v for k, v in b.items() if k != "probabilities"
        }
        if "probabilities" in b:
            assert list(a["probabilities"]) == list(b["probabilities"])
            assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in b["probabilities"]) < TOLERANCE


def test_timeline_rows_equal_local(cluster, run, synth_corpus, inputs, tmp_path):
    recording = tmp_path / "call.wav"
    clips = [sf.read(str(path), dtype="float32")[0] for path in sorted(synth_corpus.rglob("*.wav"))[:4]]
    sf.write(str(recording), np.concatenate(clips), 16000)
    files = [str(recording), str(inputs[5])]  # the second is unreadable
    options = ["--timeline", "--no-vad", "--window", "1.0", "--hop", "0.5"]
    local = runner.invoke(app, ["predict", str(run), *files, *options, "--out", str(tmp_path / "local.jsonl")])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        app, ["predict", str(run), *files, *options, "--engine", "ray", "--out", str(tmp_path / "ray.jsonl")]
    )
    assert remote.exit_code == 0, remote.output
    read = [
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("ray.jsonl", "local.jsonl")
    ]
    assert len(read[1]) > 4 and "start" in read[1][0] and "error" in read[1][-1]
    same_rows(*read)


def test_rows_equal_local_predict_though_an_actor_is_killed(cluster, run, inputs):
    expected = list(Predictor.from_pretrained(run, device="cpu").predict_files(inputs))
    assert [("error" in row) for row in expected].count(True) == 2
    pids: list[int] = []

    def kill_the_actor_once(pid: int, n_rows: int) -> None:
        if not pids:
            os.kill(pid, signal.SIGKILL)  # the pool's one actor, of the cluster this module started, mid-run
        pids.append(pid)

    options = RayOptions(workers=1, batch_size=2)
    got = list(predict_with_ray(run, inputs, options=options, device="cpu", on_batch=kill_the_actor_once))
    assert len(pids) == 11 and pids[-1] != pids[0]  # the restarted actor finished the batches the killed one held
    same_rows(got, expected)


def test_cache_fill_on_ray_then_train_encodes_nothing(cluster, synth_corpus, tiny_wav2vec2, tmp_path, monkeypatch):
    filled = runner.invoke(
        app, ["cache", "fill", str(synth_corpus), "--encoder", str(tiny_wav2vec2), "--engine", "ray", "--json"]
    )
    assert filled.exit_code == 0, filled.output
    summary = json.loads(filled.stdout.splitlines()[-1])
    assert summary["engine"] == "ray" and summary["n_encoded"] == summary["n_files"] == 72
    assert FeatureStore().info()["n_entries"] == 72

    def no_encoding(self, signals, **options):
        raise AssertionError(f"encoded {len(signals)} clip(s) although the store was filled")

    monkeypatch.setattr(SSLEncoder, "features", no_encoding)
    trained = runner.invoke(
        app,
        ["train", str(synth_corpus), "--encoder", str(tiny_wav2vec2), "--out", str(tmp_path / "run")]
        + ["--test-speakers", "06", "--val-speakers", "05", "--epochs", "3", "--warn-only", "--device", "cpu"],
    )
    assert trained.exit_code == 0, trained.output
    assert FeatureStore().info()["n_entries"] == 72  # every feature came from the store


def test_cuda_without_gpus_per_worker_is_refused(run, inputs):
    with pytest.raises(ValueError, match="--num-gpus-per-worker 1"):
        list(predict_with_ray(run, inputs, device="cuda"))


def test_a_pool_that_leaves_no_cpu_for_decoding_is_refused(cluster, run, inputs):
    with pytest.raises(ValueError, match="has 2 CPUs; 2 actor.* need 2.25: lower --cpus-per-worker"):
        list(predict_with_ray(run, inputs, options=RayOptions(workers=2), device="cpu"))
