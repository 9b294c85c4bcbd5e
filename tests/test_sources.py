"""Several corpora in one run: adapters per corpus, namespaced speakers, per-corpus label counts, speaker sanity."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tone
from speech_emotion.data.corpora import read_corpus
from speech_emotion.data.dataset import check_speaker_labels, load_dataset
from speech_emotion.data.labels import LabelSchema
from speech_emotion.data.sources import CorpusSource, read_corpora
from speech_emotion.data.splits import parse_speakers, resolve_speakers, speaker_disjoint_split
from speech_emotion.errors import CorpusError, SplitError


def test_three_shared_corpora_in_one_manifest_with_common_4(ravdess, tess, turev):
    sources = [
        CorpusSource.parse(str(ravdess)),
        CorpusSource.parse(f"{tess}::tess"),
        CorpusSource.parse(str(turev / "metadata.csv")),
    ]
    manifest = read_corpora(sources)
    assert {u.corpus for u in manifest} == {"ravdess", "tess", "turev-db-16k"}
    speakers = manifest.speakers
    assert "tess:OAF" in speakers and "ravdess:16" in speakers and "turev-db-16k:1157" in speakers
    assert len(speakers) == 18 + 2 + 6
    report = LabelSchema.from_name("common-4").apply(manifest).report()
    assert report["classes"] == ["angry", "happy", "neutral", "sad"]
    by_corpus = report["by_corpus"]
    # RAVDESS: neutral 72 + calm 144 → neutral 216; fearful, disgust, surprised dropped and counted.
    assert by_corpus["ravdess"]["counts_after"] == {"angry": 144, "happy": 144, "neutral": 216, "sad": 144}
    assert by_corpus["ravdess"]["dropped"] == {"fearful": 144, "disgust": 144, "surprised": 144}
    assert by_corpus["tess"]["counts_after"] == {"angry": 200, "happy": 200, "neutral": 200, "sad": 200}
    assert by_corpus["tess"]["dropped"] == {"fearful": 200, "disgust": 200, "surprised": 200}  # "ps", as read
    # TurEV's Calm is neutral here (its README: Angry 487, Calm 408, Happy 357, Sad 483).
    assert by_corpus["turev-db-16k"]["counts_after"] == {"angry": 487, "happy": 357, "neutral": 408, "sad": 483}
    assert report["counts_after"]["neutral"] == 216 + 200 + 408


def test_one_corpus_reads_exactly_as_before(ravdess):
    alone = read_corpora([CorpusSource(str(ravdess))])
    assert [(u.path, u.speaker, u.corpus) for u in alone] == [
        (u.path, u.speaker, u.corpus) for u in read_corpus(ravdess)
    ]


def test_turev_folder_speakers_come_from_file_names(turev):
    # The example the error message gives, and the precise one: both see the file name, not "Angry/1157_…".
    for pattern in (r"^(?P<speaker>[^_]+)_", r"^(?P<speaker>\d{4})_"):
        manifest = read_corpus(turev, corpus="folder", speaker_pattern=pattern)
        assert manifest.speakers == ["1157", "1234", "1358", "1984", "6783", "7895"]
        assert not manifest.problems
    # Without --labels the classes are the folder names, synonyms resolved (Angry → angry).
    schema = LabelSchema.resolve(None, manifest.labels)
    assert schema.classes == ("calm", "happy", "sad", "angry")


def test_speakers_with_a_single_label_each_are_refused(tmp_path):
    # Files named after their emotion, and a pattern that takes that prefix for the speaker.
    for label in ("angry", "sad", "happy"):
        for i in range(3):
            tone(tmp_path / "corpus" / label / f"{label}_{i}.wav", freq=200 + 50 * i)
    with pytest.raises(CorpusError, match=r"every one of 3 speakers has a single label \(angry: angry, happy: happy"):
        load_dataset(tmp_path / "corpus", speaker_pattern=r"^([a-z]+)_")
    allowed = load_dataset(tmp_path / "corpus", speaker_pattern=r"^([a-z]+)_", allow_single_label_speakers=True)
    assert len(allowed) == 9
    check_speaker_labels(["a", "a", "b", "b", "c", "c"], np.array([0, 1, 0, 1, 0, 0]), ["x", "y"])  # 1 of 3: fine


def test_namespaced_speakers_in_splits():
    speakers = ["ravdess:01"] * 2 + ["ravdess:02"] * 2 + ["ravdess:03"] * 2 + ["tess:OAF"] * 2 + ["tess:YAF"] * 2
    assert parse_speakers("ravdess:1-2,tess:OAF") == ["ravdess:1", "ravdess:2", "tess:OAF"]
    assert resolve_speakers(["ravdess:1", "02", "YAF"], speakers) == ["ravdess:01", "ravdess:02", "tess:YAF"]
    with pytest.raises(SplitError, match="not in the data"):
        resolve_speakers(["tess:01"], speakers)
    both = speakers + ["crema-d:01"] * 2
    with pytest.raises(SplitError, match=r"01 \(crema-d:01 or ravdess:01\) in more than one corpus"):
        resolve_speakers(["01"], both)
    split = speaker_disjoint_split(speakers, val_fraction=1 / 6, seed=0)
    corpora = {s.split(":")[0] for s in split.speakers["val"]}
    assert corpora == {"ravdess", "tess"}  # the default validation set draws from every corpus
    assert all(s.startswith(("ravdess:", "tess:")) for s in split.speakers["train"])


def test_two_corpora_with_one_name_are_refused(tmp_path):
    for folder in ("a/corpus", "b/corpus"):
        tone(tmp_path / folder / "angry" / "s1_0.wav")
    with pytest.raises(CorpusError, match="two corpora share the name corpus"):
        read_corpora([CorpusSource(str(tmp_path / f), "folder", r"^(s\d)_") for f in ("a/corpus", "b/corpus")])
    with pytest.raises(CorpusError, match="expected PATH or PATH::ADAPTER"):
        CorpusSource.parse("x::nonsense")
