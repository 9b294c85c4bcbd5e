"""`--device` and `--precision`: devices resolved without silent fall-backs, bf16 features keyed apart, fp16 refused.

There is no GPU here: the CUDA paths run with torch's view of the machine patched (no GPU, or
two), which exercises the device logic itself; nothing moves to a GPU that is not there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speech_emotion.features.devices import (
    DEFAULT_BATCH_FRAMES,
    batch_frames_for,
    check_device,
    check_precision,
    resolve_device,
)
from speech_emotion.features.encoders import load_encoder
from speech_emotion.features.store import FeatureStore


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("spelling", ["gpu", "cuda:", "cpu:0", "mps", "cuda:x", ""])
def test_unknown_devices_are_refused(spelling):
    with pytest.raises(ValueError, match="device: expected auto .*, cpu, cuda or cuda:N"):
        check_device(spelling)


def test_cuda_where_there_is_none_is_an_error_not_the_cpu(no_gpu):
    assert str(resolve_device("auto")) == "cpu"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA is not available here .*pass --device cpu"):
            resolve_device(device)


def test_cuda_on_this_machine_is_an_error_unless_it_has_a_gpu():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device("cuda")


def test_devices_with_gpus(two_gpus):
    assert str(resolve_device("auto")) == "cuda:0"
    assert str(resolve_device("cuda")) == "cuda:0"
    assert str(resolve_device("cuda:1")) == "cuda:1"
    assert str(resolve_device("cpu")) == "cpu"  # asked for: the CPU even with GPUs
    with pytest.raises(ValueError, match="has 2 GPU.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_fp16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="fp16 is refused: its 5-bit exponent overflows"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="expected one of fp32, bf16"):
        check_precision("int8")
    assert check_precision(" BF16 ") == "bf16"


def test_batch_budget_per_device_type():
    assert batch_frames_for("cpu") == DEFAULT_BATCH_FRAMES["cpu"] == 1500
    assert batch_frames_for("cuda") == DEFAULT_BATCH_FRAMES["cuda"] > batch_frames_for("cpu")


def test_encoder_device_errors(tiny_wav2vec2, no_gpu):
    with pytest.raises(ValueError, match="CUDA is not available here"):
        load_encoder(tiny_wav2vec2, device="cuda")
    with pytest.raises(ValueError, match="egemaps' runs on the CPU in fp32 only"):
        load_encoder("egemaps", precision="bf16")


def test_store_key_does_not_depend_on_the_device(tiny_wav2vec2, no_gpu):
    keys = set()
    for device in ("cpu", "auto", " CPU ", torch.device("cpu")):
        encoder = load_encoder(tiny_wav2vec2, device=device)
        assert encoder.device.type == "cpu" and "device" not in encoder.preprocessing
        keys.add(
            FeatureStore.key(
                audio_hash="a" * 64, encoder_fingerprint=encoder.fingerprint, preprocessing=encoder.preprocessing
            )
        )
    assert len(keys) == 1


def test_whisper_cpu_batches_keep_the_30_second_budget(whisper_tiny):
    encoder = load_encoder(whisper_tiny, device="cpu")
    assert encoder.batch_frames == 1500 and encoder.samples_per_frame == 320
    assert encoder.default_batch_seconds == 30.0  # the CPU batching the project always had


def test_bf16_features_are_keyed_apart_and_close_to_fp32(tiny_wav2vec2):
    rng = np.random.default_rng(0)
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000, 16000)]
    fp32 = load_encoder(tiny_wav2vec2, device="cpu")
    bf16 = load_encoder(tiny_wav2vec2, device="cpu", precision="bf16")
    assert bf16.preprocessing == fp32.preprocessing | {"precision": "bf16"} and "precision" not in fp32.preprocessing
    assert bf16.fingerprint == fp32.fingerprint  # the same weights; the preprocessing tells them apart
    key = [
        FeatureStore.key(audio_hash="a" * 64, encoder_fingerprint=e.fingerprint, preprocessing=e.preprocessing)
        for e in (fp32, bf16)
    ]
    assert key[0] != key[1]
    a, b = np.stack(fp32.features(signals)), np.stack(bf16.features(signals))
    assert np.isfinite(b).all()
    # bf16 keeps 8 bits of mantissa: pooled features within a few percent of fp32 (the issue: 2.4% on an H200)
    assert np.abs(b - a).max() <= 0.05 * np.abs(a).max()
    assert not np.array_equal(a, b)  # autocast did run in bf16


def test_run_config_refuses_bf16_fine_tuning():
    from speech_emotion.training.config import RunConfig, TrainConfig

    config = RunConfig.create("corpus", encoder="egemaps", precision="BF16")
    assert config.precision == "bf16" and RunConfig.from_dict(config.to_dict()).precision == "bf16"
    with pytest.raises(ValueError, match="fine-tuning .* trains in fp32"):
        RunConfig.create("corpus", encoder="egemaps", precision="bf16", train=TrainConfig(finetune=1))
    assert RunConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "precision"}).precision == "fp32"


def test_onnx_providers_never_fall_back_in_silence():
    from speech_emotion.inference.backends import onnx_providers

    cpu_only = ["CPUExecutionProvider"]
    assert onnx_providers("auto", cpu_only) == onnx_providers("cpu", cpu_only) == cpu_only
    with pytest.raises(ValueError, match="no CUDA provider .*onnxruntime-gpu"):
        onnx_providers("cuda:0", cpu_only)
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("auto", with_cuda)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert onnx_providers("cpu", with_cuda) == cpu_only


def test_precision_context(tiny_wav2vec2):
    encoder = load_encoder(tiny_wav2vec2, device="cpu")
    before = torch.backends.cudnn.allow_tf32
    encoder.device = torch.device("cuda", 0)  # the context only reads the device: nothing moves
    with encoder.precision_context():
        assert torch.backends.cudnn.allow_tf32 is False  # fp32 on a GPU is fp32, not TF32
    assert torch.backends.cudnn.allow_tf32 == before
    bf16 = load_encoder(tiny_wav2vec2, device="cpu", precision="bf16")
    assert isinstance(bf16.precision_context(), torch.autocast)


def test_resume_takes_the_precision_from_the_run(tmp_path):
    from typer.testing import CliRunner

    from speech_emotion.cli.app import app

    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--precision", "bf16"])
    assert result.exit_code == 1 and "drop --precision" in " ".join(result.stderr.split())
