"""``evaluate``: score a trained model on a corpus, keeping training material apart.

Audio the model was trained or validated on (same content hash), and speakers it was
trained or validated on from the same corpus, are *contaminated*: reported loudly, counted
apart, and excluded from ``n`` and every metric (DESIGN invariant 8).

Across corpora, ``labels=SCHEMA`` maps the model's classes and the data's labels onto the same
classes (:func:`map_probabilities`): the probabilities of model classes that a schema merges are
summed, and classes the data does not have are not predicted. With ``adapt=True`` the result also
holds the figures of the model adapted to the data's domain from the data's own unlabelled audio,
apart from the unadapted ones (DESIGN invariant 10).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speech_emotion.data.dataset import load_dataset
from speech_emotion.data.labels import LabelSchema
from speech_emotion.data.manifest import canonical_label
from speech_emotion.data.sources import NAMESPACE, as_sources, plain_speaker, read_corpora
from speech_emotion.errors import BundleError
from speech_emotion.features.normalise import MIN_CLIPS, DomainStatistics, speaker_normalise
from speech_emotion.features.store import encode_dataset
from speech_emotion.inference.predictor import Predictor
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.progress import Progress, no_progress

log = logging.getLogger(__name__)


def map_probabilities(
    probabilities: np.ndarray, model_classes: Sequence[str], schema: LabelSchema, present: Sequence[int]
) -> tuple[np.ndarray, dict]:
    """A model's probabilities over the schema's classes the data has.

    Each model class is mapped with the schema (merged classes' probabilities are summed; a
    class the schema drops gives nothing), and only the schema classes in ``present`` compete.

    Returns:
        ``(n, len(present))`` probabilities (not renormalised) and the mapping used:
        ``{"model_classes": {model class: schema class or None}, "classes": [...present...],
        "not_in_data": [...]}``.

    Raises:
        ValueError: no model class maps onto a class the data has.

    Example:
        >>> schema = LabelSchema.from_name("common-4")
        >>> p = np.array([[0.1, 0.3, 0.2, 0.4]])  # neutral, calm, happy, fearful
        >>> mapped, mapping = map_probabilities(p, ["neutral", "calm", "happy", "fearful"], schema, [1, 2])
        >>> mapped.round(2).tolist(), mapping["classes"], mapping["model_classes"]["calm"]
        ([[0.2, 0.4]], ['happy', 'neutral'], 'neutral')
    """
    mapping = {c: schema.class_of(c) if _covered(schema, c) else None for c in model_classes}
    columns = {schema.classes[i]: j for j, i in enumerate(present)}
    mapped = np.zeros((len(probabilities), len(present)), dtype=np.float64)
    for k, target in enumerate(mapping.values()):
        if target in columns:
            mapped[:, columns[target]] += probabilities[:, k]
    if not any(target in columns for target in mapping.values()):
        raise ValueError(
            f"none of the model's classes {list(model_classes)} maps onto a class the data has "
            f"({', '.join(columns)}) under this schema; pick a schema that covers both"
        )
    return mapped, {
        "model_classes": mapping,
        "classes": list(columns),
        "not_in_data": [c for i, c in enumerate(schema.classes) if i not in present],
    }


def _covered(schema: LabelSchema, label: str) -> bool:
    try:
        schema.class_of(label)
    except ValueError:
        return False
    return True


def evaluate(
    model: str | Path | Predictor,
    data: str | Path | list,
    *,
    labels: str | Path | dict | LabelSchema | None = None,
    adapt: bool = False,
    per_speaker: bool = False,
    corpus: str | None = None,
    speaker_pattern: str | None = None,
    skip_unknown: bool = False,
    skip_bad: bool = False,
    store=None,
    progress: Progress = no_progress,
    device: str = "auto",
    precision: str | None = None,
) -> dict:
    """Accuracy, UAR, macro-F1, per-class figures and confusion on held-out data.

    Args:
        model: a run folder, bundle folder, ONNX export, or a loaded :class:`Predictor`.
        data: corpus folder or CSV/TSV manifest (or a list of them).
        labels: a schema (name, file, dict) onto which both the model's classes and the data's
            labels are mapped (cross-corpus evaluation); default: the model's own schema.
        adapt: also score the model adapted to the data's domain, with statistics of the data's
            own clips (no labels read); reported under ``adapted``, apart.
        per_speaker: with ``adapt``, also score it with each speaker standardised by their own clips
            (a speaker with a single clip by the data's statistics); reported under ``adapted_per_speaker``.
        skip_unknown: leave out labels the model's schema does not map (listed under
            ``skipped_labels``) instead of failing.
        skip_bad: leave out files that will not load (listed under ``skipped``).
        device: where the encoder runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``), when ``model`` is a path.
        precision: ``fp32``/``bf16``, when ``model`` is a path; default: the model's own.

    Returns:
        ``{"accuracy", "uar", "macro_f1", "n", "labels", "per_class", "confusion",
        "contaminated": {"n", "files", "speakers"}, "mapping" (with ``labels``), "adapted" (with
        ``adapt``), "adapted_per_speaker" (with ``per_speaker``), ...}``.

    Raises:
        LabelError: labels outside the schema without ``skip_unknown``.
        BundleError: ``adapt`` with an ONNX export or a per-speaker model.
        ValueError: ``per_speaker`` without ``adapt``.
    """
    if per_speaker and not adapt:
        raise ValueError("per_speaker=True scores an adapted model: pass adapt=True too")
    predictor = (
        model if isinstance(model, Predictor) else Predictor.from_pretrained(model, device=device, precision=precision)
    )
    if adapt and (predictor.backend_name != "torch" or predictor.meta.speaker_norm):
        raise BundleError(
            f"{predictor.path}: adapt=True needs a PyTorch bundle trained without --speaker-norm (an ONNX export "
            "carries a fixed head: adapt the bundle with `ser adapt`, then export it)"
        )
    schema = LabelSchema.resolve(labels) if labels is not None else predictor.meta.label_schema
    skipped_labels = {}
    if skip_unknown:
        raw = read_corpora(as_sources(data, corpus=corpus, speaker_pattern=speaker_pattern)).label_counts()
        skipped_labels = {
            label: n
            for label, n in raw.items()
            if canonical_label(label) not in schema.label_to_index and label not in schema.drop
        }
        schema = LabelSchema(schema.classes, schema.merge, schema.drop | set(skipped_labels))
    with progress("decoding audio", None) as advance:
        dataset = load_dataset(
            data,
            corpus=corpus,
            labels=schema,
            speaker_pattern=speaker_pattern,
            skip_bad=skip_bad,
            allow_single_label_speakers=True,  # no split here: nothing can leak
            progress=advance,
        )
    contaminated = _contaminated(predictor, dataset)
    clean = np.setdiff1d(np.arange(len(dataset)), contaminated)
    if contaminated:
        log.warning(
            "%d of %d files were seen in training or validation (same audio, or a training speaker of the same "
            "corpus); they are excluded from the metrics and listed under 'contaminated'",
            len(contaminated),
            len(dataset),
        )
    subset = dataset.subset(clean)
    present = sorted(set(subset.y.tolist()))
    classes = [schema.classes[i] for i in present] if labels is not None else predictor.classes
    result = classification_metrics([], [], classes)
    if len(clean):
        features = encode_dataset(subset, predictor.encoder, store=store, progress=progress)
        if predictor.meta.speaker_norm:
            # Each evaluated speaker is standardised by their own clips, as in training.
            features = speaker_normalise(features, subset.speakers)
        score = _scorer(predictor, schema if labels is not None else None, present, subset.y)
        result, mapping = score(predictor.predict_features(features))
        if mapping is not None:
            result["mapping"] = {"schema": labels if isinstance(labels, str) else schema.to_dict()} | mapping
        if adapt:
            reference = predictor.backend.bundle.reference
            stats = DomainStatistics.estimate(features, name="the evaluated data")
            result["adapted"] = score(predictor.predict_features(stats.move(features, reference)))[0]
            result["adapted"]["n_clips"] = stats.n_clips
        if per_speaker:
            moved = _moved_per_speaker(features, subset.speakers, stats, reference)
            result["adapted_per_speaker"] = score(predictor.predict_features(moved))[0]
    result["speakers"] = sorted({dataset.speakers[i] for i in clean})
    result["speaker_norm"] = predictor.meta.speaker_norm
    result["model_adaptation"] = predictor.meta.adaptation or {"adapted": False}
    result["contaminated"] = {
        "n": len(contaminated),
        "files": [dataset.paths[i] for i in contaminated],
        "speakers": sorted({dataset.speakers[i] for i in contaminated}),
    }
    result["skipped_labels"] = skipped_labels
    result["skipped"] = [p.to_dict() for p in dataset.problems]
    return result


def _scorer(predictor: Predictor, schema: LabelSchema | None, present: list[int], y: np.ndarray):
    """``probabilities → (metrics, mapping)`` over the model's classes, or over a schema's classes the data has."""

    def score(probabilities: np.ndarray) -> tuple[dict, dict | None]:
        if schema is None:
            return classification_metrics(y, probabilities.argmax(axis=1), predictor.classes), None
        mapped, mapping = map_probabilities(probabilities, predictor.classes, schema, present)
        column = {index: j for j, index in enumerate(present)}
        truth = np.asarray([column[i] for i in y.tolist()], dtype=np.int64)
        return classification_metrics(truth, mapped.argmax(axis=1), mapping["classes"]), mapping

    return score


def _moved_per_speaker(
    features: np.ndarray, speakers: list[str], domain: DomainStatistics, reference: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Each speaker's clips standardised by that speaker's statistics (the domain's for a single clip), then
    moved into the domain the head's scaler is set for."""
    moved = np.empty_like(features, dtype=np.float32)
    speakers = np.asarray(speakers)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        stats = DomainStatistics.estimate(features[rows]) if rows.sum() >= MIN_CLIPS else domain
        moved[rows] = stats.move(features[rows], reference)
    return moved


def _contaminated(predictor: Predictor, dataset) -> list[int]:
    """Rows with audio, or a speaker of the same corpus, that the model was trained or validated on."""
    seen = predictor.meta.data
    seen_hashes = {h for part in seen.get("audio_hashes", {}).values() for h in part}
    seen_corpora = list(seen.get("corpus", []))
    seen_speakers = set()
    for speaker in (s for part in seen.get("speakers", {}).values() for s in part):
        corpus = next((c for c in seen_corpora if speaker.startswith(f"{c}{NAMESPACE}")), None)
        if corpus is not None:
            seen_speakers.add((corpus, plain_speaker(speaker, corpus)))
        elif len(seen_corpora) == 1:
            seen_speakers.add((seen_corpora[0], speaker))
    return [
        i
        for i, (h, u) in enumerate(zip(dataset.hashes, dataset.manifest))
        if h in seen_hashes or (u.corpus, plain_speaker(u.speaker, u.corpus)) in seen_speakers
    ]
