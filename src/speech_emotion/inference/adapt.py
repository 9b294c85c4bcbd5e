"""``ser adapt``: fit a model to a new domain from that domain's unlabelled audio.

A domain — a recording setup, a language, a call centre — shifts the pooled features of every
clip. :func:`adapt` estimates the domain's feature statistics (mean and spread over its clips;
no label is read) and writes a copy of the bundle whose head standardises inputs of that domain
as it standardised those it was trained on (:meth:`~speech_emotion.model.head.EmotionHead.fold_domain`),
so single-clip ``ser predict`` and ``ser serve`` work on the domain afterwards. The bundle's
``model.json`` says it was adapted, to which audio and from how many clips; figures obtained with it
are adapted figures, never to be reported as unadapted ones (DESIGN invariant 10).
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np

from speech_emotion.data.audio import audio_hash, load_audio
from speech_emotion.data.corpora import AUDIO_EXTENSIONS, find_audio
from speech_emotion.errors import AudioError, BundleError
from speech_emotion.features.normalise import MIN_CLIPS, DomainStatistics
from speech_emotion.features.store import FeatureStore, extract_features
from speech_emotion.inference.predictor import Predictor
from speech_emotion.progress import Progress, no_progress

log = logging.getLogger(__name__)

CHUNK = 256
"""Clips decoded and encoded at a time."""


def list_audio(data: str | Path) -> list[Path]:
    """The audio files of a domain: a folder (searched), a CSV/TSV table (its ``path`` column), or one file.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: a table without a ``path`` column, or no audio found.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(
            f"{data}: no such file or folder; pass a folder of audio, a CSV/TSV with a path column, or a file"
        )
    if data.is_dir():
        files = find_audio(data)
    elif data.suffix.lower() in (".csv", ".tsv"):
        with open(data, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream, delimiter="\t" if data.suffix.lower() == ".tsv" else ",")
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{data}: expected a 'path' column (labels, if any, are not read)")
            files = [data.parent / row["path"] for row in reader]
    elif data.suffix.lower() in AUDIO_EXTENSIONS:
        files = [data]
    else:
        raise ValueError(f"{data}: expected a folder of audio, a CSV/TSV table or an audio file")
    if not files:
        raise ValueError(f"{data}: no audio files found ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return files


def domain_features(
    predictor: Predictor, files: list[Path], *, store: FeatureStore | None = None, progress: Progress = no_progress
) -> tuple[np.ndarray, list[str]]:
    """Pooled features of the clips that load, through the feature store, and the files left out (with why)."""
    store = store if store is not None else FeatureStore()
    features, skipped = [], []
    with progress("encoding the domain's clips", len(files)) as advance:
        for start in range(0, len(files), CHUNK):
            signals, hashes = [], []
            for path in files[start : start + CHUNK]:
                try:
                    signal = load_audio(path)[0]
                except AudioError as error:
                    skipped.append(f"{path}: {error.reason}")
                    advance(1)
                    continue
                signals.append(signal)
                hashes.append(audio_hash(signal))
            if signals:
                features.append(extract_features(predictor.encoder, signals, hashes, store, progress=advance))
    if skipped:
        log.warning("%d file(s) left out of the domain statistics: %s", len(skipped), "; ".join(skipped[:5]))
    shape = (0, predictor.encoder.n_layers, predictor.encoder.dim)
    return (np.concatenate(features) if features else np.zeros(shape, np.float32)), skipped


def adapt(
    model: str | Path,
    data: str | Path,
    *,
    out: str | Path,
    n_clips: int | None = None,
    seed: int = 0,
    name: str | None = None,
    force: bool = False,
    store: FeatureStore | None = None,
    progress: Progress = no_progress,
) -> dict:
    """Write a copy of ``model`` adapted to the domain of ``data`` (its unlabelled audio).

    Args:
        model: a run folder or bundle made by ``ser train`` (an ONNX export cannot be adapted:
            adapt the bundle, then export it).
        data: the domain's audio: a folder, a CSV/TSV table (``path`` column; labels are not read)
            or a file.
        out: the bundle folder to write (refused when it exists, unless ``force``).
        n_clips: estimate from this many clips, drawn at random (seeded); default: all.
        name: what to call the domain in ``model.json`` (default: the folder's name).

    Returns:
        The ``adaptation`` section written into the new ``model.json``.

    Raises:
        BundleError: a model that cannot be adapted (ONNX export, per-speaker or stock-head models).
        ValueError: fewer than 2 usable clips, or ``n_clips`` below 2.
        FileExistsError: ``out`` exists and ``force`` is false.
    """
    from speech_emotion.model.bundle import save_bundle

    out = Path(out)
    predictor = Predictor.from_pretrained(model, backend="torch")
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
    files = list_audio(data)
    if n_clips is not None and n_clips < len(files):
        files = [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), n_clips, replace=False))]
    features, skipped = domain_features(predictor, files, store=store, progress=progress)
    domain = name or (Path(data).parent if Path(data).is_file() else Path(data)).resolve().name
    stats = DomainStatistics.estimate(features, name=f"domain {domain!r}")
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
    }
    staging = out.with_name(f".{out.name}.adapting")
    shutil.rmtree(staging, ignore_errors=True)
    inside = bundle.meta.encoder.bundled_folder(bundle.path)
    if inside is not None:  # a fine-tuned encoder travels with its head
        shutil.copytree(inside, staging / inside.relative_to(bundle.path))
    save_bundle(staging, head, bundle.meta.replace(adaptation=adaptation), domain=(stats.mean, stats.scale))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return adaptation
