"""Files cut short are refused in every format the loader reads, not quietly read in part (data.completeness).

libsndfile decodes what is left of a WAV, RF64, Wave64, AIFF, AU, MP3 or Ogg file cut short,
without an error; the loader must say "truncated" for each, through ``load_audio`` and
``stream_audio`` alike, and accept the same files whole.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from speech_emotion.data.audio import load_audio, stream_audio
from speech_emotion.data.completeness import check_complete
from speech_emotion.errors import AudioError

SECONDS = 3.0
FORMATS = [  # (suffix, libsndfile format, subtype, sampling rate)
    ("wav", "WAV", "PCM_16", 16000),
    ("wav", "WAV", "IMA_ADPCM", 16000),
    ("rf64", "RF64", "PCM_16", 16000),
    ("w64", "W64", "PCM_16", 16000),
    ("aiff", "AIFF", "PCM_16", 16000),
    ("aifc", "AIFF", "FLOAT", 22050),
    ("au", "AU", "PCM_16", 16000),
    ("caf", "CAF", "PCM_16", 16000),
    ("flac", "FLAC", "PCM_16", 16000),
    ("ogg", "OGG", "VORBIS", 16000),
    ("opus", "OGG", "OPUS", 48000),
    ("mp3", "MP3", "MPEG_LAYER_III", 44100),
]
QUIETLY_SHORTENED = {"wav", "rf64", "w64", "aiff", "aifc", "au", "ogg", "opus", "mp3"}
"""Suffixes libsndfile reads in part when cut (the others fail to decode)."""


def noisy_tone(sampling_rate: int, seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def encoded(fmt: str, subtype: str | None, sampling_rate: int, **options) -> bytes:
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", sampling_rate, 1, format=fmt, subtype=subtype, **options) as sound:
        sound.write(noisy_tone(sampling_rate))
    return buffer.getvalue()


def mp3_frame_starts(data: bytes) -> list[int]:
    """Offsets of the MPEG-1 Layer III frames of a 44.1 kHz stream written by libsndfile (no ID3 tag)."""
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    starts, position = [], 0
    while position + 4 <= len(data) and data[position] == 0xFF and data[position + 1] & 0xE0 == 0xE0:
        starts.append(position)
        position += 144 * kbps[data[position + 2] >> 4] * 1000 // 44100 + (data[position + 2] >> 1 & 1)
    assert position == len(data), "not a plain MPEG-1 Layer III stream at 44.1 kHz"
    return starts


@pytest.mark.parametrize("suffix, fmt, subtype, sampling_rate", FORMATS, ids=[f"{f[0]}-{f[2]}" for f in FORMATS])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_file_cut_short_is_refused_in_every_format(tmp_path, suffix, fmt, subtype, sampling_rate, keep):
    data = encoded(fmt, subtype, sampling_rate)
    whole = tmp_path / f"whole.{suffix}"
    whole.write_bytes(data)
    assert abs(len(load_audio(whole)[0]) - SECONDS * 16000) < 0.06 * 16000  # whole: accepted, all of it
    assert check_complete(whole) is not None
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    if suffix in QUIETLY_SHORTENED:  # the reason for the check: libsndfile alone returns a shorter signal
        with sf.SoundFile(str(whole)) as sound:
            n_whole = len(sound.read(sound.frames))
        with sf.SoundFile(str(cut)) as sound:
            assert 0 <= len(sound.read(sound.frames)) < n_whole
    pattern = r"cut\.\w+: (truncated|cannot decode audio)"
    with pytest.raises(AudioError, match=pattern):
        load_audio(cut)
    with pytest.raises(AudioError, match=pattern):
        sum(len(block) for block in stream_audio(cut))


def test_mp3_cut_between_two_frames_is_refused_by_its_xing_frame_count(tmp_path):
    data = encoded("MP3", "MPEG_LAYER_III", 44100, bitrate_mode="CONSTANT", compression_level=0.5)
    starts = mp3_frame_starts(data)
    assert b"Xing" in data[: starts[1]] or b"Info" in data[: starts[1]]
    path = tmp_path / "cut.mp3"
    path.write_bytes(data[: starts[len(starts) // 2]])  # whole frames only: no frame is cut
    with pytest.raises(AudioError, match=r"cut\.mp3: truncated: the MP3 header declares \d+ frames \(3\.0\d s\)"):
        load_audio(path)


def test_mp3_without_a_length_header_is_read_whole_or_refused_never_in_part(tmp_path):
    constant = encoded("MP3", "MPEG_LAYER_III", 44100, bitrate_mode="CONSTANT", compression_level=0.5)
    no_header = constant[mp3_frame_starts(constant)[1] :]  # drop the Xing/Info frame
    path = tmp_path / "cbr.mp3"
    path.write_bytes(no_header + b"TAG" + bytes(125))  # and an ID3v1 tag after the audio
    assert abs(len(load_audio(path)[0]) - SECONDS * 16000) < 0.06 * 16000
    assert check_complete(path) == "mp3: frame walk"
    variable = encoded("MP3", "MPEG_LAYER_III", 44100, bitrate_mode="VARIABLE", compression_level=0.5)
    path = tmp_path / "vbr.mp3"
    path.write_bytes(variable[mp3_frame_starts(variable)[1] :])
    with sf.SoundFile(str(path)) as sound:  # libsndfile guesses the length from the first frame's bitrate
        assert len(sound.read(sound.frames)) < 0.9 * SECONDS * 44100
    with pytest.raises(AudioError, match=r"vbr\.mp3: the MP3 holds 3\.0 s of audio but .* without a Xing/VBRI header"):
        load_audio(path)


def test_ogg_cut_inside_its_last_page_is_refused(tmp_path):
    data = encoded("OGG", "VORBIS", 16000)
    last = data.rfind(b"OggS")
    path = tmp_path / "cut.ogg"
    path.write_bytes(data[: last + 40])  # the end-of-stream page's header is there, its body is not
    with pytest.raises(AudioError, match=r"cut\.ogg: truncated: the last Ogg page needs \d+ bytes, the file holds 40"):
        load_audio(path)


def test_a_format_without_a_check_says_so(tmp_path):
    path = tmp_path / "clip.nist"
    sf.write(str(path), noisy_tone(16000), 16000, format="NIST")
    assert check_complete(path) is None  # not checked here; the loader still compares decoded and declared frames
    assert len(load_audio(path)[0]) == SECONDS * 16000
