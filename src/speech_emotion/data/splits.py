"""Speaker-disjoint splits, leave-speakers-out folds, and the leakage check.

``speakers`` is always required, as ``groups`` is for scikit-learn's group splitters:
evaluation is speaker-independent unless a random split is asked for by name.

Example:
    >>> speakers = ["01"] * 3 + ["02"] * 3 + ["03"] * 3 + ["04"] * 3
    >>> split = speaker_disjoint_split(speakers, test_speakers=["04"], val_speakers=["03"])
    >>> split.speakers
    {'train': ['01', '02'], 'val': ['03'], 'test': ['04']}
    >>> len(leave_speakers_out(speakers, n_splits=4))
    4
    >>> leave_speakers_out(speakers, n_splits=5)
    Traceback (most recent call last):
    ...
    speech_emotion.errors.SplitError: Cannot have n_splits=5 greater than the number of speakers: 4.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from speech_emotion.errors import LeakageError, SplitError

PARTS = ("train", "val", "test")
SPEAKER_DISJOINT = "speaker-disjoint"
RANDOM = "random (speaker overlap allowed: NOT speaker-independent)"


@dataclass
class Split:
    """Row indices of each part (``train``, optionally ``val`` and ``test``) and their speakers."""

    parts: dict[str, np.ndarray]
    protocol: str = SPEAKER_DISJOINT
    seed: int | None = None
    speakers: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_parts(cls, parts: dict, speakers: Sequence[str], **kwargs) -> "Split":
        parts = {name: np.sort(np.asarray(rows, dtype=np.int64)) for name, rows in parts.items() if len(rows)}
        part_speakers = {name: sorted({speakers[i] for i in rows}) for name, rows in parts.items()}
        return cls(parts, speakers=part_speakers, **kwargs)

    def to_dict(self, paths: Sequence[str] | None = None) -> dict:
        """JSON form. Random splits list their files, since speakers cannot define them."""
        out = {"protocol": self.protocol, "seed": self.seed, "parts": {}}
        for name, rows in self.parts.items():
            out["parts"][name] = {"speakers": self.speakers[name], "n": int(len(rows))}
            if self.protocol != SPEAKER_DISJOINT and paths is not None:
                out["parts"][name]["files"] = [paths[i] for i in rows]
        return out

    @classmethod
    def from_dict(cls, spec: dict, speakers: Sequence[str], paths: Sequence[str]) -> "Split":
        """Rebuild a saved split over a manifest's rows (by speaker, or by file for random splits).

        Raises:
            SplitError: an unknown part, a speaker or (random splits) a file not in the data.
        """
        protocol = spec.get("protocol", SPEAKER_DISJOINT)
        parts = {}
        for name, part in spec["parts"].items():
            if name not in PARTS:
                raise SplitError(f"split part {name!r} is not one of {', '.join(PARTS)}")
            if protocol == SPEAKER_DISJOINT:
                wanted = set(resolve_speakers(part["speakers"], speakers))
                parts[name] = [i for i, s in enumerate(speakers) if s in wanted]
            else:
                wanted = set(part["files"])
                parts[name] = [i for i, p in enumerate(paths) if p in wanted]
                missing = sorted(wanted - set(paths))
                if missing:
                    raise SplitError(
                        f"split part {name!r} lists {len(missing)} file(s) not in the data, e.g. "
                        f"{', '.join(missing[:3])}; "
                        "load the same corpus, from the same path, as when the split was made"
                    )
        return cls.from_parts(parts, speakers, protocol=protocol, seed=spec.get("seed"))


def parse_speakers(text: str) -> list[str]:
    """``"01,02,19-24"`` → ids; a range keeps the zero padding of its first end; ``corpus:`` prefixes are kept.

    Example:
        >>> parse_speakers("01,02, 09-11")
        ['01', '02', '09', '10', '11']
        >>> parse_speakers("ravdess:16-17,tess:OAF")
        ['ravdess:16', 'ravdess:17', 'tess:OAF']
    """
    ids = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        match = re.fullmatch(r"(?:(.+):)?(\d+)-(\d+)", item)
        if match:
            corpus, first, last = match.groups()
            if int(last) < int(first):
                raise SplitError(f"speaker range {item!r} runs backwards; write it low-high, e.g. 19-24")
            prefix = f"{corpus}:" if corpus else ""
            ids.extend(prefix + str(n).zfill(len(first)) for n in range(int(first), int(last) + 1))
        else:
            ids.append(item)
    return ids


def resolve_speakers(requested: Sequence[str], speakers: Sequence[str]) -> list[str]:
    """Map requested ids onto the data's ids; unknown or ambiguous ids are an error.

    ``5`` finds ``05``; with speakers namespaced by corpus (``ravdess:05``), ``ravdess:5`` finds it
    too, and so does ``05`` alone when no other corpus has a speaker ``05``.
    """
    known = sorted(set(speakers))

    def number(s: str) -> str:
        return s.lstrip("0") or "0" if s.isdigit() else s

    candidates: dict[str, list[str]] = defaultdict(list)
    for s in known:
        corpus, _, plain = s.rpartition(":")
        candidates[number(s) if not corpus else f"{corpus}:{number(plain)}"].append(s)
        if corpus:
            candidates[number(plain)].append(s)
    resolved, unknown, ambiguous = [], [], []
    for s in (str(r) for r in requested):
        corpus, _, plain = s.rpartition(":")
        found = [s] if s in known else candidates.get(f"{corpus}:{number(plain)}" if corpus else number(s), [])
        if len(found) == 1:
            resolved.append(found[0])
        else:
            (ambiguous if found else unknown).append(f"{s} ({' or '.join(found)})" if found else s)
    if ambiguous:
        raise SplitError(f"speaker(s) {', '.join(ambiguous)} in more than one corpus; write them as CORPUS:SPEAKER")
    if unknown:
        raise SplitError(f"speaker(s) {', '.join(unknown)} not in the data; known speakers: {', '.join(known)}")
    return resolved


def _pick_val(candidates: list[str], n_total: int, val_fraction: float, rng: np.random.Generator) -> list[str]:
    n_val = max(1, round(n_total * val_fraction))
    if n_val >= len(candidates):
        raise SplitError(
            f"cannot take n_val={n_val} validation speakers and keep training speakers: only {len(candidates)} left"
        )
    return sorted(rng.permutation(sorted(candidates))[:n_val].tolist())


def _pick_val_per_corpus(
    candidates: list[str], known: list[str], val_fraction: float, rng: np.random.Generator
) -> list[str]:
    """Validation speakers drawn from every corpus (speakers ``corpus:id``), or from all of one corpus."""
    corpora = sorted({s.rpartition(":")[0] for s in known})
    if len(corpora) == 1:
        return _pick_val(candidates, len(known), val_fraction, rng)
    val = []
    for corpus in corpora:
        members = [s for s in candidates if s.rpartition(":")[0] == corpus]
        if len(members) > 1:  # a corpus with a single speaker left keeps it for training
            val += _pick_val(members, len([s for s in known if s.rpartition(":")[0] == corpus]), val_fraction, rng)
    return sorted(val)


def speaker_disjoint_split(
    speakers: Sequence[str],
    *,
    test_speakers: Sequence[str] | None = None,
    val_speakers: Sequence[str] | None = None,
    test_fraction: float | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Split:
    """Split rows into train/val/test so that no speaker is in two parts.

    Args:
        speakers: speaker id of every row (required).
        test_speakers: explicit test speakers; or ``test_fraction`` of speakers, seeded.
        val_speakers: explicit validation speakers; or ``val_fraction`` of all speakers,
            drawn from those not in test. Neither given: no validation part.
        seed: seed for the fractional draws.

    Raises:
        SplitError: unknown speakers, a speaker asked for in two parts, or too few speakers.
    """
    if speakers is None:
        raise SplitError("The 'speakers' parameter should not be None.")
    speakers = [str(s) for s in speakers]
    known = sorted(set(speakers))
    rng = np.random.default_rng(seed)
    if test_speakers is not None and test_fraction is not None:
        raise SplitError("give test speakers or a test fraction, not both")
    test = resolve_speakers(test_speakers, speakers) if test_speakers is not None else []
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise SplitError(f"test fraction must be between 0 and 1, got {test_fraction}")
        n_test = max(1, round(len(known) * test_fraction))
        test = sorted(rng.permutation(known)[:n_test].tolist())
    val = resolve_speakers(val_speakers, speakers) if val_speakers is not None else []
    both = sorted(set(test) & set(val))
    if both:
        raise SplitError(
            f"speaker(s) {', '.join(both)} asked for in both val and test; each speaker belongs to one part"
        )
    rest = [s for s in known if s not in set(test) | set(val)]
    if not val and val_fraction:
        val = _pick_val_per_corpus(rest, known, val_fraction, rng)
        rest = [s for s in rest if s not in val]
    if not rest:
        raise SplitError(f"no speakers left for training: {len(known)} speakers, all in val/test")
    return _assign(speakers, {"train": rest, "val": val, "test": test}, seed)


def _assign(speakers: Sequence[str], part_speakers: dict, seed: int | None) -> Split:
    where = {s: name for name, group in part_speakers.items() for s in group}
    parts = defaultdict(list)
    for row, s in enumerate(speakers):
        parts[where[s]].append(row)
    return Split.from_parts({name: parts[name] for name in PARTS if parts.get(name)}, speakers, seed=seed)


def leave_speakers_out(
    speakers: Sequence[str], n_splits: int, *, seed: int = 0, val_fraction: float | None = 1 / 6
) -> list[Split]:
    """K folds over whole speakers: each speaker is tested exactly once.

    Within each fold, ``val_fraction`` of all speakers (drawn from the non-test ones,
    seeded) form a validation part for early stopping.

    Raises:
        SplitError: ``n_splits`` < 2 or greater than the number of speakers.
    """
    if speakers is None:
        raise SplitError("The 'speakers' parameter should not be None.")
    speakers = [str(s) for s in speakers]
    known = sorted(set(speakers))
    if n_splits < 2:
        raise SplitError(f"n_splits={n_splits}: leave-speakers-out needs at least 2 folds")
    if n_splits > len(known):
        raise SplitError(f"Cannot have n_splits={n_splits} greater than the number of speakers: {len(known)}.")
    # Imported here, not at the top: scikit-learn (with scipy and pandas) takes seconds to import,
    # and `import speech_emotion` or `ser --help` must not pay for it.
    from sklearn.model_selection import GroupKFold

    folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
        np.zeros(len(speakers)), groups=speakers
    )
    splits = []
    for k, (_, test_rows) in enumerate(folds):
        test = sorted({speakers[i] for i in test_rows})
        rest = [s for s in known if s not in test]
        val = _pick_val(rest, len(known), val_fraction, np.random.default_rng([seed, k])) if val_fraction else []
        train = [s for s in rest if s not in val]
        splits.append(_assign(speakers, {"train": train, "val": val, "test": test}, seed))
    return splits


def random_split(
    n_rows: int, speakers: Sequence[str], *, test_fraction: float, val_fraction: float | None = None, seed: int = 0
) -> Split:
    """Rows drawn at random, speakers shared across parts: for comparisons with papers that did so.

    Its figures are not speaker-independent; the split says so in ``protocol``.
    """
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n_rows)
    n_test = max(1, round(n_rows * test_fraction))
    n_val = round(n_rows * val_fraction) if val_fraction else 0
    parts = {"test": rows[:n_test], "val": rows[n_test : n_test + n_val], "train": rows[n_test + n_val :]}
    return Split.from_parts(parts, [str(s) for s in speakers], protocol=RANDOM, seed=seed)


def check_leakage(
    split: Split,
    speakers: Sequence[str],
    hashes: Sequence[str],
    paths: Sequence[str],
    *,
    allow_speaker_overlap: bool = False,
) -> dict:
    """Check that no speaker and no identical audio sits in two parts of a split.

    Args:
        split: the split to check.
        speakers, hashes, paths: per row, the speaker id, audio content hash and file path.
        allow_speaker_overlap: accept shared speakers (random split); still reported.

    Returns:
        The leakage report: ``speaker_overlap`` and ``content_overlap`` (lists), ``ok``.

    Raises:
        LeakageError: shared speakers (unless allowed) or identical audio across parts,
            naming the speakers and files.
    """
    part_of_row = {int(r): name for name, rows in split.parts.items() for r in rows}
    speaker_parts: dict[str, set] = defaultdict(set)
    hash_rows: dict[str, list[int]] = defaultdict(list)
    for row, name in part_of_row.items():
        speaker_parts[speakers[row]].add(name)
        hash_rows[hashes[row]].append(row)
    speaker_overlap = [
        {"speaker": s, "parts": sorted(p, key=PARTS.index)} for s, p in sorted(speaker_parts.items()) if len(p) > 1
    ]
    content_overlap = [
        {"files": [{"path": paths[r], "speaker": speakers[r], "part": part_of_row[r]} for r in rows]}
        for rows in hash_rows.values()
        if len({part_of_row[r] for r in rows}) > 1
    ]
    report = {
        "protocol": split.protocol,
        "speaker_overlap": speaker_overlap,
        "speaker_overlap_allowed": allow_speaker_overlap,
        "content_overlap": content_overlap,
        "ok": not content_overlap and (allow_speaker_overlap or not speaker_overlap),
    }
    problems = []
    if speaker_overlap and not allow_speaker_overlap:
        listed = "; ".join(f"{o['speaker']} in {' and '.join(o['parts'])}" for o in speaker_overlap[:10])
        more = f" (and {len(speaker_overlap) - 10} more)" if len(speaker_overlap) > 10 else ""
        problems.append(f"speakers in more than one part: {listed}{more}")
    for overlap in content_overlap[:10]:
        listed = ", ".join(f"{f['path']} ({f['part']}, speaker {f['speaker']})" for f in overlap["files"])
        problems.append(f"identical audio in more than one part: {listed}")
    if len(content_overlap) > 10:
        problems.append(f"… and {len(content_overlap) - 10} more groups of identical audio")
    if problems:
        hints = []
        if content_overlap:
            hints.append(
                "Remove the duplicate files, or fix their speaker ids (identical audio is refused in every split)."
            )
        if speaker_overlap and not allow_speaker_overlap:
            hints.append(
                "To accept speakers shared across parts (a random split, not speaker-independent), "
                "pass --allow-speaker-overlap."
            )
        hint = " ".join(hints)
        raise LeakageError("leakage between split parts:\n  " + "\n  ".join(problems) + "\n" + hint)
    return report
