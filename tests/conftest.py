"""Shared fixtures. Tests never reach the network, and skip clearly when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SER_SHARED", REPO.parent / "shared"))
RAVDESS = SHARED / "data" / "ravdess-speech-16k"
WHISPER_TINY = SHARED / "models" / "whisper-tiny.en-encoder"
WHISPER_BASE = SHARED / "models" / "whisper-base-encoder"


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
def whisper_tiny() -> Path:
    if not (WHISPER_TINY / "model.safetensors").is_file():
        pytest.skip(f"whisper-tiny.en encoder not found at {WHISPER_TINY} (set SER_SHARED)")
    return WHISPER_TINY


def tone(path: Path, *, freq: float = 220.0, seconds: float = 1.0, sampling_rate: int = 16000, channels: int = 1, noise: float = 0.0, seed: int = 0) -> Path:
    """Write a sine tone (optionally with noise) as an audio file and return its path."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    signal = 0.3 * np.sin(2 * np.pi * freq * t)
    if noise:
        signal = signal + noise * np.random.default_rng(seed).standard_normal(len(t))
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sampling_rate)
    return path
