"""The export's check: clips through ``pipeline()`` on the written folder and through ``ser predict``'s path.

With the run's corpus at hand the clips are the run's held-out test speakers, and both paths
are scored against their labels; without it, three clips of synthetic noise. An exact copy
(wav2vec 2.0 family) that differs from the bundle by more than :data:`MAX_DIFF` in any class
probability is an error; a refitted Whisper head is only compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.errors import BundleError
from speech_emotion.export.huggingface.run_data import RunData
from speech_emotion.features.store import encode_dataset
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.progress import Progress

MAX_DIFF = 1e-4
"""Largest |Δp| accepted between the exported pipeline and ``ser predict`` for an exact copy."""
MAX_PIPELINE_SECONDS = 30.0
"""Longer clips are windowed by ``ser predict`` but encoded whole (SSL) or cut (Whisper) by the pipeline."""


def check_export(folder: Path, predictor, run: RunData | None, store, progress: Progress, *, exact: bool) -> dict:
    """Run clips through ``pipeline()`` on the exported folder and through the bundle; compare."""
    from transformers import pipeline

    classes = predictor.classes
    pipe = pipeline("audio-classification", model=str(folder), device="cpu")
    if run is not None and len(run.rows.get("test", [])):
        rows = run.rows["test"]
        subset = run.dataset.subset(rows)
        signals, y = run.signals("test"), run.y("test")
        where = f"held-out test speakers {', '.join(run.speakers('test'))}"
        predicted = predictor.predict_features(
            encode_dataset(subset, predictor.encoder, store=store, progress=progress)
        )
    else:
        rng = np.random.default_rng(0)
        signals = [(0.1 * rng.standard_normal(int(s * SAMPLING_RATE))).astype(np.float32) for s in (0.7, 1.6, 3.1)]
        y, where = None, "synthetic noise (no run corpus available)"
        predicted = np.stack(
            [predictor.predict_features(np.stack(predictor.encoder.features([s])))[0] for s in signals]
        )
    through_pipeline = np.zeros_like(predicted)
    with progress("checking the export through pipeline()", len(signals)) as advance:
        for i, signal in enumerate(signals):
            for item in pipe(signal, top_k=None):
                through_pipeline[i, classes.index(item["label"])] = item["score"]
            advance(1)
    short = np.asarray([len(s) <= MAX_PIPELINE_SECONDS * SAMPLING_RATE for s in signals])
    diff = np.abs(through_pipeline - predicted)[short]
    check = {
        "clips": where,
        "n": int(len(signals)),
        "max_abs_diff": float(diff.max()) if diff.size else None,
        "same_label": float((through_pipeline.argmax(1) == predicted.argmax(1)).mean()),
    }
    if y is not None:
        for name, probabilities in (("pipeline", through_pipeline), ("ser_predict", predicted)):
            m = classification_metrics(y, probabilities.argmax(axis=1), classes)
            check[name] = {k: m[k] for k in ("accuracy", "uar", "macro_f1", "n")}
        check["accuracy_gap"] = round(check["ser_predict"]["accuracy"] - check["pipeline"]["accuracy"], 4)
    if exact and check["max_abs_diff"] is not None and check["max_abs_diff"] > MAX_DIFF:
        raise BundleError(
            f"{predictor.path}: the exported model's probabilities differ from `ser predict`'s by up to "
            f"{check['max_abs_diff']:.2g} on {where} (expected < {MAX_DIFF}); this is a bug in the export, please "
            "report it"
        )
    return check
