"""Corpus adapters: a folder or table of recordings → :class:`Manifest`.

Each adapter knows one corpus's published naming. Audio files whose names an adapter
cannot parse become :class:`Problem` rows, never silent omissions; non-audio files
(README, .txt) are ignored.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "Actor_05").mkdir()
    >>> _ = (root / "Actor_05" / "03-01-05-02-01-01-05.wav").write_bytes(b"")
    >>> m = read_corpus(root)
    >>> m[0].speaker, m[0].label, m[0].corpus, m[0].fields["intensity"]
    ('05', 'angry', 'ravdess', 'strong')
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Callable

from speech_emotion.data.manifest import CANONICAL_LABELS, Manifest, Problem, Utterance, canonical_label
from speech_emotion.errors import CorpusError, printable_path, undecodable_name

log = logging.getLogger(__name__)

CORPORA = ("ravdess", "crema-d", "tess", "savee", "emodb", "folder", "csv")
"""Names accepted by ``--corpus``."""

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au"})
"""File extensions treated as audio when a folder is scanned."""

# A filename parser returns (speaker, raw label, fields) or None when the name does not fit.
Parsed = tuple[str, str, dict] | None

_RAVDESS = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_RAVDESS_EMOTIONS = dict(enumerate(["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"], 1))
_RAVDESS_MODALITY = {1: "audio-video", 2: "video-only", 3: "audio-only"}
_RAVDESS_CHANNEL = {1: "speech", 2: "song"}


def parse_ravdess(stem: str) -> Parsed:
    """``MM-VV-EE-II-SS-RR-AA``: modality, vocal channel, emotion, intensity, statement, repetition, actor."""
    match = _RAVDESS.match(stem)
    if not match:
        return None
    modality, channel, emotion, intensity, statement, repetition, actor = (int(g) for g in match.groups())
    if emotion not in _RAVDESS_EMOTIONS or channel not in _RAVDESS_CHANNEL or intensity not in (1, 2) or actor < 1:
        return None
    fields = {
        "modality": _RAVDESS_MODALITY.get(modality, str(modality)),
        "vocal_channel": _RAVDESS_CHANNEL[channel],
        "intensity": "normal" if intensity == 1 else "strong",
        "statement": statement,
        "repetition": repetition,
        "sex": "male" if actor % 2 else "female",
    }
    return f"{actor:02d}", _RAVDESS_EMOTIONS[emotion], fields


_CREMAD = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
_CREMAD_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}


def parse_crema_d(stem: str) -> Parsed:
    """``1001_DFA_ANG_XX``: actor, sentence, emotion, level."""
    match = _CREMAD.match(stem)
    if not match or match.group(3) not in _CREMAD_EMOTIONS or match.group(4) not in _CREMAD_LEVELS:
        return None
    actor, sentence, emotion, level = match.groups()
    return actor, _CREMAD_EMOTIONS[emotion], {"statement": sentence, "intensity": _CREMAD_LEVELS[level]}


_TESS = re.compile(r"^(OAF|YAF)_(\w+?)_(angry|disgust|fear|happy|neutral|ps|sad|pleasant_surprised?|surprised?)$", re.I)


def parse_tess(stem: str) -> Parsed:
    """``OAF_back_angry``: speaker (OAF older, YAF younger female), word, emotion (``ps`` = pleasant surprise)."""
    match = _TESS.match(stem)
    if not match:
        return None
    speaker, word, emotion = match.groups()
    emotion = emotion.lower()
    label = "surprised" if emotion == "ps" or "surprise" in emotion else canonical_label(emotion)
    return speaker.upper(), label, {"word": word, "sex": "female"}


_SAVEE = re.compile(r"^(DC|JE|JK|KL)[_/\\]?(a|d|f|h|n|sa|su)(\d\d)$")
_SAVEE_EMOTIONS = {
    "a": "angry",
    "d": "disgust",
    "f": "fearful",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprised",
}


def parse_savee(stem: str) -> Parsed:
    """``DC_a01`` (or ``DC/a01`` in the original layout): speaker DC/JE/JK/KL, emotion code, sentence."""
    match = _SAVEE.match(stem)
    if not match:
        return None
    speaker, code, sentence = match.groups()
    return speaker, _SAVEE_EMOTIONS[code], {"sentence": sentence, "sex": "male"}


_EMODB = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")
_EMODB_EMOTIONS = {
    "W": "angry",
    "L": "boredom",
    "E": "disgust",
    "A": "fearful",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}
_EMODB_MALE = {"03", "10", "11", "12", "15"}


def parse_emodb(stem: str) -> Parsed:
    """``03a01Fa``: speaker, text code, emotion letter (German initial), version."""
    match = _EMODB.match(stem)
    if not match:
        return None
    speaker, text, emotion, version = match.groups()
    sex = "male" if speaker in _EMODB_MALE else "female"
    return speaker, _EMODB_EMOTIONS[emotion], {"text": text, "version": version, "sex": sex}


FILENAME_PARSERS: dict[str, Callable[[str], Parsed]] = {
    "ravdess": parse_ravdess,
    "crema-d": parse_crema_d,
    "tess": parse_tess,
    "savee": parse_savee,
    "emodb": parse_emodb,
}


def find_audio(root: str | Path) -> list[Path]:
    """Audio files below ``root``, following symbolic links, sorted by path.

    Each real folder is visited once, so a link back up the tree (``again -> .``) neither lists
    clips twice nor loops forever; a real file reached through two paths is listed once (the
    first path in sorted order) and the other paths are reported as a warning.

    Example:
        >>> import tempfile, os
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "a.wav").write_bytes(b"")
        0
        >>> os.symlink(".", root / "again")
        >>> [p.name for p in find_audio(root)]
        ['a.wav']
    """
    found: dict[Path, Path] = {}  # real file -> the path it is listed under
    visited: set[tuple[int, int]] = set()
    duplicates = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in visited:
            dirs[:] = []  # a link to a folder already walked: do not go down it again
            continue
        visited.add((status.st_dev, status.st_ino))
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            real = path.resolve()
            if real in found:
                duplicates.append(f"{path} (the same file as {found[real]})")
            else:
                found[real] = path
    if duplicates:
        log.warning(
            "%s: %d file(s) reached twice through symbolic links, counted once: %s",
            root,
            len(duplicates),
            "; ".join(duplicates[:5]) + (" …" if len(duplicates) > 5 else ""),
        )
    return sorted(found.values())


def read_corpus(data: str | Path, *, corpus: str | None = None, speaker_pattern: str | None = None) -> Manifest:
    """Read a corpus folder or CSV/TSV table into a manifest.

    Args:
        data: a corpus folder, or a ``.csv``/``.tsv`` table with columns ``path,label,speaker``.
        corpus: one of :data:`CORPORA`; detected from file names when omitted.
        speaker_pattern: for ``folder`` corpora, a regex searched in each file's NAME (not its
            folder, which is the label); its group ``speaker`` (or first group) is the speaker id.

    Returns:
        A :class:`Manifest` sorted by path; unparseable audio names are in ``problems``.

    Raises:
        CorpusError: the data is missing, the corpus cannot be detected, or is unknown.
    """
    data = Path(data)
    if not data.exists():
        raise CorpusError(f"{data}: no such file or folder; pass a corpus folder or a CSV/TSV manifest")
    if corpus is not None and corpus not in CORPORA:
        raise CorpusError(f"unknown corpus {corpus!r}; expected one of: {', '.join(CORPORA)}")
    if data.is_file():
        if corpus not in (None, "csv"):
            raise CorpusError(f"{data}: a file can only be read as --corpus csv, got --corpus {corpus}")
        if data.suffix.lower() not in (".csv", ".tsv"):
            raise CorpusError(
                f"{data}: expected a corpus folder or a .csv/.tsv manifest with path,label,speaker columns, "
                f"got a {data.suffix or 'suffix-less'} file; pass the folder that holds it"
            )
        return read_table(data)
    if corpus == "csv":
        raise CorpusError(f"{data}: --corpus csv expects a .csv or .tsv file, got a folder")
    files = find_audio(data)
    if not files:
        raise CorpusError(f"{data}: no audio files found ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    corpus = corpus or detect_corpus(data, files)
    if corpus == "folder":
        return read_label_folders(data, files, speaker_pattern)
    return _read_named_files(data, files, corpus)


def detect_corpus(root: Path, files: list[Path]) -> str:
    """Pick the adapter that parses the most file names (a majority is required)."""
    scores = {name: sum(parse(_stem(root, f)) is not None for f in files) for name, parse in FILENAME_PARSERS.items()}
    best = max(scores, key=scores.get)
    if scores[best] * 2 > len(files):
        return best
    if _label_folders(root):
        return "folder"
    raise CorpusError(
        f"{root}: cannot tell which corpus this is: no naming scheme fits most of its {len(files)} audio files "
        f"(best: {best}, {scores[best]} files); pass --corpus with one of: {', '.join(CORPORA)}"
    )


def _stem(root: Path, path: Path) -> str:
    stem = path.stem
    # SAVEE's original layout keeps the speaker in the folder name: DC/a01.wav
    if path.parent != root and re.fullmatch(r"(DC|JE|JK|KL)", path.parent.name):
        stem = f"{path.parent.name}_{stem}" if not stem.startswith(path.parent.name) else stem
    return stem


def _read_named_files(root: Path, files: list[Path], corpus: str) -> Manifest:
    parse = FILENAME_PARSERS[corpus]
    utterances, problems = [], []
    for path in files:
        if undecodable_name(path.name) is not None:  # not a naming-scheme problem: say what it is
            problems.append(Problem(printable_path(path), undecodable_name(path.name)))
            continue
        parsed = parse(_stem(root, path))
        if parsed is None:
            problems.append(Problem(str(path), f"file name does not follow the {corpus} naming scheme"))
            continue
        speaker, label, fields = parsed
        utterances.append(Utterance(str(path), speaker, label, corpus, fields))
    return Manifest(utterances, problems)


def _label_folders(root: Path) -> list[Path]:
    known = set(CANONICAL_LABELS)
    return [d for d in sorted(root.iterdir()) if d.is_dir() and canonical_label(d.name) in known]


def compile_speaker_pattern(speaker_pattern: str) -> re.Pattern:
    """``--speaker-pattern`` compiled.

    Raises:
        CorpusError: not a valid regex.
    """
    try:
        return re.compile(speaker_pattern)
    except re.error as error:
        raise CorpusError(f"--speaker-pattern {speaker_pattern!r} is not a valid regex: {error}") from error


def speaker_from_name(pattern: re.Pattern, name: str) -> str | None:
    """The speaker id in a file name: the pattern's group ``speaker``, else its first group, else the match.

    Example:
        >>> speaker_from_name(re.compile(r"^(?P<speaker>\\d{4})_"), "1157_word.flac")
        '1157'
        >>> speaker_from_name(re.compile(r"^(?P<speaker>\\d{4})_"), "Angry.flac") is None
        True
    """
    match = pattern.search(name)
    if not match:
        return None
    return match.groupdict().get("speaker") or (match.group(1) if pattern.groups else match.group(0))


def read_label_folders(root: Path, files: list[Path], speaker_pattern: str | None) -> Manifest:
    """``root/<label>/*.wav``: the first folder level is the label."""
    if not speaker_pattern:
        raise CorpusError(
            f"{root}: a folder-per-label corpus does not say who speaks; pass --speaker-pattern REGEX "
            r"(e.g. '^(?P<speaker>[^_]+)_' for files named SPEAKER_xxx.wav)"
        )
    pattern = compile_speaker_pattern(speaker_pattern)
    utterances, problems, synonyms = [], [], {}
    for path in files:
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            problems.append(Problem(str(path), "not inside a label folder (expected root/<label>/file)"))
            continue
        if undecodable_name(path.name) is not None:
            problems.append(Problem(printable_path(path), undecodable_name(path.name)))
            continue
        speaker = speaker_from_name(pattern, path.name)  # the file's name: its folder is the label, not the speaker
        if speaker is None:
            problems.append(
                Problem(str(path), f"--speaker-pattern {speaker_pattern!r} does not match the file name {path.name!r}")
            )
            continue
        label = _resolve(relative.parts[0], synonyms)
        utterances.append(Utterance(str(path), speaker, label, "folder", {}))
    return Manifest(utterances, problems, synonyms)


def read_table(table: Path) -> Manifest:
    """A CSV/TSV with columns ``path,label,speaker`` (others become fields); paths relative to the table."""
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    try:
        with open(table, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream, delimiter=delimiter)
            missing = {"path", "label", "speaker"} - set(reader.fieldnames or [])
            if missing:
                raise CorpusError(
                    f"{table}: missing column(s) {', '.join(sorted(missing))}; expected a header "
                    f"with path,label,speaker (got {', '.join(reader.fieldnames or []) or 'no header'})"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise CorpusError(f"{table}: cannot read it as a UTF-8 {delimiter!r}-separated table ({error})") from error
    utterances, problems, synonyms = [], [], {}
    for line, row in enumerate(rows, start=2):
        path = (table.parent / row["path"]).resolve() if not os.path.isabs(row["path"]) else Path(row["path"])
        if not (row["label"] or "").strip() or not (row["speaker"] or "").strip():
            problems.append(Problem(str(path), f"{table.name} line {line}: empty label or speaker"))
            continue
        fields = {k: v for k, v in row.items() if k not in ("path", "label", "speaker") and k is not None}
        label = _resolve(row["label"], synonyms)
        utterances.append(Utterance(str(path), row["speaker"].strip(), label, "csv", fields))
    return Manifest(utterances, problems, synonyms)


def _resolve(raw: str, synonyms: dict) -> str:
    label = canonical_label(raw)
    if label != raw.strip().lower():
        synonyms[raw] = label
    return label
