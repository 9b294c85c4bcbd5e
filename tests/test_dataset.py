"""load_dataset: read, label, decode and hash a corpus at the boundary; nothing dropped silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tone
from speech_emotion.data import load_dataset
from speech_emotion.errors import CorpusError, LabelError


def ravdess_name(actor: int, emotion: int, statement: int = 1, repetition: int = 1) -> str:
    return f"Actor_{actor:02d}/03-01-{emotion:02d}-01-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """3 actors × emotions neutral, calm, happy, angry: 12 distinct 0.5 s tones."""
    root = tmp_path / "corpus"
    for k, (actor, emotion) in enumerate((a, e) for a in (1, 2, 3) for e in (1, 2, 3, 5)):
        tone(root / ravdess_name(actor, emotion), freq=200 + 10 * k, seconds=0.5)
    return root


def test_loads_labels_and_hashes(small_corpus):
    dataset = load_dataset(small_corpus, labels="ravdess-7")
    assert len(dataset) == 12
    assert dataset.problems == []
    assert dataset.schema.n_classes == 7
    assert sorted(set(dataset.speakers)) == ["01", "02", "03"]
    assert np.bincount(dataset.y, minlength=7).tolist() == [6, 3, 0, 3, 0, 0, 0]
    assert len(set(dataset.hashes)) == 12
    assert dataset.durations == pytest.approx([0.5] * 12)
    assert dataset.paths == sorted(dataset.paths)
    report = dataset.label_report
    assert report["counts_before"] == {"neutral": 3, "calm": 3, "happy": 3, "angry": 3}
    assert report["counts_after"]["neutral"] == 6
    assert report["encoded_values"] == [0, 1, 3]


def test_without_labels_every_raw_label_is_a_class(small_corpus):
    dataset = load_dataset(small_corpus)
    assert dataset.schema.classes == ("neutral", "calm", "happy", "angry")
    assert dataset.label_report["encoded_values"] == [0, 1, 2, 3]


def test_bad_files_are_an_error_listing_each_file_and_reason(small_corpus):
    (small_corpus / ravdess_name(1, 3, repetition=2)).write_bytes(b"not audio at all")
    tone(small_corpus / ravdess_name(2, 3, repetition=2), seconds=0.1)
    with pytest.raises(CorpusError, match=r"2 file\(s\) cannot be used:") as info:
        load_dataset(small_corpus, labels="ravdess-8")
    message = str(info.value)
    assert "03-01-03-01-01-02-01.wav: cannot decode audio" in message
    assert "03-01-03-01-01-02-02.wav: too short: 0.100 s, expected at least 0.25 s" in message
    assert "pass --skip-bad to leave them out" in message


def test_skip_bad_lists_every_file_left_out(small_corpus):
    (small_corpus / ravdess_name(1, 3, repetition=2)).write_bytes(b"")
    tone(small_corpus / ravdess_name(2, 3, repetition=2), seconds=0.1)
    tone(small_corpus / "Actor_03" / "take_2.wav")
    dataset = load_dataset(small_corpus, labels="ravdess-8", skip_bad=True)
    assert len(dataset) == 12
    reasons = {Path(p.path).name: p.reason for p in dataset.problems}
    assert reasons == {
        "take_2.wav": "file name does not follow the ravdess naming scheme",
        "03-01-03-01-01-02-01.wav": "empty: the file is 0 bytes",
        "03-01-03-01-01-02-02.wav": "too short: 0.100 s, expected at least 0.25 s",
    }
    n_audio = sum(1 for _ in small_corpus.rglob("*.wav"))
    assert len(dataset) + len(dataset.problems) == n_audio == 15
    assert len(dataset.y) == len(dataset.hashes) == len(dataset.durations) == len(dataset.manifest) == 12


def test_an_unparseable_name_alone_is_an_error_without_skip_bad(small_corpus):
    tone(small_corpus / "Actor_03" / "take_2.wav")
    with pytest.raises(CorpusError, match=r"take_2\.wav: file name does not follow the ravdess naming scheme"):
        load_dataset(small_corpus)


def test_min_duration(small_corpus):
    tone(small_corpus / ravdess_name(3, 3, repetition=2), seconds=0.1)
    assert len(load_dataset(small_corpus, min_duration=0.05)) == 13
    with pytest.raises(CorpusError, match=r"too short: 0\.500 s, expected at least 1\.0 s"):
        load_dataset(small_corpus, min_duration=1.0)


def test_uncovered_label_is_refused_before_decoding(small_corpus):
    with pytest.raises(LabelError, match=r"'calm' \(3 files, e\.g\. .*03-01-02-01-01-01-01\.wav"):
        load_dataset(small_corpus, labels={"classes": ["neutral", "happy", "angry"]})


def test_dropped_labels_are_reported_not_problems(small_corpus):
    dataset = load_dataset(small_corpus, labels={"classes": ["neutral", "happy", "angry"], "drop": ["calm"]})
    assert len(dataset) == 9
    assert dataset.problems == []
    assert dataset.label_report["dropped"] == {"calm": 3}
    assert dataset.label_report["encoded_values"] == [0, 1, 2]


def test_hole_mapping_is_refused(small_corpus):
    with pytest.raises(LabelError, match=r"index 1 is unused"):
        load_dataset(small_corpus, labels={"neutral": 0, "calm": 0, "happy": 2, "angry": 3})


def test_identical_audio_hashes_the_same(small_corpus):
    src = small_corpus / ravdess_name(1, 1)
    dst = small_corpus / ravdess_name(2, 1, repetition=2)
    dst.write_bytes(src.read_bytes())
    dataset = load_dataset(small_corpus)
    by_path = dict(zip(dataset.paths, dataset.hashes))
    assert by_path[str(src)] == by_path[str(dst)]


def test_progress_is_called_once_per_file(small_corpus):
    calls = []
    load_dataset(small_corpus, progress=calls.append)
    assert calls == [1] * 12


def test_table_rows_pointing_nowhere_are_problems(tmp_path):
    tone(tmp_path / "clips" / "a.wav")
    tone(tmp_path / "clips" / "b.wav", freq=300)
    table = tmp_path / "m.csv"
    table.write_text("path,label,speaker\nclips/a.wav,fear,s1\nclips/b.wav,sad,s2\nclips/gone.wav,sad,s2\n")
    dataset = load_dataset(table, skip_bad=True)
    assert [(Path(p.path).name, p.reason) for p in dataset.problems] == [("gone.wav", "file not found")]
    assert dataset.schema.classes == ("sad", "fearful")
    assert dataset.label_report["synonyms"] == {"fear": "fearful"}


def test_real_ravdess_sample(ravdess, tmp_path):
    """A handful of real clips, symlinked: decoded at 16 kHz with distinct hashes."""
    root = tmp_path / "real"
    for actor in ("Actor_01", "Actor_02"):
        (root / actor).mkdir(parents=True)
        for clip in sorted((ravdess / actor).iterdir())[:3]:
            (root / actor / clip.name).symlink_to(clip)
    dataset = load_dataset(root, labels="ravdess-8")
    assert len(dataset) == 6
    assert sorted(set(dataset.speakers)) == ["01", "02"]
    assert len(set(dataset.hashes)) == 6
    assert all(1.0 < d < 10.0 for d in dataset.durations)
