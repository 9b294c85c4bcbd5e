"""``evaluate``: score a trained model on a corpus, keeping training material apart.

Audio the model was trained or validated on (same content hash), and speakers it was
trained or validated on from the same corpus, are *contaminated*: reported loudly, counted
apart, and excluded from ``n`` and every metric (DESIGN invariant 8).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from speech_emotion.data.corpora import read_corpus
from speech_emotion.data.dataset import load_dataset
from speech_emotion.data.labels import LabelSchema
from speech_emotion.data.manifest import canonical_label
from speech_emotion.features.normalise import speaker_normalise
from speech_emotion.features.store import encode_dataset
from speech_emotion.inference.predictor import Predictor
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.progress import Progress, no_progress

log = logging.getLogger(__name__)


def evaluate(
    model: str | Path | Predictor,
    data: str | Path,
    *,
    corpus: str | None = None,
    speaker_pattern: str | None = None,
    skip_unknown: bool = False,
    skip_bad: bool = False,
    store=None,
    progress: Progress = no_progress,
) -> dict:
    """Accuracy, UAR, macro-F1, per-class figures and confusion on held-out data.

    Args:
        model: a run folder, bundle folder, or a loaded :class:`Predictor`.
        data: corpus folder or CSV/TSV manifest.
        skip_unknown: leave out labels the model's schema does not map (listed under
            ``skipped_labels``) instead of failing.
        skip_bad: leave out files that will not load (listed under ``skipped``).

    Returns:
        ``{"accuracy", "uar", "macro_f1", "n", "labels", "per_class", "confusion",
        "contaminated": {"n", "files", "speakers"}, ...}``.

    Raises:
        LabelError: labels outside the schema without ``skip_unknown``.
    """
    predictor = model if isinstance(model, Predictor) else Predictor.from_pretrained(model)
    schema = predictor.meta.label_schema
    skipped_labels = {}
    if skip_unknown:
        raw = read_corpus(data, corpus=corpus, speaker_pattern=speaker_pattern).label_counts()
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

    seen = predictor.meta.data
    seen_hashes = {h for part in seen.get("audio_hashes", {}).values() for h in part}
    seen_speakers = {s for part in seen.get("speakers", {}).values() for s in part}
    seen_corpora = set(seen.get("corpus", []))
    contaminated = [
        i
        for i, (h, u) in enumerate(zip(dataset.hashes, dataset.manifest))
        if h in seen_hashes or (u.corpus in seen_corpora and u.speaker in seen_speakers)
    ]
    clean = np.setdiff1d(np.arange(len(dataset)), contaminated)
    if contaminated:
        log.warning(
            "%d of %d files were seen in training or validation (same audio, or a training speaker of the same "
            "corpus); "
            "they are excluded from the metrics and listed under 'contaminated'",
            len(contaminated),
            len(dataset),
        )
    result = classification_metrics([], [], predictor.classes)
    if len(clean):
        subset = dataset.subset(clean)
        features = encode_dataset(subset, predictor.encoder, store=store, progress=progress)
        if predictor.meta.speaker_norm:
            # Each evaluated speaker is standardised by their own clips, as in training.
            features = speaker_normalise(features, subset.speakers)
        predictions = predictor.predict_features(features).argmax(axis=1)
        result = classification_metrics(subset.y, predictions, predictor.classes)
    result["speakers"] = sorted({dataset.speakers[i] for i in clean})
    result["speaker_norm"] = predictor.meta.speaker_norm
    result["contaminated"] = {
        "n": len(contaminated),
        "files": [dataset.paths[i] for i in contaminated],
        "speakers": sorted({dataset.speakers[i] for i in contaminated}),
    }
    result["skipped_labels"] = skipped_labels
    result["skipped"] = [p.to_dict() for p in dataset.problems]
    return result
