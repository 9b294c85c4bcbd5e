"""Audio loader: decode, downmix, resample, and refuse bad files with the file and reason named."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from speech_emotion.data import SAMPLING_RATE, audio_hash, check_signal, load_audio
from speech_emotion.data.audio import MIN_DURATION, stream_audio
from speech_emotion.errors import AudioError


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_decodes_common_formats_to_mono_float32_at_16k(tmp_path, suffix):
    path = tone(tmp_path / f"a{suffix}", seconds=0.5)

    signal, sampling_rate = load_audio(path)

    assert sampling_rate == SAMPLING_RATE == 16000
    assert signal.dtype == np.float32
    assert signal.ndim == 1
    assert len(signal) == 8000
    assert 0.25 < np.abs(signal).max() <= 1.0


def test_stereo_48k_becomes_mono_16k_of_the_right_length(tmp_path):
    path = tone(tmp_path / "stereo.wav", seconds=1.5, sampling_rate=48000, channels=2)

    signal, sampling_rate = load_audio(path)

    assert sampling_rate == 16000
    assert signal.shape == (24000,)
    assert signal.dtype == np.float32
    # the same tone written directly at 16 kHz, mono: resampling keeps the content
    reference, _ = load_audio(tone(tmp_path / "mono.wav", seconds=1.5))
    assert np.abs(signal[1000:-1000] - reference[1000:-1000]).max() < 1e-2


def test_downmix_averages_channels(tmp_path):
    t = np.arange(16000) / 16000
    left = 0.4 * np.sin(2 * np.pi * 220 * t)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32), 16000, subtype="FLOAT")

    signal, _ = load_audio(path)

    np.testing.assert_allclose(signal, left / 2, atol=1e-6)


def test_other_target_rate_is_honoured(tmp_path):
    signal, sampling_rate = load_audio(tone(tmp_path / "a.wav", seconds=1.0), sampling_rate=8000)
    assert (sampling_rate, signal.shape) == (8000, (8000,))


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match=r"nowhere\.wav: file not found") as info:
        load_audio(path)
    assert info.value.path == str(path)
    assert info.value.reason == "file not found"


def test_audio_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_audio(tmp_path / "nowhere.wav")


def test_random_bytes_named_wav_is_unreadable(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(
        AudioError, match=r"noise\.wav: cannot decode audio \(.*\); is the file truncated or not audio\?"
    ):
        load_audio(path)


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero\.wav: empty: the file is 0 bytes"):
        load_audio(path)


def test_header_without_samples_is_empty(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(path, np.zeros((0,), dtype=np.float32), 16000)
    assert sf.info(str(path)).frames == 0
    with pytest.raises(AudioError, match=r"nosamples\.wav: empty: the file holds no samples"):
        load_audio(path)


def _chop(path, keep_bytes):
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    return path


@pytest.mark.parametrize("subtype, bytes_per_frame", [("PCM_16", 2), ("FLOAT", 4)])
def test_truncated_wav_is_refused_not_shortened(tmp_path, subtype, bytes_per_frame):
    path = tmp_path / "cut.wav"
    t = np.arange(16000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, subtype=subtype)
    _chop(path, path.stat().st_size - 8000 * bytes_per_frame)
    # libsndfile alone reads the half that is left, with no complaint
    assert 0 < sf.read(str(path))[0].shape[0] < 16000

    with pytest.raises(
        AudioError, match=r"cut\.wav: truncated: the WAV header declares \d+ bytes of samples, the file holds \d+"
    ):
        load_audio(path)


def test_wav_chopped_right_after_the_header_is_truncated(tmp_path):
    path = tone(tmp_path / "hdr.wav")
    _chop(path, 44)
    with pytest.raises(AudioError, match=r"hdr\.wav: truncated"):
        load_audio(path)


def test_truncated_flac_is_unreadable(tmp_path):
    path = tone(tmp_path / "cut.flac", seconds=1.0, noise=0.05)
    _chop(path, path.stat().st_size // 2)
    with pytest.raises(AudioError, match=r"cut\.flac: cannot decode audio"):
        load_audio(path)


@pytest.mark.parametrize("seconds, keep", [(1.0, 0.3), (1.0, 0.5), (3.0, 0.5), (3.0, 0.8)])
def test_truncated_ogg_is_refused_however_it_was_cut(tmp_path, seconds, keep):
    # libsndfile fails on some cuts and silently returns fewer (or zero) samples on others
    path = tone(tmp_path / "cut.ogg", seconds=seconds, noise=0.05)
    _chop(path, int(path.stat().st_size * keep))
    with pytest.raises(
        AudioError,
        match=r"cut\.ogg: (truncated: the Ogg stream ends without its end-of-stream page|cannot decode audio)",
    ):
        load_audio(path)


def test_mp3_decodes(tmp_path):
    path = tmp_path / "a.mp3"
    try:
        tone(path, seconds=1.0)
    except (sf.LibsndfileError, TypeError, ValueError) as error:
        pytest.skip(f"this libsndfile cannot write MP3: {error}")
    signal, sampling_rate = load_audio(path)
    assert sampling_rate == 16000 and abs(len(signal) - 16000) < 2000


def test_complete_wav_with_trailing_chunk_is_accepted(tmp_path):
    path = tone(tmp_path / "tail.wav", seconds=0.5)
    with open(path, "ab") as stream:  # a LIST chunk after the data, as some editors write
        stream.write(b"LIST" + (4).to_bytes(4, "little") + b"INFO")
    signal, _ = load_audio(path)
    assert len(signal) == 8000


def test_too_short(tmp_path):
    path = tone(tmp_path / "blip.wav", seconds=0.1)
    with pytest.raises(AudioError, match=r"blip\.wav: too short: 0\.100 s, expected at least 0\.25 s"):
        load_audio(path)
    assert MIN_DURATION == 0.25


def test_minimum_duration_is_configurable(tmp_path):
    path = tone(tmp_path / "blip.wav", seconds=0.1)
    signal, _ = load_audio(path, min_duration=0.05)
    assert len(signal) == 1600


def test_silent(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"quiet\.wav: silent: every sample is below -100 dBFS"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    data[100] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: holds NaN or infinite samples"):
        load_audio(path)


def test_check_signal_validates_arrays():
    signal, sampling_rate = check_signal(0.1 * np.ones((8000, 2)), 16000)
    assert signal.shape == (8000,) and sampling_rate == 16000
    with pytest.raises(
        AudioError, match=r"<array>: expected samples of shape \(n,\) or \(n, channels\), got \(2, 2, 2\)"
    ):
        check_signal(np.ones((2, 2, 2)), 16000)
    with pytest.raises(AudioError, match=r"clip: empty"):
        check_signal(np.zeros(0), 16000, path="clip")


def test_audio_hash_ignores_container_and_name(tmp_path):
    wav = tone(tmp_path / "a.wav", noise=0.05)
    flac = tmp_path / "copy.flac"
    samples, rate = sf.read(str(wav), dtype="int16")
    sf.write(flac, samples, rate, subtype="PCM_16")

    hash_wav = audio_hash(load_audio(wav)[0])
    hash_flac = audio_hash(load_audio(flac)[0])

    assert hash_wav == hash_flac
    assert len(hash_wav) == 64


def test_audio_hash_tells_different_audio_apart(tmp_path):
    a = audio_hash(load_audio(tone(tmp_path / "a.wav", freq=220))[0])
    b = audio_hash(load_audio(tone(tmp_path / "b.wav", freq=221))[0])
    assert a != b


def test_a_file_name_that_is_not_utf8_is_reported_as_such(tmp_path):
    import os

    path = tmp_path / os.fsdecode(b"caf\xe9-take1.wav")  # Latin-1 'é': a real non-UTF-8 name on disk
    tone(tmp_path / "ok.wav").rename(path)
    assert os.fsencode(path).endswith(b"caf\xe9-take1.wav") and path.is_file()
    for read in (load_audio, lambda name: next(stream_audio(name))):
        with pytest.raises(AudioError, match=r"the file name is not valid UTF-8 \(bytes e9\); rename the file") as info:
            read(path)
        assert "truncated" not in str(info.value) and "not audio" not in str(info.value)
        assert info.value.path.endswith("caf\\xe9-take1.wav")  # printable: the bad byte shown escaped
        str(info.value).encode("utf-8")  # writes to any UTF-8 stream (the raw name would raise here)
