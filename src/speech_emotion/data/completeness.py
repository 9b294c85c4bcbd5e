"""Is an audio file whole? Byte-level checks for files cut short, which libsndfile would read in part.

libsndfile quietly decodes what is left of most files cut short (a copy that stopped, an
upload that broke off): a WAV, AIFF or AU file shrinks its frame count to the bytes on
disk, an Ogg stream ends at its last full page, an MP3 stops at its last full frame. The
loader (:mod:`speech_emotion.data.audio`) calls :func:`check_complete` before it decodes,
and compares the frames it decoded with the frames the header declared after.

What is checked, by container (the first bytes decide, not the file name):

==================  ==================================================================
WAV, RF64, BW64     the ``data`` chunk holds the bytes its header (or ``ds64``) declares
Sony Wave64         the ``data`` chunk holds the bytes its header declares
AIFF, AIFF-C        the ``SSND`` chunk holds the bytes its header declares
AU (``.snd``)       the file holds the data size its header declares (unless "unknown")
CAF                 the ``data`` chunk holds the bytes its header declares (unless "to the end")
Ogg (Vorbis, Opus)  the last page carries the end-of-stream flag
MP3                 the last MPEG frame is whole; with a Xing/Info/VBRI header, the file
                    holds the frames it declares; without one, the frames add up to no
                    more than the decoder will read (libsndfile reads a VBR stream
                    without such a header only in part)
FLAC                libsndfile refuses a frame cut short; the loader compares the frames
                    it decodes with STREAMINFO's total
==================  ==================================================================

Any other format libsndfile reads is **not checked** here (:func:`check_complete` returns
``None``); only the loader's decoded-against-declared frame count applies to it (it applies
to every format but MP3, whose frame count libsndfile estimates without a Xing header). An
MP3 without a Xing/VBRI header cut exactly between two frames cannot be told from a shorter
recording.

Example:
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.aiff")
    >>> sf.write(path, 0.1 * np.ones(16000), 16000)
    >>> check_complete(path)
    'aiff: SSND chunk size'
    >>> with open(path, "r+b") as stream:
    ...     _ = stream.truncate(20000)
    >>> check_complete(path)
    Traceback (most recent call last):
    ...
    speech_emotion.errors.AudioError: ...tone.aiff: truncated: the AIFF header declares 32008 bytes of samples, the file
    holds 19954; re-export or re-copy the file
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from speech_emotion.errors import AudioError

_PLACEHOLDER_SIZES = (0, 0xFFFFFFFF)
"""Chunk sizes left by writers that could not seek back (pipes, streams): not truncation."""

_W64_RIFF = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"
_W64_DATA = b"data\xf3\xac\xd3\x11\x8c\xd1\x00\xc0\x4f\x8e\xdb\x8a"

_MP3_BITRATES = {  # kbit/s by (MPEG-1?, layer), bitrate index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
_MP3_TAILS = (b"TAG", b"APETAGEX", b"LYRICS", b"ID3")
"""Tags that may follow the last MPEG frame."""

_MP3_SLACK_FRAMES = 3
"""MPEG frames by which a walk may exceed the decoder's count: encoder delay, padding, the Xing frame."""


def check_complete(path: str | Path, *, frames: int | None = None) -> str | None:
    """Refuse a file cut short; say what was checked.

    Args:
        path: the audio file.
        frames: the frame count the decoder will read (``soundfile.SoundFile.frames``), when
            known: an MP3 whose frames add up to more is refused (the decoder would stop early).

    Returns:
        What was checked (e.g. ``"wav: data chunk size"``), or ``None`` for a format this
        module cannot check (see the module docstring).

    Raises:
        AudioError: the file is truncated; the message names the file and what is missing.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        head = stream.read(16)
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return _check_wav(path)
    if head == _W64_RIFF:
        return _check_wave64(path)
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return _check_aiff(path)
    if head[:4] in (b".snd", b"dns."):
        return _check_au(path, head)
    if head[:4] == b"caff":
        return _check_caf(path)
    if head[:4] == b"OggS":
        return _check_ogg(path)
    if head[:4] == b"fLaC":
        return "flac: checked while decoding"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return _check_mp3(path, frames)
    return None


def _truncated(path: Path, container: str, declared: int, available: int) -> AudioError:
    return AudioError(
        path,
        f"truncated: the {container} header declares {declared} bytes of samples, the file holds {max(0, available)}; "
        "re-export or re-copy the file",
    )


def _check_wav(path: Path) -> str:
    """RIFF/RF64/BW64 WAVE: the data chunk against the file size (RF64 sizes come from ``ds64``)."""
    file_size = path.stat().st_size
    ds64_data: int | None = None
    with open(path, "rb") as stream:
        offset = 12
        while offset + 8 <= file_size:
            stream.seek(offset)
            chunk_id, size = struct.unpack("<4sI", stream.read(8))
            if chunk_id == b"ds64" and size >= 16:
                ds64_data = struct.unpack("<QQ", stream.read(16))[1]
            if chunk_id == b"data":
                if size == 0xFFFFFFFF and ds64_data is not None:
                    size = ds64_data
                available = file_size - offset - 8
                if size not in _PLACEHOLDER_SIZES and size > available:
                    raise _truncated(path, "WAV", size, available)
                return "wav: data chunk size"
            offset += 8 + size + (size & 1)
    return "wav: data chunk size"


def _check_wave64(path: Path) -> str:
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        offset = 40  # riff GUID, size, wave GUID
        while offset + 24 <= file_size:
            stream.seek(offset)
            guid, size = struct.unpack("<16sQ", stream.read(24))
            if guid == _W64_DATA:
                if size > file_size - offset:
                    raise _truncated(path, "Wave64", size - 24, file_size - offset - 24)
                break
            if size < 24:
                break  # a malformed chunk: libsndfile will say so
            offset += size + (-size % 8)
    return "wave64: data chunk size"


def _check_aiff(path: Path) -> str:
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        offset = 12
        while offset + 8 <= file_size:
            stream.seek(offset)
            chunk_id, size = struct.unpack(">4sI", stream.read(8))
            if chunk_id == b"SSND":
                available = file_size - offset - 8
                if size not in _PLACEHOLDER_SIZES and size > available:
                    raise _truncated(path, "AIFF", size, available)
                break
            offset += 8 + size + (size & 1)
    return "aiff: SSND chunk size"


def _check_au(path: Path, head: bytes) -> str:
    order = ">" if head[:4] == b".snd" else "<"
    data_offset, data_size = struct.unpack(f"{order}II", head[4:12])
    available = path.stat().st_size - data_offset
    if data_size != 0xFFFFFFFF and data_size > available:
        raise _truncated(path, "AU", data_size, available)
    return "au: data size"


def _check_caf(path: Path) -> str:
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        offset = 8
        while offset + 12 <= file_size:
            stream.seek(offset)
            chunk_id, size = struct.unpack(">4sq", stream.read(12))
            if chunk_id == b"data":
                available = file_size - offset - 12
                if size != -1 and size > available:
                    raise _truncated(path, "CAF", size, available)
                break
            if size < 0:
                break
            offset += 12 + size
    return "caf: data chunk size"


def _check_ogg(path: Path) -> str:
    """The last page of a whole Ogg stream is complete and carries the end-of-stream flag (byte 5, bit 2)."""
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        stream.seek(max(0, file_size - 65536))
        tail = stream.read()
    last = tail.rfind(b"OggS")
    if last < 0 or last + 27 > len(tail) or not tail[last + 5] & 0x04:
        raise AudioError(
            path, "truncated: the Ogg stream ends without its end-of-stream page; re-export or re-copy the file"
        )
    n_segments = tail[last + 26]
    table = tail[last + 27 : last + 27 + n_segments]
    needed = 27 + n_segments + sum(table)
    if len(table) < n_segments or last + needed > len(tail):
        raise AudioError(
            path,
            f"truncated: the last Ogg page needs {needed} bytes, the file holds {len(tail) - last}; re-export or "
            "re-copy the file",
        )
    return "ogg: end-of-stream page"


def _mp3_frame(header: bytes) -> tuple[int, int, tuple[int, int, int]] | None:
    """``(frame bytes, samples, (version, layer, rate))`` of an MPEG audio frame header, or ``None``."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values; bitrate index 0 is free format, whose frame size is not in the header
    layer, mpeg1 = 4 - layer_bits, version == 3
    bitrate = _MP3_BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _MP3_RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, (version, layer, rate)
    if layer == 3 and not mpeg1:
        return 72 * bitrate // rate + padding, 576, (version, layer, rate)
    return 144 * bitrate // rate + padding, 1152, (version, layer, rate)


def _check_mp3(path: Path, frames: int | None) -> str | None:
    """Walk the MPEG frames: the last must be whole, as many as a Xing/VBRI header declares, and their
    samples no more than the ``frames`` the decoder will read."""
    file_size = path.stat().st_size
    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = 0
        if data[:3] == b"ID3" and file_size >= 10:
            tag = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
            start = 10 + tag + (10 if data[5] & 0x10 else 0)
        start = _first_mp3_frame(data, start)
        if start is None:
            return None  # no frame to walk from (free format, or not MPEG audio): libsndfile decides
        first_size, samples_per_frame, kind = _mp3_frame(data[start : start + 4])
        declared = _mp3_declared_frames(data[start : start + first_size])
        position, n_frames = start, 0
        while position + 4 <= file_size:
            frame = _mp3_frame(data[position : position + 4])
            if frame is None or frame[2] != kind:
                break  # a tag or trailing bytes after the audio
            if position + frame[0] > file_size:
                raise AudioError(
                    path,
                    f"truncated: the MP3 frame at byte {position} needs {frame[0]} bytes, the file holds "
                    f"{file_size - position}; re-export or re-copy the file",
                )
            position += frame[0]
            n_frames += 1
    rate = kind[2]
    if declared is not None:
        n_audio = n_frames - 1  # the Xing/Info/VBRI frame holds no audio
        if n_audio + 1 < declared:  # some encoders count the info frame too
            raise AudioError(
                path,
                f"truncated: the MP3 header declares {declared} frames ({declared * samples_per_frame / rate:.2f} s), "
                f"the file holds {n_audio} ({n_audio * samples_per_frame / rate:.2f} s); re-export or re-copy the file",
            )
        return "mp3: frame walk against the Xing/VBRI frame count"
    samples = n_frames * samples_per_frame
    if frames is not None and samples > frames + _MP3_SLACK_FRAMES * samples_per_frame:
        raise AudioError(
            path,
            f"the MP3 holds {samples / rate:.1f} s of audio but its header lets the decoder read only "
            f"{frames / rate:.1f} s (a variable-bitrate stream without a Xing/VBRI header); re-encode it, e.g. "
            "`ffmpeg -i FILE out.flac`",
        )
    return "mp3: frame walk"


def _mp3_declared_frames(first: bytes) -> int | None:
    """Frames declared by a Xing/Info or VBRI header in the first MPEG frame, if it has one."""
    for tag in (b"Xing", b"Info"):
        at = first.find(tag, 4, 64)
        if at >= 0 and at + 12 <= len(first):
            flags, count = struct.unpack(">II", first[at + 4 : at + 12])
            return count if flags & 1 else None
    if first[36:40] == b"VBRI" and len(first) >= 54:
        return struct.unpack(">I", first[50:54])[0]
    return None


def _first_mp3_frame(data: mmap.mmap, start: int, *, search: int = 65536) -> int | None:
    """The first offset from ``start`` where two MPEG frames follow each other (or one ends the file)."""
    end = min(len(data) - 4, start + search)
    position = data.find(b"\xff", start, end + 1)
    while 0 <= position <= end:
        frame = _mp3_frame(data[position : position + 4])
        if frame is not None:
            following = position + frame[0]
            if following >= len(data):
                return position
            after = _mp3_frame(data[following : following + 4])
            if after is not None and after[2] == frame[2]:
                return position
        position = data.find(b"\xff", position + 1, end + 1)
    return None
