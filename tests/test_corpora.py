"""Corpus adapters on tiny synthesized folders that follow each corpus's published naming.

The adapters read names only, so most files here are empty; decoding is tested in
test_audio.py and test_dataset.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speech_emotion.data import CORPORA, read_corpus
from speech_emotion.data.corpora import detect_corpus, find_audio
from speech_emotion.errors import CorpusError


def touch(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def rows(manifest) -> dict:
    """file name → (speaker, label, corpus)."""
    return {Path(u.path).name: (u.speaker, u.label, u.corpus) for u in manifest}


# --- one builder per corpus, in its published layout --------------------------------------


def ravdess_folder(root: Path) -> Path:
    return touch(
        root,
        "Actor_05/03-01-05-02-01-01-05.wav",  # speech, angry, strong
        "Actor_05/03-02-06-01-02-01-05.wav",  # song, fearful, normal
        "Actor_12/03-01-01-01-01-02-12.wav",  # speech, neutral
        "Actor_12/03-01-02-02-02-01-12.wav",  # speech, calm
    )


def crema_d_folder(root: Path) -> Path:
    return touch(root, "AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1002_IEO_HAP_HI.wav", "AudioWAV/1091_TSI_FEA_LO.wav")


def tess_folder(root: Path) -> Path:
    return touch(
        root,
        "OAF_angry/OAF_back_angry.wav",
        "OAF_Fear/OAF_bath_fear.wav",
        "YAF_pleasant_surprised/YAF_back_ps.wav",
        "YAF_neutral/YAF_germ_neutral.wav",
    )


def savee_flat_folder(root: Path) -> Path:
    return touch(root, "ALL/DC_a01.wav", "ALL/JE_sa02.wav", "ALL/KL_su15.wav", "ALL/JK_n30.wav")


def savee_nested_folder(root: Path) -> Path:
    return touch(root, "AudioData/DC/a01.wav", "AudioData/JE/sa02.wav", "AudioData/KL/su15.wav", "AudioData/JK/f03.wav")


def emodb_folder(root: Path) -> Path:
    return touch(root, "wav/03a01Fa.wav", "wav/10b09Wb.wav", "wav/16a02Lc.wav", "wav/08a05Tb.wav")


def label_folders(root: Path) -> Path:
    return touch(root, "angry/spk1_001.wav", "fear/spk2_002.wav", "Sadness/spk1_003.wav", "neutral/spk3_004.wav")


@pytest.mark.parametrize(
    "build, expected",
    [
        (ravdess_folder, "ravdess"),
        (crema_d_folder, "crema-d"),
        (tess_folder, "tess"),
        (savee_flat_folder, "savee"),
        (savee_nested_folder, "savee"),
        (emodb_folder, "emodb"),
        (label_folders, "folder"),
    ],
)
def test_auto_detection_picks_each_corpus(tmp_path, build, expected):
    root = build(tmp_path / "corpus")
    assert detect_corpus(root, find_audio(root)) == expected
    manifest = read_corpus(root, speaker_pattern=r"(spk\d+)_")
    assert len(manifest) == 4 or (expected == "crema-d" and len(manifest) == 3)
    assert manifest.problems == []
    assert {u.corpus for u in manifest} == {expected}


def test_ravdess_speech_and_song(tmp_path):
    manifest = read_corpus(ravdess_folder(tmp_path))
    assert rows(manifest) == {
        "03-01-05-02-01-01-05.wav": ("05", "angry", "ravdess"),
        "03-02-06-01-02-01-05.wav": ("05", "fearful", "ravdess"),
        "03-01-01-01-01-02-12.wav": ("12", "neutral", "ravdess"),
        "03-01-02-02-02-01-12.wav": ("12", "calm", "ravdess"),
    }
    speech, song = manifest[0], manifest[1]
    assert speech.fields == {
        "modality": "audio-only",
        "vocal_channel": "speech",
        "intensity": "strong",
        "statement": 1,
        "repetition": 1,
        "sex": "male",
    }
    assert song.fields["vocal_channel"] == "song"
    assert song.fields["intensity"] == "normal"
    assert manifest[2].fields["sex"] == "female"


def test_ravdess_speaker_ids_are_two_digit_actor_numbers(tmp_path):
    manifest = read_corpus(touch(tmp_path, "03-01-05-01-01-01-05.wav", "03-01-05-01-01-01-21.wav"))
    assert manifest.speakers == ["05", "21"]
    assert all(len(s) == 2 for s in manifest.speakers)


def test_ravdess_names_out_of_range_are_problems(tmp_path):
    # emotion 09 and vocal channel 03 do not exist; the files are reported, not skipped
    touch(tmp_path, "03-01-05-01-01-01-05.wav", "03-01-05-01-01-02-05.wav", "03-01-05-01-02-02-05.wav")
    touch(tmp_path, "03-01-09-01-01-01-05.wav", "03-03-01-01-01-01-05.wav")
    manifest = read_corpus(tmp_path)
    assert len(manifest) == 3
    assert sorted(Path(p.path).name for p in manifest.problems) == [
        "03-01-09-01-01-01-05.wav",
        "03-03-01-01-01-01-05.wav",
    ]


def test_crema_d(tmp_path):
    manifest = read_corpus(crema_d_folder(tmp_path))
    assert rows(manifest) == {
        "1001_DFA_ANG_XX.wav": ("1001", "angry", "crema-d"),
        "1002_IEO_HAP_HI.wav": ("1002", "happy", "crema-d"),
        "1091_TSI_FEA_LO.wav": ("1091", "fearful", "crema-d"),
    }
    assert manifest[0].fields == {"statement": "DFA", "intensity": "unspecified"}
    assert manifest[1].fields["intensity"] == "high"


def test_tess(tmp_path):
    manifest = read_corpus(tess_folder(tmp_path))
    assert rows(manifest) == {
        "OAF_back_angry.wav": ("OAF", "angry", "tess"),
        "OAF_bath_fear.wav": ("OAF", "fearful", "tess"),
        "YAF_back_ps.wav": ("YAF", "surprised", "tess"),
        "YAF_germ_neutral.wav": ("YAF", "neutral", "tess"),
    }
    assert manifest.speakers == ["OAF", "YAF"]
    fields = {Path(u.path).name: u.fields for u in manifest}
    assert fields["OAF_back_angry.wav"] == {"word": "back", "sex": "female"}


@pytest.mark.parametrize("build", [savee_flat_folder, savee_nested_folder])
def test_savee_both_layouts(tmp_path, build):
    manifest = read_corpus(build(tmp_path))
    labels = {(u.speaker, u.label, u.fields["sentence"]) for u in manifest}
    assert ("DC", "angry", "01") in labels
    assert ("JE", "sad", "02") in labels
    assert ("KL", "surprised", "15") in labels
    assert manifest.speakers == ["DC", "JE", "JK", "KL"]


def test_emodb(tmp_path):
    manifest = read_corpus(emodb_folder(tmp_path))
    assert rows(manifest) == {
        "03a01Fa.wav": ("03", "happy", "emodb"),
        "10b09Wb.wav": ("10", "angry", "emodb"),
        "16a02Lc.wav": ("16", "boredom", "emodb"),
        "08a05Tb.wav": ("08", "sad", "emodb"),
    }
    assert manifest[0].fields == {"text": "a01", "version": "a", "sex": "male"}
    assert rows(manifest)["16a02Lc.wav"][1] == "boredom"


def test_label_folders_with_speaker_pattern_and_synonyms(tmp_path):
    manifest = read_corpus(label_folders(tmp_path), speaker_pattern=r"(?P<speaker>spk\d+)_")
    assert rows(manifest) == {
        "spk1_001.wav": ("spk1", "angry", "folder"),
        "spk2_002.wav": ("spk2", "fearful", "folder"),
        "spk1_003.wav": ("spk1", "sad", "folder"),
        "spk3_004.wav": ("spk3", "neutral", "folder"),
    }
    assert manifest.synonyms == {"fear": "fearful", "Sadness": "sad"}


def test_label_folders_speaker_from_first_group_or_whole_match(tmp_path):
    label_folders(tmp_path)
    assert read_corpus(tmp_path, corpus="folder", speaker_pattern=r"(spk\d)_").speakers == ["spk1", "spk2", "spk3"]
    assert read_corpus(tmp_path, corpus="folder", speaker_pattern=r"spk\d").speakers == ["spk1", "spk2", "spk3"]


def test_label_folders_need_a_speaker_pattern(tmp_path):
    with pytest.raises(CorpusError, match=r"does not say who speaks; pass --speaker-pattern REGEX"):
        read_corpus(label_folders(tmp_path))


def test_label_folders_bad_regex(tmp_path):
    with pytest.raises(CorpusError, match=r"--speaker-pattern '\(spk' is not a valid regex"):
        read_corpus(label_folders(tmp_path), speaker_pattern="(spk")


def test_label_folders_report_unmatched_and_loose_files(tmp_path):
    label_folders(tmp_path)
    touch(tmp_path, "angry/unknown.wav", "loose_spk9_005.wav")
    manifest = read_corpus(tmp_path, corpus="folder", speaker_pattern=r"(spk\d+)_")
    problems = {Path(p.path).name: p.reason for p in manifest.problems}
    assert problems == {
        "unknown.wav": "--speaker-pattern '(spk\\\\d+)_' does not match the file name 'unknown.wav'",
        "loose_spk9_005.wav": "not inside a label folder (expected root/<label>/file)",
    }
    assert len(manifest) == 4


def write_table(path: Path, delimiter: str) -> Path:
    touch(path.parent, "clips/a.wav", "clips/b.wav", "clips/c.wav")
    lines = [
        ["path", "label", "speaker", "gender", "session"],
        ["clips/a.wav", "fear", "s1", "f", "1"],
        ["clips/b.wav", "Anger", "s2", "m", "2"],
        ["clips/c.wav", "happy", "s1", "f", "2"],
    ]
    path.write_text("\n".join(delimiter.join(line) for line in lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name, delimiter", [("meta.csv", ","), ("meta.tsv", "\t")])
def test_table_manifest(tmp_path, name, delimiter):
    table = write_table(tmp_path / "data" / name, delimiter)
    manifest = read_corpus(table)
    assert [Path(p) for p in manifest.paths] == [
        (tmp_path / "data" / "clips" / f).resolve() for f in ("a.wav", "b.wav", "c.wav")
    ]
    assert [(u.speaker, u.label, u.corpus) for u in manifest] == [
        ("s1", "fearful", "csv"),
        ("s2", "angry", "csv"),
        ("s1", "happy", "csv"),
    ]
    assert manifest[0].fields == {"gender": "f", "session": "1"}
    assert manifest.synonyms == {"fear": "fearful", "Anger": "angry"}
    assert read_corpus(table, corpus="csv").paths == manifest.paths


def test_table_absolute_paths_kept(tmp_path):
    clip = touch(tmp_path, "x/a.wav") / "x" / "a.wav"
    table = tmp_path / "elsewhere" / "m.csv"
    table.parent.mkdir()
    table.write_text(f"path,label,speaker\n{clip},sad,s1\n")
    assert read_corpus(table).paths == [str(clip)]


def test_table_missing_columns(tmp_path):
    table = tmp_path / "m.csv"
    table.write_text("file,emotion,speaker\na.wav,sad,s1\n")
    with pytest.raises(
        CorpusError,
        match=r"m\.csv: missing column\(s\) label, path; expected a header with path,label,speaker \(got file, "
        r"emotion, speaker\)",
    ):
        read_corpus(table)


def test_table_row_without_label_is_a_problem(tmp_path):
    table = tmp_path / "m.csv"
    table.write_text("path,label,speaker\na.wav,sad,s1\nb.wav,,s2\n")
    manifest = read_corpus(table)
    assert len(manifest) == 1
    assert [(Path(p.path).name, p.reason) for p in manifest.problems] == [
        ("b.wav", "m.csv line 3: empty label or speaker")
    ]


def test_table_that_is_not_text(tmp_path):
    table = tmp_path / "m.csv"
    table.write_bytes(b"path,label\n\xff\xfe\x80\x81")
    with pytest.raises(CorpusError, match=r"m\.csv: cannot read it as a UTF-8 ','-separated table"):
        read_corpus(table)


def test_audio_file_given_as_data(tmp_path):
    clip = touch(tmp_path, "03-01-05-01-01-01-05.wav") / "03-01-05-01-01-01-05.wav"
    with pytest.raises(CorpusError, match=r"expected a corpus folder or a \.csv/\.tsv manifest .* got a \.wav file"):
        read_corpus(clip)


def test_file_with_folder_corpus_and_folder_with_csv_corpus(tmp_path):
    table = write_table(tmp_path / "m.csv", ",")
    with pytest.raises(CorpusError, match=r"a file can only be read as --corpus csv, got --corpus ravdess"):
        read_corpus(table, corpus="ravdess")
    with pytest.raises(CorpusError, match=r"--corpus csv expects a \.csv or \.tsv file, got a folder"):
        read_corpus(tmp_path, corpus="csv")


def test_corpus_override(tmp_path):
    # RAVDESS-named files in label folders: detection says ravdess, --corpus folder says otherwise
    touch(tmp_path, "happy/03-01-05-01-01-01-05.wav", "sad/03-01-05-01-01-01-06.wav", "sad/03-01-05-01-01-02-06.wav")
    assert {u.label for u in read_corpus(tmp_path)} == {"angry"}
    forced = read_corpus(tmp_path, corpus="folder", speaker_pattern=r"-(\d\d)\.wav$")
    assert rows(forced)["03-01-05-01-01-01-05.wav"] == ("05", "happy", "folder")
    assert forced.label_counts() == {"happy": 1, "sad": 2}


def test_corpus_override_that_does_not_fit_reports_every_file(tmp_path):
    ravdess_folder(tmp_path)
    manifest = read_corpus(tmp_path, corpus="crema-d")
    assert len(manifest) == 0
    assert len(manifest.problems) == 4
    assert {p.reason for p in manifest.problems} == {"file name does not follow the crema-d naming scheme"}


def test_unknown_corpus_name(tmp_path):
    ravdess_folder(tmp_path)
    with pytest.raises(
        CorpusError,
        match=r"unknown corpus 'iemocap'; expected one of: ravdess, crema-d, tess, savee, emodb, folder, csv",
    ):
        read_corpus(tmp_path, corpus="iemocap")
    assert CORPORA == ("ravdess", "crema-d", "tess", "savee", "emodb", "folder", "csv")


def test_missing_data_and_empty_folder(tmp_path):
    with pytest.raises(CorpusError, match=r"nothing: no such file or folder"):
        read_corpus(tmp_path / "nothing")
    (tmp_path / "README.txt").write_text("hello")
    with pytest.raises(CorpusError, match=r"no audio files found"):
        read_corpus(tmp_path)


def test_undetectable_corpus_names_the_best_guess(tmp_path):
    touch(tmp_path, "a.wav", "b.wav", "c.wav", "03-01-05-01-01-01-05.wav")
    with pytest.raises(
        CorpusError,
        match=r"cannot tell which corpus this is: .* 4 audio files \(best: ravdess, 1 files\); pass --corpus",
    ):
        read_corpus(tmp_path)


def test_symlinked_folders_are_followed(tmp_path):
    outside = ravdess_folder(tmp_path / "outside")
    root = tmp_path / "corpus"
    root.mkdir()
    os.symlink(outside / "Actor_05", root / "Actor_05")
    os.symlink(outside / "Actor_12", root / "Actor_12")
    manifest = read_corpus(root)
    assert len(manifest) == 4
    assert all(p.startswith(str(root)) for p in manifest.paths)
    assert manifest.speakers == ["05", "12"]


def test_non_audio_ignored_and_unparseable_audio_reported_by_name(tmp_path):
    ravdess_folder(tmp_path)
    (tmp_path / "README.txt").write_text("RAVDESS")
    (tmp_path / "Actor_05" / "notes.md").write_text("")
    touch(tmp_path, "Actor_05/take_two.wav")
    manifest = read_corpus(tmp_path)
    assert len(manifest) == 4
    assert [p.to_dict() for p in manifest.problems] == [
        {
            "path": str(tmp_path / "Actor_05" / "take_two.wav"),
            "reason": "file name does not follow the ravdess naming scheme",
        }
    ]
    assert not any("README" in p for p in manifest.paths)


def test_upper_case_extensions_are_audio(tmp_path):
    touch(tmp_path, "03-01-05-01-01-01-05.WAV", "03-01-05-01-01-02-05.Flac")
    assert len(read_corpus(tmp_path)) == 2


def test_manifest_is_sorted_by_path(tmp_path):
    ravdess_folder(tmp_path)
    paths = read_corpus(tmp_path).paths
    assert paths == sorted(paths)


def test_symbolic_link_loops_visit_each_real_folder_once(tmp_path):
    # `again -> .` listed every clip 41 times; with a second loop the walk never ended. Run in a
    # subprocess with a deadline, so a regression fails instead of hanging the suite.
    root = tmp_path / "corpus"
    for actor in ("01", "02"):
        (root / f"Actor_{actor}").mkdir(parents=True)
        (root / f"Actor_{actor}" / f"03-01-01-01-01-01-{actor}.wav").write_bytes(b"")
    os.symlink(".", root / "again")
    os.symlink("..", root / "Actor_01" / "up")
    os.symlink(root / "Actor_02" / "03-01-01-01-01-01-02.wav", root / "Actor_01" / "alias.wav")  # one real file, twice
    script = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from speech_emotion.data.corpora import find_audio\n"
        f"print(json.dumps([str(p) for p in find_audio({str(root)!r})]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = [Path(p).relative_to(root).as_posix() for p in json.loads(done.stdout)]
    assert found == ["Actor_01/03-01-01-01-01-01-01.wav", "Actor_01/alias.wav"]
    assert "1 file(s) reached twice through symbolic links, counted once" in done.stderr
    assert "Actor_02/03-01-01-01-01-01-02.wav (the same file as" in done.stderr


def test_a_file_name_that_is_not_utf8_is_reported_as_such_not_as_a_naming_problem(tmp_path):
    touch(tmp_path, "Actor_01/03-01-05-01-01-01-01.wav", "Actor_01/03-01-03-01-01-02-01.wav")
    (tmp_path / "Actor_01" / "03-01-05-01-01-01-01.wav").rename(
        tmp_path / "Actor_01" / os.fsdecode(b"03-01-05-01-01-01-01\xe9.wav")  # a real Latin-1 name on disk
    )
    manifest = read_corpus(tmp_path, corpus="ravdess")
    assert len(manifest) == 1
    (problem,) = manifest.problems
    assert problem.path.endswith("03-01-05-01-01-01-01\\xe9.wav")  # printable: the bad byte shown escaped
    assert problem.reason.startswith("the file name is not valid UTF-8 (bytes e9); rename the file")
    json.dumps(problem.to_dict(), ensure_ascii=False).encode("utf-8")  # reports can write it
    (tmp_path / "folders" / "angry").mkdir(parents=True)
    (tmp_path / "folders" / "angry" / os.fsdecode(b"spk1_\xff.wav")).write_bytes(b"")
    folders = read_corpus(tmp_path / "folders", corpus="folder", speaker_pattern=r"(spk\d+)_")
    assert "not valid UTF-8 (bytes ff)" in folders.problems[0].reason
