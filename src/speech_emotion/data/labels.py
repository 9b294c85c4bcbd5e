"""LabelSchema: raw corpus labels → class indices 0..K-1, with no holes, by construction.

A schema lists class names in index order. ``merge`` maps further raw labels onto a
class; ``drop`` removes raw labels. Indices are positions in ``classes``, so they are
always contiguous — the calm→neutral hole (0,0,2,…) cannot be expressed.

Example:
    >>> schema = LabelSchema.from_name("ravdess-7")
    >>> schema.classes[:3], schema.encode(["calm", "neutral", "happy"]).tolist()
    (('neutral', 'happy', 'sad'), [0, 0, 1])
    >>> LabelSchema.from_mapping({"neutral": 0, "calm": 0, "happy": 2})
    Traceback (most recent call last):
    ...
    speech_emotion.errors.LabelError: label_to_index indices are not contiguous: expected 0..1, got 0, 2
    (index 1 is unused). Corrected mapping: {"neutral": 0, "calm": 0, "happy": 1}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from speech_emotion.data.manifest import Manifest, canonical_label, order_labels
from speech_emotion.errors import LabelError

_RAVDESS_8 = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")

BUILTIN_SCHEMAS = {
    "ravdess-8": {"classes": list(_RAVDESS_8)},
    "ravdess-7": {"classes": [c for c in _RAVDESS_8 if c != "calm"], "merge": {"calm": "neutral"}},
}
"""Schemas available by name to ``--labels``."""


@dataclass(frozen=True)
class LabelSchema:
    """Class names in index order, plus merges and drops of raw labels.

    Args:
        classes: class names; ``classes[i]`` has index ``i``.
        merge: raw label → class it joins.
        drop: raw labels removed from the data.

    Raises:
        LabelError: duplicate or empty classes, a merge into an unknown class, or a
            label that is at once kept, merged or dropped.
    """

    classes: tuple[str, ...]
    merge: dict = field(default_factory=dict)
    drop: frozenset = frozenset()
    synonyms: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        synonyms = dict(self.synonyms)
        classes = tuple(_canonical(c, synonyms) for c in self.classes)
        merge = {_canonical(k, synonyms): _canonical(v, synonyms) for k, v in dict(self.merge).items()}
        drop = frozenset(_canonical(d, synonyms) for d in self.drop)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "merge", merge)
        object.__setattr__(self, "drop", drop)
        object.__setattr__(self, "synonyms", synonyms)
        if not classes:
            raise LabelError("a label schema needs at least one class; got an empty 'classes' list")
        repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
        if repeated:
            raise LabelError(f"classes must be distinct; {', '.join(repeated)} listed more than once")
        unknown = sorted(v for v in merge.values() if v not in classes)
        if unknown:
            raise LabelError(f"merge targets must be classes; {', '.join(unknown)} is not in classes {list(classes)}")
        clash = sorted((set(merge) & set(classes)) | (drop & (set(classes) | set(merge))))
        if clash:
            raise LabelError(
                f"each raw label is kept, merged or dropped, not two of these; {', '.join(clash)} is in more than one"
            )

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def label_to_index(self) -> dict[str, int]:
        """Every raw label the schema keeps or merges → its class index."""
        mapping = {c: i for i, c in enumerate(self.classes)}
        mapping.update({raw: self.classes.index(target) for raw, target in self.merge.items()})
        return mapping

    def class_of(self, raw: str) -> str | None:
        """Class name for a raw label, ``None`` when dropped; :class:`LabelError` when unknown."""
        raw = canonical_label(raw)
        if raw in self.drop:
            return None
        if raw in self.merge:
            return self.merge[raw]
        if raw in self.classes:
            return raw
        raise LabelError(f"label {raw!r} is not in the schema: keep it in classes, merge it, or drop it")

    def encode(self, raw_labels) -> np.ndarray:
        """Class indices for raw labels (dropped labels raise: filter them with :meth:`apply`)."""
        mapping = self.label_to_index
        try:
            return np.array([mapping[canonical_label(r)] for r in raw_labels], dtype=np.int64)
        except KeyError as error:
            raise LabelError(
                f"label {error.args[0]!r} is not in the schema: keep it in classes, merge it, or drop it"
            ) from None

    def to_dict(self) -> dict:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return {"classes": list(self.classes), "merge": dict(self.merge), "drop": sorted(self.drop)}

    @classmethod
    def from_dict(cls, spec: dict) -> "LabelSchema":
        """Build from ``{"classes": [...], "merge": {...}, "drop": [...]}`` or ``{"label_to_index": {...}}``."""
        if "label_to_index" in spec:
            return cls.from_mapping(spec["label_to_index"])
        unknown = set(spec) - {"classes", "merge", "drop"}
        if unknown or "classes" not in spec:
            raise LabelError(
                f"a schema has keys classes, merge, drop (or label_to_index); got {', '.join(sorted(spec)) or 'none'}"
            )
        return cls(tuple(spec["classes"]), dict(spec.get("merge") or {}), frozenset(spec.get("drop") or ()))

    @classmethod
    def from_name(cls, name: str) -> "LabelSchema":
        """A built-in schema: ``ravdess-8`` or ``ravdess-7`` (calm merged into neutral)."""
        if name not in BUILTIN_SCHEMAS:
            raise LabelError(
                f"unknown schema name {name!r}; built-in: {', '.join(BUILTIN_SCHEMAS)}, or pass a YAML/JSON file"
            )
        return cls.from_dict(BUILTIN_SCHEMAS[name])

    @classmethod
    def from_mapping(cls, label_to_index: dict) -> "LabelSchema":
        """Accept a script-style ``{label: index}`` dict whose indices are exactly 0..K-1.

        Labels sharing an index are merged into the first one listed.

        Raises:
            LabelError: indices are not integers or not contiguous; the message names the
                unused indices and prints the corrected mapping.
        """
        if not label_to_index or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in label_to_index.values()
        ):
            raise LabelError(f"label_to_index must map labels to integer indices 0..K-1; got {label_to_index!r}")
        used = sorted(set(label_to_index.values()))
        if used != list(range(len(used))):
            unused = sorted(set(range(max(used) + 1)) - set(used))
            renumber = {old: new for new, old in enumerate(used)}
            corrected = {label: renumber[index] for label, index in label_to_index.items()}
            holes = (
                f"index {unused[0]} is unused"
                if len(unused) == 1
                else f"indices {', '.join(map(str, unused))} are unused"
            )
            if min(used) < 0:
                holes = "negative indices are not allowed"
            raise LabelError(
                f"label_to_index indices are not contiguous: expected 0..{len(used) - 1}, got "
                f"{', '.join(map(str, used))} ({holes}). Corrected mapping: {json.dumps(corrected)}"
            )
        classes, merge = [], {}
        for label, index in sorted(label_to_index.items(), key=lambda item: item[1]):
            if index == len(classes):
                classes.append(label)
            else:
                merge[label] = classes[index]
        return cls(tuple(classes), merge)

    @classmethod
    def from_file(cls, path: str | Path) -> "LabelSchema":
        """Read a YAML or JSON schema file (either form accepted by :meth:`from_dict`, or a bare ``{label: index}``)."""
        path = Path(path)
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise LabelError(f"{path}: cannot read label schema ({error})") from error
        if not isinstance(spec, dict):
            raise LabelError(
                f"{path}: expected a mapping with classes/merge/drop or label_to_index, got {type(spec).__name__}"
            )
        if spec and all(isinstance(v, int) for v in spec.values()):
            spec = {"label_to_index": spec}
        try:
            return cls.from_dict(spec)
        except LabelError as error:
            raise LabelError(f"{path}: {error}") from None

    @classmethod
    def from_labels(cls, raw_labels) -> "LabelSchema":
        """Every distinct raw label as its own class, in canonical order."""
        return cls(tuple(order_labels(set(raw_labels))))

    @classmethod
    def resolve(cls, spec: "str | Path | dict | LabelSchema | None", raw_labels=()) -> "LabelSchema":
        """Turn what a user passed to ``--labels`` into a schema.

        ``None`` → every raw label; a built-in name; a YAML/JSON file; inline JSON; a dict.
        """
        if isinstance(spec, LabelSchema):
            return spec
        if spec is None:
            return cls.from_labels(raw_labels)
        if isinstance(spec, dict):
            return cls.from_dict(spec) if {"classes", "label_to_index"} & set(spec) else cls.from_mapping(spec)
        text = str(spec).strip()
        if text in BUILTIN_SCHEMAS:
            return cls.from_name(text)
        if text.startswith("{"):
            try:
                return cls.resolve(json.loads(text))
            except json.JSONDecodeError as error:
                raise LabelError(f"--labels looks like inline JSON but does not parse: {error}") from error
        if Path(text).is_file():
            return cls.from_file(text)
        raise LabelError(
            f"--labels {text!r}: not a built-in schema ({', '.join(BUILTIN_SCHEMAS)}) nor an existing YAML/JSON file"
        )

    def apply(self, manifest: Manifest) -> "LabelledManifest":
        """Encode a manifest: drop what the schema drops, refuse what it does not cover.

        Raises:
            LabelError: a raw label is neither kept, merged nor dropped; names it and its files.
        """
        uncovered: dict[str, list[str]] = {}
        keep, indices = [], []
        mapping = self.label_to_index
        for row, utterance in enumerate(manifest):
            label = canonical_label(utterance.label)
            if label in self.drop:
                continue
            if label not in mapping:
                uncovered.setdefault(label, []).append(utterance.path)
                continue
            keep.append(row)
            indices.append(mapping[label])
        if uncovered:
            lines = [
                f"  {label!r} ({len(paths)} files, e.g. {', '.join(paths[:3])})"
                for label, paths in sorted(uncovered.items())
            ]
            raise LabelError(
                "labels in the data that the schema neither keeps, merges nor drops:\n"
                + "\n".join(lines)
                + f"\nschema classes: {list(self.classes)}; add them to classes, merge or drop"
            )
        return LabelledManifest(manifest.subset(keep), self, np.asarray(indices, dtype=np.int64), manifest)


def _canonical(label: str, synonyms: dict) -> str:
    resolved = canonical_label(label)
    if resolved != label.strip().lower():
        synonyms[label] = resolved
    return resolved


class LabelledManifest:
    """A manifest whose rows carry class indices from a schema, plus the label report."""

    def __init__(self, manifest: Manifest, schema: LabelSchema, y: np.ndarray, source: Manifest):
        self.manifest = manifest
        self.schema = schema
        self.y = y
        self.source = source

    def __len__(self) -> int:
        return len(self.manifest)

    def report(self) -> dict:
        """Counts per raw label before mapping and per class after, unique encoded values, K.

        The encoded values are read back from the encoded array, not from the schema, so
        a hole would show here.
        """
        counts_after = Counter(self.y.tolist())
        synonyms = {**self.source.synonyms, **self.schema.synonyms}
        return {
            "n_classes": self.schema.n_classes,
            "classes": list(self.schema.classes),
            "label_to_index": self.schema.label_to_index,
            "counts_before": self.source.label_counts(),
            "counts_after": {c: counts_after.get(i, 0) for i, c in enumerate(self.schema.classes)},
            "encoded_values": sorted(counts_after),
            "merged": dict(self.schema.merge),
            "dropped": {label: n for label, n in self.source.label_counts().items() if label in self.schema.drop},
            "synonyms": synonyms,
        }
