"""`ser data inspect` and `ser data split`: JSON alone on stdout with --json, errors on stderr, exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import tone
from speech_emotion.cli.app import app
from speech_emotion.data import Split, load_dataset, speaker_disjoint_split
from speech_emotion.data.splits import RANDOM

runner = CliRunner()

RAVDESS_7 = ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
SEED_HOLE_MAPPING = {
    "neutral": 0,
    "calm": 0,
    "happy": 2,
    "sad": 3,
    "angry": 4,
    "fearful": 5,
    "disgust": 6,
    "surprise": 7,
}
SEED_FIXED_MAPPING = {
    "neutral": 0,
    "calm": 0,
    "happy": 1,
    "sad": 2,
    "angry": 3,
    "fearful": 4,
    "disgust": 5,
    "surprise": 6,
}


def ser(*args):
    return runner.invoke(app, [str(a) for a in args])


def json_out(result) -> dict:
    """The command succeeded and stdout is exactly one line of JSON."""
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got: {result.stdout[:500]!r}"
    return json.loads(lines[0])


def one_line(text: str) -> str:
    return " ".join(text.split())


def ravdess_name(actor: int, emotion: int, statement: int = 1, repetition: int = 1) -> str:
    return f"Actor_{actor:02d}/03-01-{emotion:02d}-01-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


@pytest.fixture
def tones(tmp_path) -> Path:
    """4 actors × emotions neutral, calm, happy, sad, angry: 20 distinct 0.3 s tones."""
    root = tmp_path / "tones"
    k = 0
    for actor in (1, 2, 3, 4):
        for emotion in (1, 2, 3, 4, 5):
            tone(root / ravdess_name(actor, emotion), freq=150 + 7 * k, seconds=0.3)
            k += 1
    return root


def real_sample(ravdess: Path, root: Path, actors=(1, 2, 3, 4), per_actor: int = 4) -> Path:
    """The first clips of a few real RAVDESS actors, symlinked (nothing written in ../shared)."""
    for actor in actors:
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for clip in sorted((ravdess / folder.name).iterdir())[:per_actor]:
            (folder / clip.name).symlink_to(clip)
    return root


# --- inspect: acceptance on the real corpus ---------------------------------------------------------


def test_inspect_real_ravdess_7(ravdess):
    result = ser("data", "inspect", ravdess, "--labels", "ravdess-7", "--json")
    out = json_out(result)
    assert out["n_files"] == 1080
    assert out["speakers"] == [f"{i:02d}" for i in range(1, 19)]
    assert out["classes"] == RAVDESS_7
    assert len(out["classes"]) == 7
    assert out["label_to_index"] == {**{c: i for i, c in enumerate(RAVDESS_7)}, "calm": 0}
    assert out["encoded_values"] == [0, 1, 2, 3, 4, 5, 6]
    assert out["counts_after"]["neutral"] == 216
    assert sum(out["counts_after"].values()) == 1080
    assert out["counts_before"]["calm"] == 144 and out["counts_before"]["neutral"] == 72
    assert out["problems"] == []
    # people's tables went to stderr
    assert "Classes (after mapping): K = 7" in one_line(result.stderr)


def test_inspect_without_json_prints_nothing_on_stdout(tones):
    result = ser("data", "inspect", tones, "--labels", "ravdess-7")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    stderr = one_line(result.stderr)
    assert "encoded values: [0, 1, 2, 3]" in stderr
    assert "merged: calm → neutral" in stderr
    assert "20 files, 4 speakers: 01, 02, 03, 04" in stderr


# --- the hole ------------------------------------------------------------------------------------


@pytest.fixture
def hole_json(tmp_path) -> Path:
    path = tmp_path / "seed_labels.json"
    path.write_text(json.dumps(SEED_HOLE_MAPPING))
    return path


def test_inspect_refuses_the_seed_hole_mapping(tones, hole_json):
    result = ser("data", "inspect", tones, "--labels", hole_json, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    stderr = one_line(result.stderr)
    assert "seed_labels.json: label_to_index indices are not contiguous" in stderr
    assert "(index 1 is unused)" in stderr
    assert (
        'Corrected mapping: {"neutral": 0, "calm": 0, "happy": 1, "sad": 2, "angry": 3, "fearful": 4, "disgust": 5, '
        '"surprise": 6}' in stderr
    )
    assert "Traceback" not in result.stderr


def test_inspect_refuses_the_seed_hole_mapping_on_real_ravdess(ravdess, hole_json):
    result = ser("data", "inspect", ravdess, "--labels", hole_json, "--json")
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "index 1 is unused" in one_line(result.stderr)


def test_inspect_refuses_the_hole_as_inline_json(tones):
    result = ser("data", "inspect", tones, "--labels", json.dumps(SEED_HOLE_MAPPING))
    assert result.exit_code == 1
    assert "index 1 is unused" in one_line(result.stderr)


def test_inspect_accepts_the_corrected_mapping(tones, tmp_path):
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(SEED_FIXED_MAPPING))
    by_file = json_out(ser("data", "inspect", tones, "--labels", fixed, "--json"))
    by_name = json_out(ser("data", "inspect", tones, "--labels", "ravdess-7", "--json"))
    assert by_file["classes"] == by_name["classes"] == RAVDESS_7
    assert by_file["label_to_index"] == by_name["label_to_index"]
    assert by_file["counts_after"] == by_name["counts_after"]
    assert by_file["encoded_values"] == [0, 1, 2, 3]


def test_inspect_names_a_label_the_schema_does_not_cover(tones, tmp_path):
    schema = tmp_path / "s.yaml"
    schema.write_text("classes: [neutral, happy, sad, angry]\n")
    result = ser("data", "inspect", tones, "--labels", schema)
    assert result.exit_code == 1
    stderr = one_line(result.stderr)
    assert "'calm' (4 files, e.g." in stderr
    assert "03-01-02-01-01-01-01.wav" in stderr


def test_inspect_unknown_labels_name(tones):
    result = ser("data", "inspect", tones, "--labels", "ravdess7")
    assert result.exit_code == 1
    assert "--labels 'ravdess7': not a built-in schema (ravdess-8, ravdess-7, common-4" in one_line(result.stderr)


# --- inspect: nothing dropped without a line in problems ---------------------------------------------


@pytest.fixture
def messy(ravdess, tmp_path) -> Path:
    """Good real clips plus one corrupt, empty, 0.1 s, truncated, stereo-48k and badly named file."""
    root = real_sample(ravdess, tmp_path / "messy", actors=(1, 2), per_actor=4)
    (root / ravdess_name(1, 8, 2, 2)).write_bytes(np.random.default_rng(0).bytes(3000))  # corrupt
    (root / ravdess_name(2, 8, 2, 2)).write_bytes(b"")  # empty
    tone(root / ravdess_name(1, 7, 2, 2), seconds=0.1)  # too short
    cut = tone(root / ravdess_name(2, 7, 2, 2), seconds=1.0)
    cut.write_bytes(cut.read_bytes()[:20000])  # truncated: header says 1 s
    tone(root / ravdess_name(1, 6, 2, 2), seconds=1.0, sampling_rate=48000, channels=2)  # stereo 48 kHz
    tone(root / "Actor_02" / "interview_take3.wav", seconds=1.0)  # not a RAVDESS name
    (root / "README.txt").write_text("not audio, ignored")
    return root


def test_inspect_lists_every_bad_file_with_its_reason(messy):
    out = json_out(ser("data", "inspect", messy, "--json"))
    reasons = {Path(p["path"]).name: p["reason"] for p in out["problems"]}
    assert set(reasons) == {
        "03-01-08-01-02-02-01.wav",
        "03-01-08-01-02-02-02.wav",
        "03-01-07-01-02-02-01.wav",
        "03-01-07-01-02-02-02.wav",
        "interview_take3.wav",
    }
    assert reasons["03-01-08-01-02-02-01.wav"].startswith("cannot decode audio")
    assert reasons["03-01-08-01-02-02-02.wav"] == "empty: the file is 0 bytes"
    assert reasons["03-01-07-01-02-02-01.wav"] == "too short: 0.100 s, expected at least 0.25 s"
    assert reasons["03-01-07-01-02-02-02.wav"].startswith("truncated: the WAV header declares 32000 bytes")
    assert reasons["interview_take3.wav"] == "file name does not follow the ravdess naming scheme"
    # the stereo 48 kHz clip loads: 8 real clips + 1
    assert out["n_files"] == 9
    assert out["counts_after"]["fearful"] == 1
    n_audio = sum(1 for p in messy.rglob("*") if p.suffix == ".wav" or p.suffix == ".flac")
    assert out["n_files"] + len(out["problems"]) == n_audio == 14


def test_inspect_problems_also_on_stderr_without_json(messy):
    result = ser("data", "inspect", messy)
    assert result.exit_code == 0
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(lines) == 5
    assert any(
        line.endswith("interview_take3.wav: file name does not follow the ravdess naming scheme") for line in lines
    )


def test_stereo_48k_clip_is_loaded_as_mono_16k(messy):
    dataset = load_dataset(messy, skip_bad=True)
    row = [Path(p).name for p in dataset.paths].index("03-01-06-01-02-02-01.wav")
    assert dataset.durations[row] == pytest.approx(1.0)


# --- inspect: corpora and options ------------------------------------------------------------------


def test_inspect_folder_corpus_with_speaker_pattern_and_synonyms(tmp_path):
    for i, label in enumerate(["fear", "fear", "surprise", "anger", "happiness", "sadness"]):
        tone(tmp_path / "c" / label / f"spk{i % 2}_{i}.wav", freq=200 + 20 * i, seconds=0.3)
    out = json_out(ser("data", "inspect", tmp_path / "c", "--speaker-pattern", r"(spk\d)_", "--json"))
    assert out["speakers"] == ["spk0", "spk1"]
    assert out["classes"] == ["happy", "sad", "angry", "fearful", "surprised"]
    assert out["synonyms"] == {
        "anger": "angry",
        "fear": "fearful",
        "happiness": "happy",
        "sadness": "sad",
        "surprise": "surprised",
    }
    assert out["problems"] == []


def test_inspect_problem_reason_with_brackets_is_printed_verbatim(tmp_path):
    tone(tmp_path / "c" / "sad" / "ab_1.wav")
    tone(tmp_path / "c" / "sad" / "AB_2.wav", freq=300)
    result = ser("data", "inspect", tmp_path / "c", "--speaker-pattern", "^([a-z]+)_[1]")
    assert result.exit_code == 0
    assert "--speaker-pattern '^([a-z]+)_[1]' does not match the file name 'AB_2.wav'" in result.stderr


def test_inspect_folder_corpus_without_speaker_pattern(tmp_path):
    tone(tmp_path / "c" / "sad" / "a.wav")
    result = ser("data", "inspect", tmp_path / "c", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "pass --speaker-pattern REGEX (e.g. '^(?P<speaker>[^_]+)_'" in one_line(result.stderr)


def test_inspect_csv_manifest_and_corpus_override(tmp_path):
    tone(tmp_path / "clips" / "a.wav")
    tone(tmp_path / "clips" / "b.wav", freq=330)
    table = tmp_path / "meta.tsv"
    table.write_text("path\tlabel\tspeaker\tgender\nclips/a.wav\thappy\tS1\tf\nclips/b.wav\tsad\tS2\tm\n")
    out = json_out(ser("data", "inspect", table, "--corpus", "csv", "--json"))
    assert (out["n_files"], out["speakers"], out["classes"]) == (2, ["S1", "S2"], ["happy", "sad"])


def test_inspect_an_audio_file_is_a_clean_error(tones):
    clip = next(tones.rglob("*.wav"))
    result = ser("data", "inspect", clip)
    assert result.exit_code == 1
    assert "expected a corpus folder or a .csv/.tsv manifest" in one_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_inspect_unknown_corpus_and_missing_data(tones, tmp_path):
    result = ser("data", "inspect", tones, "--corpus", "iemocap")
    assert result.exit_code == 1
    assert "unknown corpus 'iemocap'" in result.stderr
    result = ser("data", "inspect", tmp_path / "nowhere")
    assert result.exit_code == 1
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in one_line(result.stderr)


# --- split -------------------------------------------------------------------------------------------


def test_split_real_ravdess_by_speaker_lists(ravdess):
    out = json_out(
        ser(
            "data",
            "split",
            ravdess,
            "--labels",
            "ravdess-7",
            "--test-speakers",
            "16-18",
            "--val-speakers",
            "14,15",
            "--json",
        )
    )
    parts = out["parts"]
    assert parts["test"]["speakers"] == ["16", "17", "18"]
    assert parts["val"]["speakers"] == ["14", "15"]
    assert parts["train"]["speakers"] == [f"{i:02d}" for i in range(1, 14)]
    assert (parts["train"]["n"], parts["val"]["n"], parts["test"]["n"]) == (780, 120, 180)
    assert parts["test"]["counts"] == {
        "neutral": 36,
        "happy": 24,
        "sad": 24,
        "angry": 24,
        "fearful": 24,
        "disgust": 24,
        "surprised": 24,
    }
    assert out["leakage"]["ok"] is True
    assert out["leakage"]["speaker_overlap"] == [] and out["leakage"]["content_overlap"] == []
    assert out["protocol"] == "speaker-disjoint"
    assert out["label_report"]["encoded_values"] == list(range(7))
    assert out["schema"]["merge"] == {"calm": "neutral"}


@pytest.fixture
def leaky(ravdess, tmp_path):
    """Real clips of actors 01–04, plus a re-encoded copy of one of actor 01's clips saved as actor 03's."""
    root = real_sample(ravdess, tmp_path / "leaky")
    original = sorted((root / "Actor_01").iterdir())[0]
    samples, rate = sf.read(str(original), dtype="int16")
    copy = root / "Actor_03" / "03-01-05-02-02-02-03.wav"  # an angry clip actor 03 never recorded here
    sf.write(copy, samples, rate, subtype="PCM_16")
    return root, original, copy


def test_split_catches_a_copy_under_another_actor(leaky):
    root, original, copy = leaky
    result = ser("data", "split", root, "--labels", "ravdess-8", "--test-speakers", "03", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    stderr = one_line(result.stderr)
    assert "identical audio in more than one part" in stderr
    assert f"{original} (train, speaker 01)" in stderr
    assert f"{copy} (test, speaker 03)" in stderr
    assert "Remove the duplicate files" in stderr


def test_split_catches_the_copy_in_folds_too(leaky):
    root, original, copy = leaky
    result = ser("data", "split", root, "--folds", "4", "--json")
    assert result.exit_code == 1
    stderr = one_line(result.stderr)
    assert str(original) in stderr and str(copy) in stderr


def test_split_with_the_copy_in_the_same_part_passes(leaky):
    root, _, _ = leaky
    out = json_out(ser("data", "split", root, "--test-speakers", "04", "--json"))
    assert out["leakage"]["ok"] is True


def test_split_by_fraction_is_seeded_and_speaker_disjoint(tones):
    a = json_out(ser("data", "split", tones, "--test-fraction", "0.25", "--seed", "3", "--json"))
    b = json_out(ser("data", "split", tones, "--test-fraction", "0.25", "--seed", "3", "--json"))
    assert a["parts"] == b["parts"]
    assert len(a["parts"]["test"]["speakers"]) == 1
    assert not set(a["parts"]["test"]["speakers"]) & set(a["parts"]["train"]["speakers"])
    assert a["seed"] == 3


def test_split_allow_speaker_overlap_is_a_random_split_that_says_so(tones):
    out = json_out(ser("data", "split", tones, "--test-fraction", "0.25", "--allow-speaker-overlap", "--json"))
    assert out["protocol"] == RANDOM
    assert "NOT speaker-independent" in out["protocol"]
    assert out["leakage"]["speaker_overlap_allowed"] is True
    assert out["leakage"]["speaker_overlap"], "shared speakers are still listed"
    assert out["parts"]["test"]["n"] == 5
    assert len(out["parts"]["test"]["files"]) == 5


def test_split_folds(tones):
    out = json_out(ser("data", "split", tones, "--labels", "ravdess-7", "--folds", "4", "--json"))
    assert len(out["folds"]) == 4
    tested = [s for fold in out["folds"] for s in fold["parts"]["test"]["speakers"]]
    assert sorted(tested) == ["01", "02", "03", "04"]
    for fold in out["folds"]:
        assert fold["leakage"]["ok"]
        val, train = set(fold["parts"]["val"]["speakers"]), set(fold["parts"]["train"]["speakers"])
        assert not val & train and not val & set(fold["parts"]["test"]["speakers"])


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of --test-speakers, --test-fraction, --folds (got 0)"),
        (
            ["--test-speakers", "01", "--folds", "2"],
            "give exactly one of --test-speakers, --test-fraction, --folds (got 2)",
        ),
        (["--folds", "5"], "Cannot have n_splits=5 greater than the number of speakers: 4."),
        (
            ["--test-speakers", "19-24"],
            "speaker(s) 19, 20, 21, 22, 23, 24 not in the data; known speakers: 01, 02, 03, 04",
        ),
        (["--test-speakers", "01", "--val-speakers", "01"], "speaker(s) 01 asked for in both val and test"),
    ],
)
def test_split_errors(tones, args, message):
    result = ser("data", "split", tones, *args, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in one_line(result.stderr)


def test_split_out_round_trips_and_refuses_to_overwrite(tones, tmp_path):
    out_file = tmp_path / "splits" / "split.json"
    result = ser(
        "data",
        "split",
        tones,
        "--labels",
        "ravdess-7",
        "--test-speakers",
        "04",
        "--val-speakers",
        "1",
        "--out",
        out_file,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    saved = json.loads(out_file.read_text())
    assert saved["format"] == "speech-emotion/split" and saved["version"] == 1

    dataset = load_dataset(tones, labels="ravdess-7")
    reloaded = Split.from_dict(saved, dataset.speakers, dataset.paths)
    expected = speaker_disjoint_split(dataset.speakers, test_speakers=["04"], val_speakers=["01"])
    assert {k: v.tolist() for k, v in reloaded.parts.items()} == {k: v.tolist() for k, v in expected.parts.items()}
    assert reloaded.speakers == {"train": ["02", "03"], "val": ["01"], "test": ["04"]}
    assert {name: len(rows) for name, rows in reloaded.parts.items()} == {n: p["n"] for n, p in saved["parts"].items()}

    before = out_file.read_text()
    result = ser("data", "split", tones, "--test-speakers", "03", "--out", out_file)
    assert result.exit_code == 1
    assert "exists; pass --force to overwrite it" in one_line(result.stderr)
    assert out_file.read_text() == before

    result = ser("data", "split", tones, "--test-speakers", "03", "--out", out_file, "--force")
    assert result.exit_code == 0, result.stderr
    assert json.loads(out_file.read_text())["parts"]["test"]["speakers"] == ["03"]


def test_random_split_out_round_trips_by_file(tones, tmp_path):
    out_file = tmp_path / "random.json"
    result = ser(
        "data", "split", tones, "--test-fraction", "0.3", "--allow-speaker-overlap", "--seed", "1", "--out", out_file
    )
    assert result.exit_code == 0, result.stderr
    saved = json.loads(out_file.read_text())
    dataset = load_dataset(tones)
    reloaded = Split.from_dict(saved, dataset.speakers, dataset.paths)
    assert reloaded.protocol == RANDOM
    for name, part in saved["parts"].items():
        assert [dataset.paths[i] for i in reloaded.parts[name]] == sorted(part["files"])


def test_split_refuses_bad_files_unless_skipped(tones):
    (tones / ravdess_name(2, 6)).write_bytes(b"RIFF junk")
    result = ser("data", "split", tones, "--test-speakers", "01")
    assert result.exit_code == 1
    stderr = one_line(result.stderr)
    assert "1 file(s) cannot be used" in stderr and "03-01-06-01-01-01-02.wav: cannot decode audio" in stderr
    out = json_out(ser("data", "split", tones, "--test-speakers", "01", "--skip-bad", "--json"))
    assert [Path(p["path"]).name for p in out["skipped"]] == ["03-01-06-01-01-01-02.wav"]


def test_speaker_disjoint_split_does_not_depend_on_where_the_corpus_lives(tones, tmp_path):
    # a copy of the tones corpus elsewhere gives the same speaker-disjoint split
    other = tmp_path / "elsewhere"
    shutil.copytree(tones, other)
    a = json_out(ser("data", "split", tones, "--test-speakers", "02", "--json"))
    b = json_out(ser("data", "split", other, "--test-speakers", "02", "--json"))
    assert a["parts"] == b["parts"]
