"""Shared fixtures. Tests never reach the network, and skip clearly when ../shared is absent.

In CI (``CI`` set, as ``.ci/run`` runs), a skip is a failure: everything the README promises
(the shared data and encoders, Chromium, sshd, MLflow, onnxruntime, openSMILE, …) must be there
and must run. A test may only skip in CI if it is marked ``@pytest.mark.skip_in_ci_ok("why")``
(for hardware that CI machines do not have, such as a GPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

IN_CI = bool(os.environ.get("CI"))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SER_SHARED", REPO.parent / "shared"))
RAVDESS = SHARED / "data" / "ravdess-speech-16k"
TESS = SHARED / "data" / "tess-16k"
TUREV = SHARED / "data" / "turev-db-16k"
WHISPER_TINY = SHARED / "models" / "whisper-tiny.en-encoder"
WHISPER_BASE = SHARED / "models" / "whisper-base-encoder"


def pytest_configure(config):
    config.addinivalue_line("markers", "skip_in_ci_ok(reason): this test may skip in CI (hardware CI lacks)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, turn a skip (from a fixture, ``pytest.skip``, ``importorskip`` or ``skipif``) into a failure."""
    outcome = yield
    report = outcome.get_result()
    if (
        IN_CI
        and report.skipped
        and not getattr(report, "wasxfail", None)
        and not item.get_closest_marker("skip_in_ci_ok")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing the README promises may skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In CI, a whole module that skips (``importorskip`` at import time) fails too."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped in CI, where nothing the README promises may skip: {reason}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache: never the user's, never beside ../shared."""
    monkeypatch.setenv("SER_CACHE", str(tmp_path_factory.mktemp("ser-cache")))


@pytest.fixture(scope="session")
def ravdess() -> Path:
    if not RAVDESS.is_dir():
        pytest.skip(f"RAVDESS clips not found at {RAVDESS} (set SER_SHARED to the folder holding data/ and models/)")
    return RAVDESS


@pytest.fixture(scope="session")
def tess() -> Path:
    if not TESS.is_dir():
        pytest.skip(f"TESS clips not found at {TESS} (set SER_SHARED to the folder holding data/ and models/)")
    return TESS


@pytest.fixture(scope="session")
def turev() -> Path:
    if not (TUREV / "metadata.csv").is_file():
        pytest.skip(f"TurEV-DB clips not found at {TUREV} (set SER_SHARED to the folder holding data/ and models/)")
    return TUREV


@pytest.fixture(scope="session")
def whisper_tiny() -> Path:
    if not (WHISPER_TINY / "model.safetensors").is_file():
        pytest.skip(f"whisper-tiny.en encoder not found at {WHISPER_TINY} (set SER_SHARED)")
    return WHISPER_TINY


def tone(
    path: Path,
    *,
    freq: float = 220.0,
    seconds: float = 1.0,
    sampling_rate: int = 16000,
    channels: int = 1,
    noise: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write a sine tone (optionally with noise) as an audio file and return its path."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    signal = 0.3 * np.sin(2 * np.pi * freq * t)
    if noise:
        signal = signal + noise * np.random.default_rng(seed).standard_normal(len(t))
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sampling_rate)
    return path


SYNTH_EMOTIONS = {"01": 130.0, "03": 260.0, "04": 520.0}  # RAVDESS codes neutral, happy, sad → pitch in Hz


def synth_clip(f0: float, *, seconds: float, seed: int, sampling_rate: int = 16000) -> np.ndarray:
    """A harmonic tone with jitter and noise: classes differ in pitch, speakers in timbre."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    f = f0 * (1 + rng.uniform(-0.05, 0.05)) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = 2 * np.pi * np.cumsum(f) / sampling_rate
    harmonics = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 5))
    signal = 0.2 * harmonics + 0.01 * rng.standard_normal(len(t))
    return (signal / np.abs(signal).max() * 0.5).astype(np.float32)


def write_synth_corpus(root: Path, *, n_speakers: int = 6, n_takes: int = 4, seconds: float = 1.0) -> Path:
    """RAVDESS-named clips of synthetic 'emotions' (pitch classes) for speakers 01..n."""
    for actor in range(1, n_speakers + 1):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for code, f0 in SYNTH_EMOTIONS.items():
            for take in range(n_takes):
                statement, repetition = take // 2 + 1, take % 2 + 1
                name = f"03-01-{code}-01-{statement:02d}-{repetition:02d}-{actor:02d}.wav"
                seed = actor * 1000 + int(code) * 10 + take
                sf.write(str(folder / name), synth_clip(f0, seconds=seconds, seed=seed), 16000)
    return root


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """6 speakers × 3 pitch classes × 4 takes of 1 s, RAVDESS naming."""
    return write_synth_corpus(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    """A randomly initialised, tiny wav2vec 2.0 saved as a local folder (loaded like a hub id)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny-wav2vec2")
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    import torch

    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder
