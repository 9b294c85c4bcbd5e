"""6-fold leave-speakers-out CV of heavier recipes than `ser cv` offers: ensembles and encoder combinations.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/cv_ideas.py bag            # 5 heads per fold, each early-stopped on other val actors
    HF_HUB_OFFLINE=1 python bench/cv_ideas.py tiny           # whisper-base + whisper-tiny.en features side by side
    HF_HUB_OFFLINE=1 python bench/cv_ideas.py egemaps        # whisper-base + eGeMAPS
    HF_HUB_OFFLINE=1 python bench/cv_ideas.py tiny+egemaps   # all three

Same folds as ``ser cv … --folds 6 --seed 0`` (test actors of a fold never seen in its
training or validation), default head recipe (``TrainConfig()``), features through the feature
store. Combinations flatten each encoder's (layers, dim) statistics and put them side by side,
so the linear head sees every layer of every encoder. ``bag``: the 15 non-test actors of a
fold are cut into 5 groups of 3; each head trains on 12 and early-stops on the other 3; the 5
heads' probabilities are averaged on the test actors. Prints accuracy and UAR, mean ± std over
folds. Nothing here is tuned on test folds: every setting was fixed before the run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ENCODERS = {
    "base": str(SHARED / "models" / "whisper-base-encoder"),
    "tiny": str(SHARED / "models" / "whisper-tiny.en-encoder"),
    "egemaps": "egemaps",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", help="bag, or extra encoders joined by '+': tiny, egemaps")
    args = parser.parse_args()

    from speech_emotion.data import load_dataset
    from speech_emotion.data.splits import leave_speakers_out
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.features.store import encode_dataset
    from speech_emotion.model.head import predict_proba
    from speech_emotion.model.metrics import classification_metrics
    from speech_emotion.training.config import TrainConfig
    from speech_emotion.training.loop import fit_head

    dataset = load_dataset(SHARED / "data" / "ravdess-speech-16k", labels="ravdess-8")
    names = ["base"] + ([] if args.mode == "bag" else args.mode.split("+"))
    features = [encode_dataset(dataset, load_encoder(ENCODERS[name])) for name in names]
    X = features[0] if len(features) == 1 else np.concatenate([f.reshape(len(f), 1, -1) for f in features], axis=2)
    y, speakers = np.asarray(dataset.y), np.asarray(dataset.speakers)
    classes, config = dataset.schema.classes, TrainConfig()

    scores = []
    for split in leave_speakers_out(list(speakers), 6, seed=0):
        train, val, test = split.parts["train"], split.parts["val"], split.parts["test"]
        if args.mode == "bag":
            rest = np.array(sorted(set(speakers[np.concatenate([train, val])])))
            groups = np.array_split(np.random.default_rng(0).permutation(rest), 5)
            parts = [
                (np.flatnonzero(~np.isin(speakers, g) & np.isin(speakers, rest)), np.flatnonzero(np.isin(speakers, g)))
                for g in groups
            ]
        else:
            parts = [(train, val)]
        proba = sum(
            predict_proba(fit_head(X[t], y[t], X[v], y[v], n_classes=len(classes), config=config).head, X[test])
            for t, v in parts
        )
        metrics = classification_metrics(y[test], proba.argmax(axis=1), classes)
        scores.append((metrics["accuracy"], metrics["uar"]))
    a = np.array(scores)
    print(
        f"{args.mode}: accuracy {a[:, 0].mean():.1%} ± {a[:, 0].std():.1%}, UAR {a[:, 1].mean():.1%} ± "
        f"{a[:, 1].std():.1%}; "
        f"folds {', '.join(f'{v:.1%}' for v in a[:, 0])}"
    )


if __name__ == "__main__":
    main()
