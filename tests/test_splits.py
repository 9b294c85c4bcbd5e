"""Speaker-disjoint splits, leave-speakers-out folds and the leakage check (library level).

The `ser data split` command, with real RAVDESS clips, is tested in test_cli_data.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from speech_emotion.data import (
    Split,
    check_leakage,
    leave_speakers_out,
    parse_speakers,
    random_split,
    speaker_disjoint_split,
)
from speech_emotion.data.splits import RANDOM, SPEAKER_DISJOINT
from speech_emotion.errors import LeakageError, SplitError

# 12 speakers, 5 rows each, interleaved so that rows of a speaker are not contiguous
SPEAKERS = [f"{s:02d}" for _ in range(5) for s in range(1, 13)]
PATHS = [f"/corpus/{i:03d}_{s}.wav" for i, s in enumerate(SPEAKERS)]
HASHES = [f"h{i}" for i in range(len(SPEAKERS))]


def speakers_of(split: Split, part: str) -> set[str]:
    return {SPEAKERS[i] for i in split.parts[part]}


def assert_partition(split: Split, n_rows: int = len(SPEAKERS)) -> None:
    rows = np.concatenate(list(split.parts.values()))
    assert sorted(rows.tolist()) == list(range(n_rows)), "every row in exactly one part"


def assert_speaker_disjoint(split: Split) -> None:
    names = list(split.parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not speakers_of(split, a) & speakers_of(split, b), f"{a} and {b} share speakers"


# --- speaker lists ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("01,02", ["01", "02"]),
        ("16-18", ["16", "17", "18"]),
        ("01, 03 ,16-18,", ["01", "03", "16", "17", "18"]),
        ("09-11", ["09", "10", "11"]),
        ("9-11", ["9", "10", "11"]),
        ("DC,JE", ["DC", "JE"]),
    ],
)
def test_parse_speakers(text, expected):
    assert parse_speakers(text) == expected


def test_backwards_range():
    with pytest.raises(SplitError, match=r"speaker range '18-16' runs backwards; write it low-high"):
        parse_speakers("18-16")


def test_explicit_speaker_lists():
    split = speaker_disjoint_split(
        SPEAKERS, test_speakers=parse_speakers("10-12"), val_speakers=parse_speakers("01,02")
    )
    assert split.speakers == {
        "train": ["03", "04", "05", "06", "07", "08", "09"],
        "val": ["01", "02"],
        "test": ["10", "11", "12"],
    }
    assert speakers_of(split, "test") == {"10", "11", "12"}
    assert len(split.parts["test"]) == 15
    assert split.protocol == SPEAKER_DISJOINT
    assert_partition(split)
    assert_speaker_disjoint(split)


def test_speaker_ids_without_zero_padding_find_the_padded_ones():
    split = speaker_disjoint_split(SPEAKERS, test_speakers=["5", "12"])
    assert split.speakers["test"] == ["05", "12"]
    assert "val" not in split.parts


def test_unknown_speaker():
    with pytest.raises(SplitError, match=r"speaker\(s\) 19, 24 not in the data; known speakers: 01, 02, .*, 12"):
        speaker_disjoint_split(SPEAKERS, test_speakers=parse_speakers("19,24"))
    with pytest.raises(SplitError, match=r"speaker\(s\) XX not in the data"):
        speaker_disjoint_split(SPEAKERS, test_speakers=["01"], val_speakers=["XX"])


def test_speakers_none_is_refused():
    with pytest.raises(SplitError, match=r"The 'speakers' parameter should not be None\."):
        speaker_disjoint_split(None, test_speakers=["01"])
    with pytest.raises(SplitError, match=r"The 'speakers' parameter should not be None\."):
        leave_speakers_out(None, 3)


def test_speaker_in_val_and_test():
    with pytest.raises(
        SplitError, match=r"speaker\(s\) 03 asked for in both val and test; each speaker belongs to one part"
    ):
        speaker_disjoint_split(SPEAKERS, test_speakers=["03", "04"], val_speakers=["03"])


def test_no_speakers_left_for_training():
    with pytest.raises(SplitError, match=r"no speakers left for training: 12 speakers, all in val/test"):
        speaker_disjoint_split(SPEAKERS, test_speakers=parse_speakers("01-06"), val_speakers=parse_speakers("07-12"))


def test_test_speakers_and_fraction_together():
    with pytest.raises(SplitError, match=r"give test speakers or a test fraction, not both"):
        speaker_disjoint_split(SPEAKERS, test_speakers=["01"], test_fraction=0.2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_test_fraction_out_of_range(fraction):
    with pytest.raises(SplitError, match=rf"test fraction must be between 0 and 1, got {fraction}"):
        speaker_disjoint_split(SPEAKERS, test_fraction=fraction)


# --- fractions with a seed ---------------------------------------------------------------------


def test_fraction_split_is_speaker_disjoint_and_seeded():
    a = speaker_disjoint_split(SPEAKERS, test_fraction=0.25, val_fraction=1 / 6, seed=7)
    b = speaker_disjoint_split(SPEAKERS, test_fraction=0.25, val_fraction=1 / 6, seed=7)
    assert len(a.speakers["test"]) == 3
    assert len(a.speakers["val"]) == 2
    assert len(a.speakers["train"]) == 7
    assert a.speakers == b.speakers
    assert all(np.array_equal(a.parts[k], b.parts[k]) for k in a.parts)
    assert a.seed == 7
    assert_partition(a)
    assert_speaker_disjoint(a)


def test_different_seeds_draw_different_speakers():
    drawn = {
        tuple(speaker_disjoint_split(SPEAKERS, test_fraction=0.25, seed=seed).speakers["test"]) for seed in range(6)
    }
    assert len(drawn) > 1


def test_fraction_takes_at_least_one_speaker():
    split = speaker_disjoint_split(SPEAKERS, test_fraction=0.01)
    assert len(split.speakers["test"]) == 1


def test_too_few_speakers_for_validation():
    with pytest.raises(
        SplitError, match=r"cannot take n_val=\d+ validation speakers and keep training speakers: only \d+ left"
    ):
        speaker_disjoint_split(["a", "b", "c"], test_speakers=["a"], val_fraction=0.9)


# --- leave-speakers-out ----------------------------------------------------------------------


@pytest.mark.parametrize("n_splits", [2, 4, 12])
def test_leave_speakers_out_tests_every_speaker_exactly_once(n_splits):
    folds = leave_speakers_out(SPEAKERS, n_splits=n_splits, seed=3)
    assert len(folds) == n_splits
    tested = [s for fold in folds for s in fold.speakers["test"]]
    assert sorted(tested) == sorted(set(SPEAKERS))
    for fold in folds:
        assert_partition(fold)
        assert_speaker_disjoint(fold)
        assert fold.speakers["val"], "each fold has validation speakers for early stopping"
        assert not set(fold.speakers["val"]) & set(fold.speakers["test"])
        assert not set(fold.speakers["val"]) & set(fold.speakers["train"])


def test_leave_speakers_out_is_seeded():
    a = leave_speakers_out(SPEAKERS, n_splits=4, seed=1)
    b = leave_speakers_out(SPEAKERS, n_splits=4, seed=1)
    assert [f.speakers for f in a] == [f.speakers for f in b]


def test_leave_speakers_out_without_validation():
    folds = leave_speakers_out(SPEAKERS, n_splits=3, val_fraction=None)
    assert all(set(f.parts) == {"train", "test"} for f in folds)


def test_more_folds_than_speakers():
    with pytest.raises(SplitError, match=r"Cannot have n_splits=13 greater than the number of speakers: 12\."):
        leave_speakers_out(SPEAKERS, n_splits=13)


def test_fewer_than_two_folds():
    with pytest.raises(SplitError, match=r"n_splits=1: leave-speakers-out needs at least 2 folds"):
        leave_speakers_out(SPEAKERS, n_splits=1)


# --- random split (asked for by name) --------------------------------------------------------------


def test_random_split_shares_speakers_and_says_so():
    split = random_split(len(SPEAKERS), SPEAKERS, test_fraction=0.2, val_fraction=0.1, seed=0)
    assert split.protocol == RANDOM
    assert "NOT speaker-independent" in split.protocol
    assert (len(split.parts["test"]), len(split.parts["val"])) == (12, 6)
    assert_partition(split)
    assert speakers_of(split, "train") & speakers_of(split, "test")


# --- leakage -------------------------------------------------------------------------------------------


def test_leakage_check_passes_a_clean_split():
    split = speaker_disjoint_split(SPEAKERS, test_speakers=["12"])
    report = check_leakage(split, SPEAKERS, HASHES, PATHS)
    assert report == {
        "protocol": SPEAKER_DISJOINT,
        "speaker_overlap": [],
        "speaker_overlap_allowed": False,
        "content_overlap": [],
        "ok": True,
    }


def test_identical_audio_in_two_parts_names_both_files():
    split = speaker_disjoint_split(SPEAKERS, test_speakers=["12"])
    hashes = list(HASHES)
    train_row = int(split.parts["train"][0])
    test_row = int(split.parts["test"][0])
    hashes[test_row] = hashes[train_row]
    with pytest.raises(LeakageError, match=r"identical audio in more than one part") as info:
        check_leakage(split, SPEAKERS, hashes, PATHS)
    message = str(info.value)
    assert f"{PATHS[train_row]} (train, speaker {SPEAKERS[train_row]})" in message
    assert f"{PATHS[test_row]} (test, speaker 12)" in message
    assert "Remove the duplicate files" in message
    assert "--allow-speaker-overlap" not in message, "that flag would not help: identical audio is always refused"
    assert isinstance(info.value, SplitError)


def test_identical_audio_within_one_part_is_not_leakage():
    split = speaker_disjoint_split(SPEAKERS, test_speakers=["12"])
    hashes = list(HASHES)
    a, b = (int(r) for r in split.parts["train"][:2])
    hashes[b] = hashes[a]
    assert check_leakage(split, SPEAKERS, hashes, PATHS)["ok"]


def test_shared_speakers_are_refused_unless_allowed():
    split = random_split(len(SPEAKERS), SPEAKERS, test_fraction=0.3, seed=0)
    with pytest.raises(
        LeakageError, match=r"(?s)speakers in more than one part: 01 in train and test.*pass --allow-speaker-overlap"
    ):
        check_leakage(split, SPEAKERS, HASHES, PATHS)
    report = check_leakage(split, SPEAKERS, HASHES, PATHS, allow_speaker_overlap=True)
    assert report["ok"] and report["speaker_overlap_allowed"]
    assert report["protocol"] == RANDOM
    assert {"speaker": "01", "parts": ["train", "test"]} in report["speaker_overlap"]


def test_long_overlap_lists_say_how_many_were_left_out():
    speakers = [f"{s:02d}" for _ in range(4) for s in range(1, 31)]
    split = random_split(len(speakers), speakers, test_fraction=0.5, seed=0)
    overlap = {
        s
        for s in speakers
        if s in {speakers[i] for i in split.parts["test"]} and s in {speakers[i] for i in split.parts["train"]}
    }
    assert len(overlap) > 10
    with pytest.raises(LeakageError, match=rf"\(and {len(overlap) - 10} more\)"):
        check_leakage(split, speakers, [str(i) for i in range(len(speakers))], [str(i) for i in range(len(speakers))])


def test_identical_audio_is_refused_even_in_an_allowed_random_split():
    split = random_split(len(SPEAKERS), SPEAKERS, test_fraction=0.3, seed=0)
    hashes = list(HASHES)
    hashes[int(split.parts["test"][0])] = hashes[int(split.parts["train"][0])]
    with pytest.raises(LeakageError, match=r"identical audio in more than one part"):
        check_leakage(split, SPEAKERS, hashes, PATHS, allow_speaker_overlap=True)


# --- saving and reloading ----------------------------------------------------------------------------


def round_trip(split: Split, paths=PATHS) -> Split:
    spec = json.loads(json.dumps(split.to_dict(paths)))
    return Split.from_dict(spec, SPEAKERS, paths)


def test_speaker_disjoint_split_round_trips_through_json():
    split = speaker_disjoint_split(SPEAKERS, test_fraction=0.25, val_fraction=0.2, seed=5)
    spec = split.to_dict(PATHS)
    assert "files" not in spec["parts"]["train"], "speaker-disjoint splits are defined by speakers"
    again = round_trip(split)
    assert again.speakers == split.speakers
    assert {k: v.tolist() for k, v in again.parts.items()} == {k: v.tolist() for k, v in split.parts.items()}
    assert (again.protocol, again.seed) == (SPEAKER_DISJOINT, 5)


def test_random_split_round_trips_through_json_by_file():
    split = random_split(len(SPEAKERS), SPEAKERS, test_fraction=0.2, val_fraction=0.2, seed=2)
    assert len(split.to_dict(PATHS)["parts"]["test"]["files"]) == 12
    again = round_trip(split)
    assert {k: v.tolist() for k, v in again.parts.items()} == {k: v.tolist() for k, v in split.parts.items()}
    assert again.protocol == RANDOM


def test_random_split_reloaded_over_other_files_is_refused():
    split = random_split(len(SPEAKERS), SPEAKERS, test_fraction=0.2, seed=2)
    spec = json.loads(json.dumps(split.to_dict(PATHS)))
    moved = [p.replace("/corpus/", "/elsewhere/") for p in PATHS]
    with pytest.raises(SplitError, match=r"split part '\w+' lists \d+ file\(s\) not in the data, e\.g\. /corpus/"):
        Split.from_dict(spec, SPEAKERS, moved)


def test_reloaded_split_with_unknown_part_or_speaker():
    with pytest.raises(SplitError, match=r"split part 'holdout' is not one of train, val, test"):
        Split.from_dict({"parts": {"holdout": {"speakers": ["01"]}}}, SPEAKERS, PATHS)
    with pytest.raises(SplitError, match=r"speaker\(s\) 77 not in the data"):
        Split.from_dict({"parts": {"test": {"speakers": ["77"]}}}, SPEAKERS, PATHS)
