"""Tests of speech_emotion.features.signal: the steps the PyTorch and ONNX encoder paths share."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from speech_emotion.data.audio import split_windows
from speech_emotion.features.signal import (
    check_encoder_input,
    merge_window_stats,
    plan_batches,
    pool_mean_std,
    split_segments,
    ssl_frames,
    ssl_min_samples,
)

WAV2VEC2_KERNELS = (10, 3, 3, 3, 3, 2, 2)
WAV2VEC2_STRIDES = (5, 2, 2, 2, 2, 2, 2)


# --- plan_batches ------------------------------------------------------------------------------


def test_batches_grow_while_the_padded_size_fits_the_budget():
    # sorted: 4000 (#3), 8000 (#0), 8000 (#2), 16000 (#1); 1.5 s = 24000 samples
    # 3 × 8000 = 24000 fits exactly; adding the 16000 would pad all four to 4 × 16000
    assert plan_batches([8000, 16000, 8000, 4000], batch_seconds=1.5, can_pad=True) == [[3, 0, 2], [1]]
    # one sample less of budget and the third clip no longer fits
    assert plan_batches([8000, 16000, 8000, 4000], batch_seconds=23999 / 16000, can_pad=True) == [[3, 0], [2], [1]]


def test_a_segment_over_the_budget_gets_a_batch_of_its_own():
    assert plan_batches([100, 64000, 100], batch_seconds=1.0, can_pad=True) == [[0, 2], [1]]


def test_equal_lengths_keep_input_order_and_every_index_appears_once():
    lengths = [5, 3, 5, 3, 5, 9]
    batches = plan_batches(lengths, batch_seconds=30.0, can_pad=True)
    assert batches == [[1, 3, 0, 2, 4, 5]]
    many = plan_batches(
        [int(n) for n in np.random.default_rng(0).integers(1, 50000, 200)], batch_seconds=5.0, can_pad=False
    )
    assert sorted(i for batch in many for i in batch) == list(range(200))


def test_models_that_cannot_pad_batch_only_equal_lengths():
    lengths = [8000, 16000, 8000, 4000, 4000, 4000]
    assert plan_batches(lengths, batch_seconds=30.0, can_pad=False) == [[3, 4, 5], [0, 2], [1]]
    # the budget still applies within a group of equal lengths
    assert plan_batches(lengths, batch_seconds=1.0, can_pad=False) == [[3, 4, 5], [0, 2], [1]]
    assert plan_batches(lengths, batch_seconds=0.5, can_pad=False) == [[3, 4], [5], [0], [2], [1]]


def test_one_per_batch_runs_every_segment_alone_in_length_order():
    assert plan_batches([8000, 4000, 8000], batch_seconds=30.0, can_pad=True, one_per_batch=True) == [[1], [0], [2]]


def test_no_segments_no_batches():
    assert plan_batches([], batch_seconds=30.0, can_pad=True) == []


@pytest.mark.parametrize("batch_seconds", [0.0, -1.0, float("nan")])
def test_batch_seconds_must_be_positive(batch_seconds):
    with pytest.raises(ValueError, match=r"^batch_seconds: expected a positive number of seconds, got "):
        plan_batches([100], batch_seconds=batch_seconds, can_pad=True)


# --- check_encoder_input -----------------------------------------------------------------------


def test_signal_checks_name_the_signal_and_the_fix():
    cases = [
        (
            np.zeros((1600, 2), dtype=np.float32),
            "signals[1]: expected a 1-D array (mono, 16000 Hz), got shape (1600, 2); downmix to mono first",
        ),
        (
            np.zeros(1600, dtype=np.int16),
            "signals[1]: expected float samples in [-1, 1], got dtype int16; convert integer PCM with signal / 32768",
        ),
        (
            np.zeros(399, dtype=np.float32),
            "signals[1]: expected at least 400 samples (0.025 s at 16000 Hz), got 399; drop or pad clips this short",
        ),
        (
            np.zeros(0, dtype=np.float32),
            "signals[1]: expected at least 400 samples (0.025 s at 16000 Hz), got 0; drop or pad clips this short",
        ),
        (
            np.array([0.1, np.nan, np.inf] + [0.0] * 400, dtype=np.float32),
            "signals[1]: expected finite samples, got 2 NaN or infinite values",
        ),
    ]
    for signal, message in cases:
        with pytest.raises(ValueError) as raised:
            check_encoder_input(signal, name="signals[1]", min_samples=400)
        assert str(raised.value) == message


def test_an_empty_signal_is_refused_even_without_a_minimum():
    with pytest.raises(ValueError, match=r"^x: expected at least 1 samples"):
        check_encoder_input(np.zeros(0), name="x", min_samples=0)


def test_checked_signals_are_contiguous_float32():
    float32 = np.zeros(800, dtype=np.float32)
    assert check_encoder_input(float32, name="x") is float32  # nothing copied when nothing changes
    strided = np.arange(1600, dtype=np.float64)[::2] / 1600
    checked = check_encoder_input(strided, name="x")
    assert checked.dtype == np.float32 and checked.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(checked, strided.astype(np.float32))
    assert check_encoder_input([0.0, 0.5], name="x").tolist() == [0.0, 0.5]


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    signal = torch.linspace(-0.5, 0.5, 1000, requires_grad=True)
    checked = check_encoder_input(signal, name="x")
    assert isinstance(checked, np.ndarray) and checked.shape == (1000,)
    np.testing.assert_array_equal(checked, signal.detach().numpy())


# --- windows and statistics --------------------------------------------------------------------


def test_segments_are_the_windows_of_each_signal_in_order():
    signals = [np.arange(10, dtype=np.float32), np.arange(3, dtype=np.float32)]
    segments, n_windows = split_segments(signals, 4)
    assert n_windows == [3, 1]
    assert [(i, w) for i, w, _ in segments] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    np.testing.assert_array_equal(np.concatenate([s for i, _, s in segments if i == 0]), signals[0])


def test_pool_mean_std_is_the_mean_and_population_std():
    frames = np.random.default_rng(1).standard_normal((3, 57, 8)).astype(np.float32)
    pooled = pool_mean_std(frames)
    assert pooled.shape == (3, 16) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[:, :8], frames.astype(np.float64).mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(pooled[:, 8:], frames.astype(np.float64).std(axis=1), rtol=1e-5)


@pytest.mark.parametrize("n_frames,max_window", [(100, 30), (101, 50), (7, 2), (1000, 999)])
def test_merged_window_statistics_equal_those_of_the_concatenated_frames(n_frames, max_window):
    rng = np.random.default_rng(n_frames)
    # a drift over time, so that windows have different means and the merge has work to do
    frames = (rng.standard_normal((4, n_frames, 6)) + np.linspace(0, 5, n_frames)[None, :, None]).astype(np.float32)
    windows = split_windows(np.arange(n_frames), max_window)
    assert len(windows) > 1
    parts = [(pool_mean_std(np.ascontiguousarray(frames[:, w])), len(w)) for w in windows]
    expected = pool_mean_std(frames)
    np.testing.assert_allclose(merge_window_stats(parts), expected, rtol=1e-5, atol=1e-5)
    # windows arrive shortest first in a batch plan: the order does not change the result beyond rounding
    np.testing.assert_allclose(merge_window_stats(parts[::-1]), expected, rtol=1e-5, atol=1e-5)


def test_a_single_window_is_returned_as_it_is():
    pooled = pool_mean_std(np.ones((2, 5, 3), dtype=np.float32))
    assert merge_window_stats([(pooled, 5)]) is pooled


# --- the SSL convolutional front end -----------------------------------------------------------


def test_ssl_min_samples_is_the_shortest_input_with_one_frame():
    for kernels, strides in [(WAV2VEC2_KERNELS, WAV2VEC2_STRIDES), ((10, 8), (5, 4))]:
        shortest = ssl_min_samples(kernels, strides)
        assert ssl_frames(shortest, kernels, strides) == 1
        assert ssl_frames(shortest - 1, kernels, strides) < 1
    assert ssl_min_samples(WAV2VEC2_KERNELS, WAV2VEC2_STRIDES) == 400
    assert ssl_min_samples((10, 8), (5, 4)) == 45


def test_ssl_frames_agree_with_the_torch_encoder(tmp_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from speech_emotion.features.encoders import load_encoder

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor().save_pretrained(tmp_path)
    encoder = load_encoder(tmp_path)
    lengths = [45, 46, 64, 65, 1000, 16000, 16001]
    expected = encoder.frame_lengths(torch.tensor(lengths)).tolist()
    assert [ssl_frames(n, (10, 8), (5, 4)) for n in lengths] == expected
    assert encoder.min_samples == ssl_min_samples((10, 8), (5, 4))


# --- no torch ----------------------------------------------------------------------------------

BLOCK_TORCH = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is not importable in this test")

sys.meta_path.insert(0, Blocked())
"""


def test_signal_module_and_onnx_encoder_import_without_torch():
    script = BLOCK_TORCH + (
        "import json\n"
        "import numpy as np\n"
        "from speech_emotion.features.signal import check_encoder_input, plan_batches\n"
        "from speech_emotion.features.encoders.onnx import OnnxEncoder, whisper_log_mel\n"
        "from speech_emotion.features.encoders import Encoder\n"
        "from speech_emotion.features import FeatureStore, extract_features\n"
        "from speech_emotion.inference.backends import OnnxBackend\n"
        "filters = np.zeros((201, 80), dtype=np.float32); filters[10:20] = 1.0\n"
        "mel = whisper_log_mel(check_encoder_input(np.full(1600, 0.1), name='x'), filters)\n"
        "try:\n"
        "    from speech_emotion.features.encoders import load_encoder\n"
        "    lazy = 'imported'\n"
        "except ImportError as error:\n"
        "    lazy = str(error)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('torch', 'transformers')))\n"
        "batches = plan_batches([2, 1], batch_seconds=1.0, can_pad=True)\n"
        "print(json.dumps({'mel': list(mel.shape), 'batches': batches, 'lazy': lazy, 'loaded': loaded}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "mel": [80, 10],
        "batches": [[1, 0]],
        "lazy": "torch is not importable in this test",  # load_encoder needs torch: imported on first use only
        "loaded": [],
    }
