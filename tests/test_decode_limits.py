"""Decode limits: a small file that decodes to gigabytes is refused from its header, and no file read whole
allocates more than its mono signal and one block (speech_emotion.data.decode_limits, data.audio)."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from speech_emotion.data import DecodeLimits, check_signal, load_audio, load_dataset
from speech_emotion.data.audio import stream_audio
from speech_emotion.errors import AudioError, AudioLimitError, CorpusError


def flac_bomb(path, *, sampling_rate: int = 655_350, channels: int = 8, seconds: float = 3.0):
    """A FLAC of digital silence: about 17 KB on disk, ``sampling_rate × channels × seconds`` samples decoded."""
    sf.write(str(path), np.zeros((int(sampling_rate * seconds), channels), dtype=np.int16), sampling_rate)
    return path


def sparse_wav(path, *, seconds: float, sampling_rate: int = 16000, channels: int = 1):
    """A whole 16-bit WAV of ``seconds`` of silence, written as a sparse file (no disk space for the samples)."""
    n_bytes = int(seconds * sampling_rate) * channels * 2
    header = b"RIFF" + struct.pack("<I", 36 + n_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sampling_rate, sampling_rate * channels * 2, 2, 16)
    header += b"data" + struct.pack("<I", n_bytes)
    with open(path, "wb") as stream:
        stream.write(header)
        stream.truncate(len(header) + n_bytes)
    return path


def peak_allocation(function) -> tuple[object, int]:
    """``function()``'s result (or exception) and the peak bytes Python and numpy allocated meanwhile."""
    tracemalloc.start()
    try:
        try:
            result = function()
        except Exception as error:  # the caller asserts on it
            result = error
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    path = flac_bomb(tmp_path / "bomb.flac")
    assert path.stat().st_size < 100_000  # 16 million samples (63 MB as float32) in a few KB
    error, peak = peak_allocation(lambda: load_audio(path))
    assert isinstance(error, AudioLimitError), error
    assert error.limit == "max_sampling_rate"
    assert str(error).startswith(f"{path}: sampling rate 655350 Hz is above the limit of 192000 Hz")
    assert peak < 2_000_000  # nothing was decoded
    with pytest.raises(AudioLimitError, match="655350 Hz"):
        next(stream_audio(path))


@pytest.mark.parametrize(
    "sampling_rate, channels, seconds, limit",
    [(48_000, 16, 1.0, "max_channels"), (96_000, 2, 400.0, "max_samples"), (16_000, 1, 3700.0, "max_samples")],
    ids=["16-channels", "400s-96k-stereo", "an-hour-of-16k"],
)
def test_other_bombs_are_refused_by_the_limit_they_pass(tmp_path, sampling_rate, channels, seconds, limit):
    path = sparse_wav(tmp_path / "big.wav", seconds=seconds, sampling_rate=sampling_rate, channels=channels)
    error, peak = peak_allocation(lambda: load_audio(path))
    assert isinstance(error, AudioLimitError) and error.limit == limit, error
    assert str(path) in str(error) and limit in str(error)
    assert peak < 2_000_000


def test_limits_are_parameters_and_checked():
    path = "clip.wav"
    DecodeLimits(max_samples=100).check(path, frames=100, channels=1, sampling_rate=16000)
    with pytest.raises(AudioLimitError, match=r"101 frames × 1 channels = 101 samples .* limit of 100 \(max_samples\)"):
        DecodeLimits(max_samples=100).check(path, frames=101, channels=1, sampling_rate=16000)
    DecodeLimits(max_samples=100).check(path, frames=10**9, channels=1, sampling_rate=16000, streamed=True)
    with pytest.raises(AudioLimitError, match="not a positive number"):
        DecodeLimits().check(path, frames=1, channels=1, sampling_rate=0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="expected a positive integer"):
            DecodeLimits(max_samples=bad)


def test_loading_in_blocks_holds_the_mono_signal_and_one_block_not_every_channel(tmp_path):
    # 10 s of 48 kHz, 8 channels: 3.84 million samples, 15 MB as float32 if decoded whole.
    t = np.arange(480_000) / 48_000
    data = np.stack([0.1 * (k + 1) / 8 * np.sin(2 * np.pi * 220 * t) for k in range(8)], axis=1).astype(np.float32)
    path = tmp_path / "eight.wav"
    sf.write(str(path), data, 48_000, subtype="FLOAT")
    del data
    (signal, sampling_rate), peak = peak_allocation(lambda: load_audio(path))
    assert peak < 9_000_000, peak  # mono at 48 kHz (1.9 MB) + one 4 MB block + the 16 kHz result
    whole, _ = sf.read(str(path), dtype="float32", always_2d=True)
    expected, _ = check_signal(whole, 48_000)  # the same downmix and resampling as decoding it whole
    np.testing.assert_array_equal(signal, expected)
    assert sampling_rate == 16000 and signal.shape == (160_000,)


def test_a_limit_below_the_file_refuses_it_with_the_path(tmp_path):
    path = tone(tmp_path / "two.wav", seconds=2.0, channels=2)
    assert load_audio(path)[0].shape == (32000,)
    with pytest.raises(AudioLimitError, match=r"two\.wav: 32000 frames × 2 channels = 64000 samples"):
        load_audio(path, limits=DecodeLimits(max_samples=63_999))


def test_a_stray_multi_hour_file_in_a_corpus_is_a_named_problem_not_loaded(synth_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    for actor in ("01", "02", "03", "04"):
        (corpus / f"Actor_{actor}").mkdir(parents=True)
        for clip in sorted((synth_corpus / f"Actor_{actor}").glob("*.wav")):
            (corpus / f"Actor_{actor}" / clip.name).write_bytes(clip.read_bytes())
    # A two-hour recording (460 MB as float32) among the clips, named like them.
    stray = sparse_wav(corpus / "Actor_04" / "03-01-01-01-02-02-04.wav", seconds=2 * 3600)
    with pytest.raises(CorpusError, match=r"03-01-01-01-02-02-04\.wav.*max_samples"):
        load_dataset(corpus, labels=None, allow_single_label_speakers=True)
    dataset, peak = peak_allocation(lambda: load_dataset(corpus, skip_bad=True, allow_single_label_speakers=True))
    assert [problem.path for problem in dataset.problems] == [str(stray)]
    assert "7200.0 s" in dataset.problems[0].reason and "--timeline" in dataset.problems[0].reason
    assert len(dataset.manifest) == 47
    assert peak < 50_000_000  # the 2 h file (460 MB as float32) was never decoded


def test_check_signal_holds_arrays_to_the_same_limits():
    with pytest.raises(AudioLimitError, match=r"16000 channels.*shape \(channels, n\)\? pass it transposed"):
        check_signal(0.1 * np.ones((2, 16000)), 16000)
    with pytest.raises(AudioLimitError, match="sampling rate 0 Hz"):
        check_signal(0.1 * np.ones(16000), 0)  # was ZeroDivisionError
    with pytest.raises(AudioError, match=r"expected float samples in \[-1, 1\], got dtype int16; .* / 32768"):
        check_signal((3000 * np.ones(16000)).astype(np.int16), 16000)  # was read as amplitude 3000


def test_a_low_sampling_rate_cannot_make_resampling_the_bomb(tmp_path):
    # 2 MB of real audio at 100 Hz: 5.5 hours that resample to 320 million samples at 16 kHz (1.3 GB).
    path = tmp_path / "slow.wav"
    sf.write(str(path), (0.3 * np.sin(np.arange(2_000_000) / 3)).astype(np.float32), 100, subtype="PCM_16")
    error, peak = peak_allocation(lambda: load_audio(path))
    assert isinstance(error, AudioLimitError) and error.limit == "max_samples", error
    assert "2000000 frames at 100 Hz resample to 320000000 samples at 16000 Hz" in str(error)
    assert peak < 2_000_000
    with pytest.raises(AudioLimitError, match="resample to 320000000 samples"):
        check_signal(0.1 * np.ones(2_000_000, dtype=np.float32), 100)
