"""ONNX export (``ser export --format onnx``) and the ONNX Runtime backend of ``Predictor``.

The export must run without torch or transformers, give PyTorch's probabilities (fp32 within
1e-4), and refuse files that changed after export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'speech-emotion[all]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'speech-emotion[all]')")

from conftest import synth_clip  # noqa: E402
from speech_emotion import Predictor  # noqa: E402
from speech_emotion.cli.app import app  # noqa: E402
from speech_emotion.errors import BundleError  # noqa: E402
from speech_emotion.export.onnx import export_onnx  # noqa: E402
from speech_emotion.features.encoders.onnx import whisper_log_mel  # noqa: E402
from speech_emotion.training.config import TrainConfig  # noqa: E402
from speech_emotion.training.pipeline import train  # noqa: E402

FEATURES_FP32 = 1e-5
"""Largest |ONNX − PyTorch| pooled feature, relative to the largest feature (measured: 2.2e-6, whisper-tiny.en)."""
FEATURES_INT8 = 0.15
"""The same for the int8-quantized encoder (measured: 0.094): quantization noise, not a bug."""
PROBABILITIES = 1e-4
"""Largest |ONNX − PyTorch| probability of the head, at the model's own temperature, on inputs where it is unsure."""


def _train(corpus: Path, encoder: Path, out: Path) -> Path:
    train(
        corpus,
        encoder=str(encoder),
        out=out,
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=TrainConfig(max_epochs=40, lr=3e-3, hidden=32, stop_on_alarm=False),
    )
    return out


def _boundary(torch_predictor: Predictor, features: np.ndarray) -> np.ndarray:
    """Features on the head's decision boundaries: mixtures of two clips of different predicted classes, the mix
    chosen (bisection) so that the model gives both classes the same probability. Real clips of a trained model
    are classified with near-certainty, where every export agrees to the last bit and proves nothing."""
    labels = torch_predictor.predict_features(features).argmax(axis=1)
    pairs = [(i, j) for i in range(len(labels)) for j in range(i) if labels[i] != labels[j]][:6]
    mixes = []
    for i, j in pairs:
        low, high = 0.0, 1.0  # weight of clip i: 0 → class of j wins, 1 → class of i wins
        for _ in range(40):
            middle = (low + high) / 2
            p = torch_predictor.predict_features((middle * features[i] + (1 - middle) * features[j])[None])[0]
            low, high = (middle, high) if p[labels[j]] > p[labels[i]] else (low, middle)
        mixes.append(low * features[i] + (1 - low) * features[j])
    return np.stack(mixes).astype(np.float32)


@pytest.fixture(scope="module")
def whisper_run(synth_corpus, whisper_tiny, tmp_path_factory) -> Path:
    return _train(synth_corpus, whisper_tiny, tmp_path_factory.mktemp("whisper") / "run")


@pytest.fixture(scope="module")
def whisper_onnx(whisper_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    export_onnx(whisper_run, out)
    return out


@pytest.fixture(scope="module")
def real_clips(ravdess) -> list[Path]:
    files = sorted(ravdess.glob("Actor_*/*.flac"))
    return files[:: max(1, len(files) // 6)][:6]


def _matrix(results: list[dict], classes: list[str]) -> np.ndarray:
    return np.asarray([[r["probabilities"][c] for c in classes] for r in results])


def test_fp32_probabilities_agree_with_pytorch_on_real_clips(whisper_run, whisper_onnx, real_clips, synth_corpus):
    torch_predictor = Predictor.from_pretrained(whisper_run)
    onnx_predictor = Predictor.from_pretrained(whisper_onnx)
    assert (torch_predictor.backend_name, onnx_predictor.backend_name) == ("torch", "onnx")
    assert onnx_predictor.classes == torch_predictor.classes

    expected = list(torch_predictor.predict_files(real_clips))
    got = list(onnx_predictor.predict_files(real_clips))
    assert [r["path"] for r in got] == [str(p) for p in real_clips]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    # The encoder: pooled features of every layer.
    signals = [sf.read(p, dtype="float32")[0] for p in real_clips]
    torch_features = np.stack(torch_predictor.encoder.features(signals))
    onnx_features = np.stack(onnx_predictor.encoder.features(signals))
    assert np.abs(onnx_features - torch_features).max() < FEATURES_FP32 * np.abs(torch_features).max()
    # The head, with the calibration temperature inside head.onnx, where its answer is not a foregone conclusion
    # (between held-out clips of different classes).
    held_out = [sf.read(p, dtype="float32")[0] for p in sorted(synth_corpus.glob("Actor_0[56]/*.wav"))]
    boundary = _boundary(torch_predictor, np.stack(torch_predictor.encoder.features(held_out)))
    p_torch, p_onnx = torch_predictor.predict_features(boundary), onnx_predictor.predict_features(boundary)
    assert (np.sort(p_torch, axis=1)[:, -2] > 0.3).all(), "the mixtures are not on a boundary"
    assert np.abs(p_onnx - p_torch).max() < PROBABILITIES


def test_numpy_log_mel_equals_torch(whisper_run, real_clips):
    encoder = Predictor.from_pretrained(whisper_run).encoder
    filters = encoder.mel_filters
    for path in real_clips[:3]:
        signal = sf.read(path, dtype="float32")[0]
        expected = encoder.log_mel(signal).numpy()
        got = whisper_log_mel(signal, filters)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


def test_long_input_windows_merge_like_pytorch(whisper_run, whisper_onnx):
    # 35 s is encoded in two windows of 17.5 s whose statistics are merged
    signal = np.concatenate(
        [synth_clip(f0, seconds=5.0, seed=i) for i, f0 in enumerate([130.0, 260.0, 520.0] * 2 + [260.0])]
    )
    torch_features = Predictor.from_pretrained(whisper_run).encoder.features([signal])[0]
    onnx_features = Predictor.from_pretrained(whisper_onnx).encoder.features([signal])[0]
    assert np.abs(onnx_features - torch_features).max() < 1e-3 * max(1.0, np.abs(torch_features).max())


def test_onnx_folder_runs_without_torch_or_transformers(whisper_run, whisper_onnx, synth_corpus):
    clip = next((synth_corpus / "Actor_05").glob("*.wav"))
    script = (
        "import json, sys\n"
        "import numpy as np\n"
        "import speech_emotion\n"
        "from speech_emotion.inference.timeline import predict_timeline\n"
        f"predictor = speech_emotion.Predictor.from_pretrained({str(whisper_onnx)!r})\n"
        f"from_file = predictor({str(clip)!r})\n"
        "from_array = predictor.predict([np.zeros(8000, dtype=np.float32) + 0.01])[0]\n"
        f"list(predict_timeline(predictor, {str(clip)!r}))  # with the voice-activity detector\n"
        "assert 'onnxruntime' in sys.modules\n"
        "print(json.dumps({'file': from_file, 'array': from_array, 'backend': predictor.backend_name,\n"
        "                  'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["transformers"] is False
    assert report["backend"] == "onnx"
    expected = Predictor.from_pretrained(whisper_run)(clip)
    assert report["file"]["label"] == expected["label"]
    assert list(report["file"]["probabilities"]) == list(expected["probabilities"])
    assert max(abs(report["file"]["probabilities"][c] - p) for c, p in expected["probabilities"].items()) < 1e-4
    assert abs(sum(report["array"]["probabilities"].values()) - 1) < 1e-5


def test_model_json_records_the_export(whisper_run, whisper_onnx):
    meta = json.loads((whisper_onnx / "model.json").read_text())
    source = json.loads((whisper_run / "model" / "model.json").read_text())
    assert meta["classes"] == source["classes"] and meta["encoder"] == source["encoder"]
    onnx = meta["onnx"]
    assert onnx["backend"] == "onnxruntime" and onnx["quantization"] == "none" and onnx["opset"] >= 17
    assert set(onnx["files"]) == {"encoder.onnx", "head.onnx", "mel_filters.npy"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in onnx["files"].values())
    assert not (whisper_onnx / "model.safetensors").exists()


def test_changed_onnx_file_is_refused(whisper_onnx, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(whisper_onnx, copy)
    with open(copy / "head.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(BundleError, match=r"head\.onnx: sha256 .* differs"):
        Predictor.from_pretrained(copy)
    (copy / "head.onnx").unlink()
    with pytest.raises(BundleError, match=r"head\.onnx: missing"):
        Predictor.from_pretrained(copy)


def test_options_that_do_not_fit_an_export_are_refused(whisper_run, whisper_onnx):
    with pytest.raises(BundleError, match="carries its encoder"):
        Predictor.from_pretrained(whisper_onnx, encoder="/somewhere/else")
    with pytest.raises(ValueError, match="backend='onnx' only"):
        Predictor.from_pretrained(whisper_onnx, backend="torch")
    with pytest.raises(ValueError, match="ser export --format onnx"):
        Predictor.from_pretrained(whisper_run, backend="onnx")
    with pytest.raises(ValueError, match="quantize: expected None"):
        export_onnx(whisper_run, whisper_onnx.parent / "never", quantize="int4")


def test_int8_export_is_smaller_and_close(whisper_run, whisper_onnx, synth_corpus, tmp_path):
    summary = export_onnx(whisper_run, tmp_path / "int8", quantize="int8")
    assert summary["quantization"] == "int8"
    meta = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert meta["onnx"]["quantization"] == "int8"
    assert (tmp_path / "int8" / "encoder.onnx").stat().st_size < 0.5 * (whisper_onnx / "encoder.onnx").stat().st_size
    clips = sorted(synth_corpus.glob("Actor_0[56]/*.wav"))
    fp32 = Predictor.from_pretrained(whisper_onnx)
    int8 = Predictor.from_pretrained(tmp_path / "int8")
    p_fp32, p_int8 = (
        _matrix(list(fp32.predict_files(clips)), fp32.classes),
        _matrix(list(int8.predict_files(clips)), fp32.classes),
    )
    assert (p_int8.argmax(1) == p_fp32.argmax(1)).mean() >= 0.9
    signals = [sf.read(p, dtype="float32")[0] for p in clips]
    f_fp32, f_int8 = (np.stack(p.encoder.features(signals)) for p in (fp32, int8))
    error = np.abs(f_int8 - f_fp32).max() / np.abs(f_fp32).max()
    assert 1e-4 < error < FEATURES_INT8  # quantized (not the fp32 graph), within the noise measured
    # dynamic quantization scales by the batch's range: int8 runs clip by clip, so a clip's
    # result never depends on the clips it arrives with
    signals = [sf.read(p, dtype="float32")[0] for p in clips[:3]]
    alone = int8.predict(signals[:1])[0]["probabilities"]
    together = int8.predict(signals)[0]["probabilities"]
    assert alone == together


def test_wav2vec2_export_agrees(synth_corpus, tiny_wav2vec2, tmp_path):
    run = _train(synth_corpus, tiny_wav2vec2, tmp_path / "run")
    export_onnx(run, tmp_path / "onnx")
    torch_predictor, onnx_predictor = Predictor.from_pretrained(run), Predictor.from_pretrained(tmp_path / "onnx")
    # clips of different lengths share a padded, masked batch
    signals = [
        synth_clip(f0, seconds=s, seed=i)
        for i, (f0, s) in enumerate([(130.0, 0.7), (260.0, 1.3), (520.0, 2.1), (260.0, 1.0)])
    ]
    torch_features = np.stack(torch_predictor.encoder.features(signals))
    onnx_features = np.stack(onnx_predictor.encoder.features(signals))
    assert np.abs(onnx_features - torch_features).max() < FEATURES_FP32 * np.abs(torch_features).max()
    boundary = _boundary(torch_predictor, torch_features)
    assert (
        np.abs(onnx_predictor.predict_features(boundary) - torch_predictor.predict_features(boundary)).max()
        < PROBABILITIES
    )
    assert json.loads((tmp_path / "onnx" / "model.json").read_text())["onnx"]["input"]["type"] == "waveform"


def test_group_norm_wav2vec2_export_runs_clip_by_clip(tmp_path):
    """Group-norm front ends (wav2vec2-base style) are exported without padding input."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from speech_emotion.data.labels import LabelSchema
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.model.bundle import save_bundle
    from speech_emotion.model.head import EmotionHead, HeadConfig
    from speech_emotion.model.metadata import BundleMeta, EncoderRef

    folder = tmp_path / "w2v2-group"
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    assert config.feat_extract_norm == "group"
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor().save_pretrained(folder)
    encoder = load_encoder(str(folder))
    signals = [synth_clip(200.0 + 50 * i, seconds=0.5 + 0.4 * i, seed=i) for i in range(4)]
    schema = LabelSchema.from_name("ravdess-8")
    head = EmotionHead(
        HeadConfig(n_layers=encoder.n_layers, dim=encoder.dim, n_classes=schema.n_classes, hidden=8)
    ).eval()
    head.fit_scaler(torch.from_numpy(np.stack(encoder.features(signals))))
    meta = BundleMeta(
        classes=tuple(schema.classes),
        schema=schema.to_dict(),
        encoder=EncoderRef.of(encoder, reference=str(folder), path=str(folder)),
        preprocessing=encoder.preprocessing,
    )
    save_bundle(tmp_path / "run" / "model", head, meta)
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "model.json").read_text())["onnx"]["input"]["names"] == ["input_values"]
    torch_predictor, onnx_predictor = (
        Predictor.from_pretrained(tmp_path / "run"),
        Predictor.from_pretrained(tmp_path / "onnx"),
    )
    p_torch = _matrix(torch_predictor.predict(signals), torch_predictor.classes)
    p_onnx = _matrix(onnx_predictor.predict(signals), torch_predictor.classes)
    assert np.abs(p_onnx - p_torch).max() < 1e-4


def test_predict_files_keeps_order_and_reports_bad_files(whisper_onnx, synth_corpus, tmp_path):
    good = sorted(synth_corpus.glob("Actor_06/*.wav"))[:5]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt not really audio")
    paths = [good[0], broken, *good[1:], tmp_path / "missing.wav"]
    predictor = Predictor.from_pretrained(whisper_onnx)
    rows = list(predictor.predict_files(paths, batch_size=2))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert "error" in rows[1] and rows[-1]["error"] == "file not found"
    expected = predictor.predict([sf.read(p, dtype="float32")[0] for p in good])
    assert [r["label"] for r in rows if "error" not in r] == [e["label"] for e in expected]
    with pytest.raises(ValueError, match="batch_size"):
        list(predictor.predict_files(paths, batch_size=0))


def test_cli_export_predict_evaluate(whisper_run, synth_corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-onnx"
    result = runner.invoke(app, ["export", str(whisper_run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "encoder.onnx").is_file()

    clips = sorted(synth_corpus.glob("Actor_05/*.wav"))[:3]
    result = runner.invoke(app, ["predict", str(out), *map(str, clips), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["path"] for r in rows] == [str(c) for c in clips]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)

    result = runner.invoke(app, ["evaluate", str(out), str(synth_corpus), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout[result.stdout.index("{") :])
    assert scores["n"] == 24 and scores["speakers"] == ["05", "06"]  # training speakers counted apart

    result = runner.invoke(app, ["export", str(whisper_run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 1 and "not empty" in result.output
