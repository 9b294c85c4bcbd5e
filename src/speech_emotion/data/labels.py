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

_COMMON_4 = ["angry", "happy", "neutral", "sad"]

BUILTIN_SCHEMAS = {
    "ravdess-8": {"classes": list(_RAVDESS_8)},
    "ravdess-7": {"classes": [c for c in _RAVDESS_8 if c != "calm"], "merge": {"calm": "neutral"}},
    # Across corpora: the emotions every corpus has; calm counts as neutral, every other emotion is dropped
    # (and counted in the label report).
    "common-4": {"classes": _COMMON_4, "merge": {"calm": "neutral"}, "others": "drop"},
    "common-6": {"classes": [*_COMMON_4, "fearful", "disgust"], "merge": {"calm": "neutral"}, "others": "drop"},
    "common-7": {
        "classes": [*_COMMON_4, "fearful", "disgust", "surprised"],
        "merge": {"calm": "neutral", "ps": "surprised"},  # TESS's "pleasant surprise"
        "others": "drop",
    },
}
"""Schemas available by name to ``--labels``."""

OTHERS = ("error", "drop")
"""What a schema does with a raw label it neither keeps, merges nor drops: refuse it, or drop it."""


@dataclass(frozen=True)
class LabelSchema:
    """Class names in index order, plus merges and drops of raw labels.

    Args:
        classes: class names; ``classes[i]`` has index ``i``.
        merge: raw label → class it joins.
        drop: raw labels removed from the data.
        others: ``"error"`` (a raw label the schema does not cover is refused) or ``"drop"``
            (it is dropped and counted in the label report).
        corpora: per corpus name, a section with its own ``merge`` and ``drop``, applied to that
            corpus's labels before the schema's own (e.g. ``{"tess": {"merge": {"ps": "surprised"}}}``).

    Raises:
        LabelError: duplicate or empty classes, a merge into an unknown class, or a
            label that is at once kept, merged or dropped.
    """

    classes: tuple[str, ...]
    merge: dict = field(default_factory=dict)
    drop: frozenset = frozenset()
    synonyms: dict = field(default_factory=dict, compare=False)
    others: str = "error"
    corpora: dict = field(default_factory=dict)

    def __post_init__(self):
        synonyms = dict(self.synonyms)
        classes = tuple(_canonical(c, synonyms) for c in self.classes)
        merge = {_canonical(k, synonyms): _canonical(v, synonyms) for k, v in dict(self.merge).items()}
        drop = frozenset(_canonical(d, synonyms) for d in self.drop)
        if self.others not in OTHERS:
            raise LabelError(f"others: expected one of {', '.join(OTHERS)}, got {self.others!r}")
        corpora = {}
        for name, section in dict(self.corpora).items():
            if not isinstance(section, dict) or set(section) - {"merge", "drop"}:
                raise LabelError(f"corpora.{name}: expected a section with 'merge' and/or 'drop', got {section!r}")
            section_merge = {
                _canonical(k, synonyms): _canonical(v, synonyms) for k, v in dict(section.get("merge") or {}).items()
            }
            unknown = sorted(v for v in section_merge.values() if v not in classes)
            if unknown:
                raise LabelError(
                    f"corpora.{name}.merge: targets must be classes; {', '.join(unknown)} is not in {list(classes)}"
                )
            corpora[str(name)] = {
                "merge": section_merge,
                "drop": sorted(_canonical(d, synonyms) for d in section.get("drop") or ()),
            }
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "merge", merge)
        object.__setattr__(self, "drop", drop)
        object.__setattr__(self, "synonyms", synonyms)
        object.__setattr__(self, "corpora", corpora)
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

    def class_of(self, raw: str, corpus: str | None = None) -> str | None:
        """Class name for a raw label (of ``corpus``), ``None`` when dropped; :class:`LabelError` when unknown."""
        raw = canonical_label(raw)
        section = self.corpora.get(corpus or "", {})
        if raw in section.get("drop", ()):
            return None
        if raw in section.get("merge", {}):
            return section["merge"][raw]
        if raw in self.drop:
            return None
        if raw in self.merge:
            return self.merge[raw]
        if raw in self.classes:
            return raw
        if self.others == "drop":
            return None
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
        """JSON-ready form; :meth:`from_dict` reads it back (``others``/``corpora`` only when set)."""
        spec = {"classes": list(self.classes), "merge": dict(self.merge), "drop": sorted(self.drop)}
        if self.others != "error":
            spec["others"] = self.others
        if self.corpora:
            spec["corpora"] = self.corpora
        return spec

    @classmethod
    def from_dict(cls, spec: dict) -> "LabelSchema":
        """Build from ``{"classes": [...], "merge": {...}, "drop": [...]}`` or ``{"label_to_index": {...}}``."""
        if "label_to_index" in spec:
            return cls.from_mapping(spec["label_to_index"])
        unknown = set(spec) - {"classes", "merge", "drop", "others", "corpora"}
        if unknown or "classes" not in spec:
            raise LabelError(
                "a schema has keys classes, merge, drop, others, corpora (or label_to_index); got "
                f"{', '.join(sorted(spec)) or 'none'}"
            )
        return cls(
            tuple(spec["classes"]),
            dict(spec.get("merge") or {}),
            frozenset(spec.get("drop") or ()),
            others=spec.get("others", "error"),
            corpora=dict(spec.get("corpora") or {}),
        )

    @classmethod
    def from_name(cls, name: str) -> "LabelSchema":
        """A built-in schema: ravdess-8, ravdess-7 (calm merged into neutral), common-4/6/7 (across corpora)."""
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
        index = {c: i for i, c in enumerate(self.classes)}
        for row, utterance in enumerate(manifest):
            try:
                name = self.class_of(utterance.label, utterance.corpus)
            except LabelError:
                uncovered.setdefault(canonical_label(utterance.label), []).append(utterance.path)
                continue
            if name is not None:
                keep.append(row)
                indices.append(index[name])
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
        report = {
            "n_classes": self.schema.n_classes,
            "classes": list(self.schema.classes),
            "label_to_index": self.schema.label_to_index,
            "counts_before": self.source.label_counts(),
            "counts_after": {c: counts_after.get(i, 0) for i, c in enumerate(self.schema.classes)},
            "encoded_values": sorted(counts_after),
            "merged": dict(self.schema.merge),
            "dropped": self._dropped(self.source),
            "synonyms": synonyms,
        }
        corpora = sorted({u.corpus for u in self.source})
        if len(corpora) > 1:  # several corpora in one run: each one's counts before and after the mapping
            report["by_corpus"] = {}
            for corpus in corpora:
                rows = [i for i, u in enumerate(self.source) if u.corpus == corpus]
                kept = Counter(self.y[[i for i, u in enumerate(self.manifest) if u.corpus == corpus]].tolist())
                report["by_corpus"][corpus] = {
                    "counts_before": self.source.subset(rows).label_counts(),
                    "counts_after": {c: kept.get(i, 0) for i, c in enumerate(self.schema.classes)},
                    "dropped": self._dropped(self.source.subset(rows)),
                }
        return report

    def _dropped(self, manifest: Manifest) -> dict[str, int]:
        """Rows the schema drops, per raw label (named drops, per-corpus drops and, with others="drop", the rest)."""
        dropped = Counter(u.label for u in manifest if self.schema.class_of(u.label, u.corpus) is None)
        return {label: n for label, n in manifest.label_counts().items() if label in dropped}
