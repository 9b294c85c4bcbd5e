"""LabelSchema: class indices are 0..K-1 with no holes, whatever the user hands in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speech_emotion.data import LabelSchema, Manifest, Utterance, read_corpus
from speech_emotion.data.labels import BUILTIN_SCHEMAS
from speech_emotion.errors import LabelError

RAVDESS_8 = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
RAVDESS_7 = ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]

# The mapping from the project's origin story: calm merged into neutral left index 1 unused.
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


def manifest_of(*pairs) -> Manifest:
    """Manifest from (label, count) pairs, speakers cycling over s1..s3."""
    utterances = []
    for label, count in pairs:
        for i in range(count):
            utterances.append(Utterance(f"/data/{label}_{i}.wav", f"s{i % 3 + 1}", label, "csv"))
    return Manifest(utterances)


def assert_contiguous(schema: LabelSchema) -> None:
    assert sorted(set(schema.label_to_index.values())) == list(range(schema.n_classes))
    assert {schema.classes[i] for i in schema.label_to_index.values()} == set(schema.classes)


def test_ravdess_8():
    schema = LabelSchema.from_name("ravdess-8")
    assert list(schema.classes) == RAVDESS_8
    assert schema.n_classes == 8
    assert schema.label_to_index == {label: i for i, label in enumerate(RAVDESS_8)}
    assert_contiguous(schema)


def test_ravdess_7_merges_calm_into_neutral():
    schema = LabelSchema.from_name("ravdess-7")
    assert list(schema.classes) == RAVDESS_7
    assert schema.merge == {"calm": "neutral"}
    assert schema.label_to_index["calm"] == schema.label_to_index["neutral"] == 0
    assert schema.encode(["calm", "neutral", "happy", "surprised"]).tolist() == [0, 0, 1, 6]
    assert schema.class_of("calm") == "neutral"
    assert_contiguous(schema)


def test_ravdess_7_on_the_real_corpus(ravdess):
    labelled = LabelSchema.from_name("ravdess-7").apply(read_corpus(ravdess))
    report = labelled.report()
    assert len(labelled) == 1080
    assert report["n_classes"] == 7
    assert report["classes"] == RAVDESS_7
    assert report["counts_before"]["neutral"] == 72
    assert report["counts_before"]["calm"] == 144
    assert report["counts_after"] == {
        "neutral": 216,
        "happy": 144,
        "sad": 144,
        "angry": 144,
        "fearful": 144,
        "disgust": 144,
        "surprised": 144,
    }
    assert report["encoded_values"] == [0, 1, 2, 3, 4, 5, 6]
    assert report["merged"] == {"calm": "neutral"}
    assert np.bincount(labelled.y).tolist() == [216, 144, 144, 144, 144, 144, 144]


def test_ravdess_8_on_the_real_corpus(ravdess):
    report = LabelSchema.from_name("ravdess-8").apply(read_corpus(ravdess)).report()
    assert report["encoded_values"] == list(range(8))
    assert report["counts_after"]["neutral"] == 72


def test_unknown_builtin_name():
    with pytest.raises(
        LabelError,
        match=r"unknown schema name 'ravdess-6'; built-in: ravdess-8, ravdess-7, common-4, common-6, common-7, or pass",
    ):
        LabelSchema.from_name("ravdess-6")


def test_resolve_rejects_a_name_that_is_neither_builtin_nor_a_file(tmp_path):
    with pytest.raises(
        LabelError,
        match=r"--labels 'ravdess7': not a built-in schema \(ravdess-8, ravdess-7, common-4, common-6, common-7\) nor",
    ):
        LabelSchema.resolve("ravdess7")


# --- the hole ------------------------------------------------------------------------------


def _corrected_from(message: str) -> dict:
    return json.loads(message.split("Corrected mapping: ", 1)[1])


def test_seed_hole_mapping_is_refused_naming_index_1_and_printing_the_fix():
    with pytest.raises(
        LabelError, match=r"indices are not contiguous: expected 0\.\.6, got 0, 2, 3, 4, 5, 6, 7 \(index 1 is unused\)"
    ) as info:
        LabelSchema.from_mapping(SEED_HOLE_MAPPING)
    assert _corrected_from(str(info.value)) == SEED_FIXED_MAPPING


@pytest.mark.parametrize(
    "spec",
    [SEED_HOLE_MAPPING, {"label_to_index": SEED_HOLE_MAPPING}, json.dumps(SEED_HOLE_MAPPING)],
    ids=["dict", "label_to_index-key", "inline-json"],
)
def test_seed_hole_mapping_is_refused_however_it_arrives(spec):
    with pytest.raises(
        LabelError,
        match=r"not contiguous.*index 1 is unused.*Corrected mapping: \{\"neutral\": 0, \"calm\": 0, \"happy\": 1",
    ):
        LabelSchema.resolve(spec)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_seed_hole_mapping_is_refused_from_a_file(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    path.write_text(json.dumps(SEED_HOLE_MAPPING))  # JSON is valid YAML
    with pytest.raises(
        LabelError, match=rf"labels\{suffix}: label_to_index indices are not contiguous.*index 1 is unused"
    ) as info:
        LabelSchema.resolve(str(path))
    assert _corrected_from(str(info.value)) == SEED_FIXED_MAPPING


def test_seed_fixed_mapping_equals_ravdess_7():
    fixed = LabelSchema.from_mapping(SEED_FIXED_MAPPING)
    ravdess_7 = LabelSchema.from_name("ravdess-7")
    assert fixed.classes == ravdess_7.classes
    assert list(fixed.classes) == RAVDESS_7
    assert fixed.label_to_index == ravdess_7.label_to_index
    assert fixed == ravdess_7
    assert fixed.synonyms == {"surprise": "surprised"}


def test_corrected_mapping_from_the_error_is_accepted():
    with pytest.raises(LabelError) as info:
        LabelSchema.from_mapping(SEED_HOLE_MAPPING)
    assert LabelSchema.from_mapping(_corrected_from(str(info.value))) == LabelSchema.from_name("ravdess-7")


def test_several_holes_are_all_named():
    with pytest.raises(LabelError, match=r"expected 0\.\.2, got 0, 2, 4 \(indices 1, 3 are unused\)"):
        LabelSchema.from_mapping({"a": 0, "b": 2, "c": 4})


def test_mapping_starting_at_1_names_index_0():
    with pytest.raises(LabelError, match=r"index 0 is unused.*Corrected mapping: \{\"sad\": 0, \"happy\": 1\}"):
        LabelSchema.from_mapping({"sad": 1, "happy": 2})


def test_negative_index():
    with pytest.raises(LabelError, match=r"not contiguous.*negative indices are not allowed"):
        LabelSchema.from_mapping({"a": -1, "b": 0})


@pytest.mark.parametrize("mapping", [{}, {"a": "0"}, {"a": 0.0}, {"a": True}])
def test_mapping_needs_integer_indices(mapping):
    with pytest.raises(LabelError, match=r"label_to_index must map labels to integer indices 0\.\.K-1"):
        LabelSchema.from_mapping(mapping)


def test_labels_sharing_an_index_merge_into_the_first_listed():
    schema = LabelSchema.from_mapping({"calm": 0, "neutral": 0, "sad": 1})
    assert schema.classes == ("calm", "sad")
    assert schema.merge == {"neutral": "calm"}


# --- schema files ---------------------------------------------------------------------------


def test_yaml_schema_file_with_classes_merge_drop(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(
        "classes: [neutral, happy, sad, angry]\nmerge:\n  calm: neutral\ndrop: [fearful, disgust, surprised]\n"
    )
    schema = LabelSchema.resolve(str(path))
    assert schema.classes == ("neutral", "happy", "sad", "angry")
    assert schema.merge == {"calm": "neutral"}
    assert schema.drop == frozenset({"fearful", "disgust", "surprised"})
    assert_contiguous(schema)
    assert schema.class_of("fearful") is None


def test_json_schema_file_applied_to_a_manifest(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"classes": ["sad", "angry"], "merge": {"fear": "angry"}, "drop": ["happy"]}))
    schema = LabelSchema.from_file(path)
    labelled = schema.apply(manifest_of(("happy", 2), ("sad", 3), ("fearful", 1), ("angry", 4)))
    report = labelled.report()
    assert len(labelled) == 8
    assert labelled.y.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert report["counts_before"] == {"happy": 2, "sad": 3, "angry": 4, "fearful": 1}
    assert report["counts_after"] == {"sad": 3, "angry": 5}
    assert report["encoded_values"] == [0, 1]
    assert report["dropped"] == {"happy": 2}
    assert report["merged"] == {"fearful": "angry"}
    assert report["synonyms"] == {"fear": "fearful"}
    assert_contiguous(schema)


def test_bare_label_to_index_yaml_file(tmp_path):
    path = tmp_path / "m.yml"
    path.write_text("neutral: 0\ncalm: 0\nhappy: 1\nsad: 2\nangry: 3\nfearful: 4\ndisgust: 5\nsurprised: 6\n")
    assert LabelSchema.from_file(path) == LabelSchema.from_name("ravdess-7")


def test_unreadable_schema_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("classes: [a, b\n")
    with pytest.raises(LabelError, match=r"bad\.yaml: cannot read label schema"):
        LabelSchema.from_file(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(
        LabelError, match=r"bad\.yaml: expected a mapping with classes/merge/drop or label_to_index, got list"
    ):
        LabelSchema.from_file(path)


def test_schema_with_unknown_keys(tmp_path):
    with pytest.raises(
        LabelError,
        match=r"a schema has keys classes, merge, drop, others, corpora \(or label_to_index\); got "
        r"classes, rename",
    ):
        LabelSchema.from_dict({"classes": ["a"], "rename": {"b": "a"}})


def test_inline_json_that_does_not_parse():
    with pytest.raises(LabelError, match=r"--labels looks like inline JSON but does not parse"):
        LabelSchema.resolve('{"classes": [')


# --- invalid schemas ------------------------------------------------------------------------


def test_duplicate_class():
    with pytest.raises(LabelError, match=r"classes must be distinct; sad listed more than once"):
        LabelSchema(("sad", "happy", "sad"))


def test_duplicate_class_through_a_synonym():
    with pytest.raises(LabelError, match=r"classes must be distinct; fearful listed more than once"):
        LabelSchema(("fear", "fearful"))


def test_empty_classes():
    with pytest.raises(LabelError, match=r"at least one class"):
        LabelSchema.from_dict({"classes": []})


def test_merge_into_unknown_class():
    with pytest.raises(
        LabelError, match=r"merge targets must be classes; neutral is not in classes \['happy', 'sad'\]"
    ):
        LabelSchema(("happy", "sad"), {"calm": "neutral"})


def test_label_both_kept_and_dropped():
    with pytest.raises(
        LabelError, match=r"each raw label is kept, merged or dropped, not two of these; sad is in more than one"
    ):
        LabelSchema(("happy", "sad"), drop=frozenset({"sad"}))


def test_label_both_kept_and_merged():
    with pytest.raises(LabelError, match=r"calm is in more than one"):
        LabelSchema(("neutral", "calm"), {"calm": "neutral"})


def test_label_both_merged_and_dropped():
    with pytest.raises(LabelError, match=r"calm is in more than one"):
        LabelSchema(("neutral",), {"calm": "neutral"}, frozenset({"calm"}))


# --- applying to data -----------------------------------------------------------------------


def test_raw_label_not_covered_is_an_error_naming_it_and_its_files():
    manifest = manifest_of(("happy", 2), ("boredom", 2), ("sad", 1))
    with pytest.raises(
        LabelError,
        match=r"neither keeps, merges nor drops:\n  'boredom' \(2 files, e\.g\. /data/boredom_0\.wav, "
        r"/data/boredom_1\.wav\)",
    ) as info:
        LabelSchema(("happy", "sad")).apply(manifest)
    assert "schema classes: ['happy', 'sad']; add them to classes, merge or drop" in str(info.value)


def test_encode_and_class_of_refuse_unknown_labels():
    schema = LabelSchema.from_name("ravdess-7")
    with pytest.raises(LabelError, match=r"label 'boredom' is not in the schema"):
        schema.encode(["happy", "boredom"])
    with pytest.raises(LabelError, match=r"label 'boredom' is not in the schema"):
        schema.class_of("boredom")


def test_without_a_schema_every_raw_label_in_canonical_order():
    schema = LabelSchema.resolve(None, ["sad", "frustrated", "neutral", "angry", "sad"])
    assert schema.classes == ("neutral", "sad", "angry", "frustrated")
    assert_contiguous(schema)


def test_synonyms_resolve_in_classes_merge_and_drop():
    schema = LabelSchema(("anger", "happiness", "sadness"), {"fear": "anger"}, frozenset({"surprise"}))
    assert schema.classes == ("angry", "happy", "sad")
    assert schema.merge == {"fearful": "angry"}
    assert schema.drop == frozenset({"surprised"})
    assert schema.synonyms == {
        "anger": "angry",
        "happiness": "happy",
        "sadness": "sad",
        "fear": "fearful",
        "surprise": "surprised",
    }
    assert schema.encode(["Anger", "fearful", "sadness"]).tolist() == [0, 0, 2]


@pytest.mark.parametrize(
    "spec",
    [
        {"classes": ["a", "b", "c"]},
        {"classes": ["a", "c"], "merge": {"b": "a"}},
        {"classes": ["c", "a"], "merge": {"b": "c"}, "drop": ["d"]},
        {"label_to_index": {"x": 1, "y": 0, "z": 1}},
        *BUILTIN_SCHEMAS.values(),
    ],
)
def test_indices_are_always_0_to_k_minus_1(spec):
    schema = LabelSchema.from_dict(spec)
    assert_contiguous(schema)
    raw = [label for label in schema.label_to_index]
    encoded = schema.encode(raw)
    assert set(encoded.tolist()) == set(range(schema.n_classes))


def test_report_reads_encoded_values_back_from_the_data():
    labelled = LabelSchema(("neutral", "happy", "sad")).apply(manifest_of(("neutral", 2), ("sad", 2)))
    report = labelled.report()
    # a class with no files shows as missing from encoded_values, not papered over
    assert report["encoded_values"] == [0, 2]
    assert report["counts_after"] == {"neutral": 2, "happy": 0, "sad": 2}


def test_to_dict_round_trip():
    schema = LabelSchema(("neutral", "happy"), {"calm": "neutral"}, frozenset({"sad", "angry"}))
    spec = schema.to_dict()
    assert spec == {"classes": ["neutral", "happy"], "merge": {"calm": "neutral"}, "drop": ["angry", "sad"]}
    assert LabelSchema.from_dict(json.loads(json.dumps(spec))) == schema
