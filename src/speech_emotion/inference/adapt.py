"""``ser adapt``: fit a model to a new domain from that domain's unlabelled audio.

A domain — a recording setup, a language, a call centre — shifts the pooled features of every
clip. :func:`adapt` estimates the domain's feature statistics (mean and spread over its clips;
no label is read) and writes a copy of the bundle whose head standardises inputs of that domain
as it standardised those it was trained on (:meth:`~speech_emotion.model.head.EmotionHead.fold_domain`),
so single-clip ``ser predict`` and ``ser serve`` work on the domain afterwards. The bundle's
``model.json`` says it was adapted, to which audio and from how many clips; figures obtained with it
are adapted figures, never to be reported as unadapted ones (DESIGN invariant 10).

With ``per_speaker``, the bundle also keeps each speaker's statistics: a clip whose speaker is
named at prediction time is standardised by that speaker's clips (as ``--speaker-norm`` does in
training), any other clip by the domain's. Judge that per domain: with few clips per speaker, or
speakers whose clips lean towards one emotion, it can hurt.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np

from speech_emotion.atomic import replace_folder
from speech_emotion.data.audio import audio_hash, load_audio
from speech_emotion.data.corpora import AUDIO_EXTENSIONS, compile_speaker_pattern, find_audio, speaker_from_name
from speech_emotion.errors import AudioError, BundleError
from speech_emotion.features.normalise import MIN_CLIPS, DomainStatistics, standardise_groups
from speech_emotion.features.store import FeatureStore, extract_features
from speech_emotion.inference.predictor import Predictor
from speech_emotion.progress import Progress, no_progress

log = logging.getLogger(__name__)

CHUNK = 256
"""Clips decoded and encoded at a time."""


def list_audio(data: str | Path, *, speaker_pattern: str | None = None) -> tuple[list[Path], list[str] | None]:
    """The audio files of a domain and, where the data says, who speaks in each.

    ``data`` is a folder (searched), a CSV/TSV table (its ``path`` column; a ``speaker`` column
    gives the speakers) or one file. With ``speaker_pattern``, speakers come from the file names
    instead (the regex's group ``speaker``, else its first group); a file it does not match is
    an error. Labels are never read.

    Returns:
        The files, and one speaker per file (None when neither a column nor a pattern says).

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: a table without a ``path`` column, no audio found, or a name the pattern misses.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(
            f"{data}: no such file or folder; pass a folder of audio, a CSV/TSV with a path column, or a file"
        )
    speakers = None
    if data.is_dir():
        files = find_audio(data)
    elif data.suffix.lower() in (".csv", ".tsv"):
        with open(data, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream, delimiter="\t" if data.suffix.lower() == ".tsv" else ",")
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{data}: expected a 'path' column (labels, if any, are not read)")
            rows = list(reader)
        files = [data.parent / row["path"] for row in rows]
        if "speaker" in (reader.fieldnames or []):
            speakers = [row["speaker"] for row in rows]
    elif data.suffix.lower() in AUDIO_EXTENSIONS:
        files = [data]
    else:
        raise ValueError(f"{data}: expected a folder of audio, a CSV/TSV table or an audio file")
    if not files:
        raise ValueError(f"{data}: no audio files found ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    if speaker_pattern is not None:
        pattern = compile_speaker_pattern(speaker_pattern)
        speakers = [speaker_from_name(pattern, path.name) for path in files]
        missed = [path.name for path, speaker in zip(files, speakers) if speaker is None]
        if missed:
            raise ValueError(
                f"--speaker-pattern {speaker_pattern!r} does not match {len(missed)} file name(s), e.g. {missed[0]!r}"
            )
    return files, speakers


def domain_features(
    predictor: Predictor, files: list[Path], *, store: FeatureStore | None = None, progress: Progress = no_progress
) -> tuple[np.ndarray, list[int], list[str]]:
    """Pooled features of the clips that load (through the feature store), their indices in ``files``,
    and the files left out (with why)."""
    store = store if store is not None else FeatureStore()
    features, kept, skipped = [], [], []
    with progress("encoding the domain's clips", len(files)) as advance:
        for start in range(0, len(files), CHUNK):
            signals, hashes = [], []
            for index in range(start, min(start + CHUNK, len(files))):
                try:
                    signal = load_audio(files[index])[0]
                except AudioError as error:
                    skipped.append(f"{files[index]}: {error.reason}")
                    advance(1)
                    continue
                signals.append(signal)
                hashes.append(audio_hash(signal))
                kept.append(index)
            if signals:
                features.append(extract_features(predictor.encoder, signals, hashes, store, progress=advance))
    if skipped:
        log.warning("%d file(s) left out of the domain statistics: %s", len(skipped), "; ".join(skipped[:5]))
    shape = (0, predictor.encoder.n_layers, predictor.encoder.dim)
    return (np.concatenate(features) if features else np.zeros(shape, np.float32)), kept, skipped


def draw_clips(groups: list[str], n_clips: int, seed: int) -> list[int]:
    """At most ``n_clips`` indices of each group, drawn at random (seeded), in their original order.

    Example:
        >>> draw_clips(["a", "a", "a", "b"], 2, seed=0)
        [1, 2, 3]
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for group in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == group]
        chosen += rows if len(rows) <= n_clips else rng.choice(rows, n_clips, replace=False).tolist()
    return sorted(chosen)


def adapt(
    model: str | Path,
    data: str | Path,
    *,
    out: str | Path,
    n_clips: int | None = None,
    per_speaker: bool = False,
    speaker_pattern: str | None = None,
    seed: int = 0,
    name: str | None = None,
    force: bool = False,
    store: FeatureStore | None = None,
    progress: Progress = no_progress,
    device: str = "auto",
    precision: str | None = None,
) -> dict:
    """Write a copy of ``model`` adapted to the domain of ``data`` (its unlabelled audio).

    Args:
        model: a run folder or bundle made by ``ser train`` (an ONNX export cannot be adapted:
            adapt the bundle, then export it).
        data: the domain's audio: a folder, a CSV/TSV table (``path`` column, ``speaker`` column for
            ``per_speaker``; labels are not read) or a file.
        out: the bundle folder to write (refused when it exists, unless ``force``).
        n_clips: estimate from this many clips (per speaker with ``per_speaker``), drawn at random
            (seeded); default: all.
        per_speaker: also keep each speaker's statistics, so that a clip whose speaker is named
            (``Predictor(..., speaker=)``, ``ser predict --speaker``) is standardised by that
            speaker's; clips of other speakers get the domain's. Speakers come from the table's
            ``speaker`` column or from ``speaker_pattern``.
        speaker_pattern: a regex finding the speaker id in each file name.
        name: what to call the domain in ``model.json`` (default: the folder's name).
        device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        precision: ``fp32``/``bf16``; default: the model's own (another one does not match its features).

    Returns:
        The ``adaptation`` section written into the new ``model.json``.

    Raises:
        BundleError: a model that cannot be adapted (ONNX export, per-speaker or stock-head models).
        ValueError: fewer than 2 usable clips, ``n_clips`` below 2, a speaker with fewer than 2
            clips, or ``per_speaker`` without speaker ids.
        FileExistsError: ``out`` exists and ``force`` is false.
    """
    from speech_emotion.model.bundle import save_bundle

    out = Path(out)
    predictor = Predictor.from_pretrained(model, backend="torch", device=device, precision=precision)
    bundle = predictor.backend.bundle
    if bundle.meta.speaker_norm or bundle.head.config.hf_compatible:
        raise BundleError(
            f"{bundle.path}: a model trained with --speaker-norm or --hf-compatible cannot be adapted to a domain; "
            "train it without"
        )
    if n_clips is not None and n_clips < MIN_CLIPS:
        raise ValueError(f"n_clips: expected at least {MIN_CLIPS} clips to estimate a spread, got {n_clips}")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out, or pass --force to replace it")
    files, speakers = list_audio(data, speaker_pattern=speaker_pattern)
    if per_speaker and speakers is None:
        raise ValueError(
            f"{data}: --per-speaker needs to know who speaks in each file: pass a CSV/TSV with a speaker column, "
            "or --speaker-pattern REGEX matching the speaker id in the file names"
        )
    groups = speakers if per_speaker else ["domain"] * len(files)
    if n_clips is not None:
        chosen = draw_clips(groups, n_clips, seed)
        files, groups = [files[i] for i in chosen], [groups[i] for i in chosen]
    features, kept, skipped = domain_features(predictor, files, store=store, progress=progress)
    domain = name or (Path(data).parent if Path(data).is_file() else Path(data)).resolve().name
    stats = DomainStatistics.estimate(features, name=f"domain {domain!r}")
    speaker_stats = standardise_groups(features, [groups[i] for i in kept])[1] if per_speaker else None
    head = bundle.head
    head.fold_domain(stats.mean, stats.scale, current=bundle.domain)
    adaptation = {
        "domain_norm": bundle.meta.adaptation.get("domain_norm", "none"),
        "adapted": True,
        "domain": domain,
        "data": str(Path(data).resolve()),
        "n_clips": stats.n_clips,
        "n_skipped": len(skipped),
        "adapted_from": str(bundle.path.resolve()),
        "per_speaker": per_speaker,
    }
    staging = out.with_name(f".{out.name}.adapting")
    shutil.rmtree(staging, ignore_errors=True)
    inside = bundle.meta.encoder.bundled_folder(bundle.path)
    if inside is not None:  # a fine-tuned encoder travels with its head
        shutil.copytree(inside, staging / inside.relative_to(bundle.path))
    written = save_bundle(
        staging,
        head,
        bundle.meta.replace(adaptation=adaptation),
        domain=(stats.mean, stats.scale),
        speakers=speaker_stats,
    )
    replace_folder(staging, out)
    return written.adaptation
