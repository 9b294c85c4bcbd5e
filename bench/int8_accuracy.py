"""What int8 quantization costs in accuracy, over every clip of a leave-speakers-out CV.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/int8_accuracy.py --export DIR [--fp32-export DIR] [--folds 6] [--json]

The deployment being measured: a head trained as ``ser train`` trains it (PyTorch encoder,
fp32 features), then run on an export made by ``ser export MODEL --format onnx --quantize int8
--out DIR``. For each fold of ``ser cv``'s leave-speakers-out split (same seed, same folds), the
default head is trained on the fold's training speakers' fp32 features and early-stopped on
its validation speakers; its test speakers' clips are then scored twice: with the PyTorch
encoder's features and with the export's. Every clip is tested once, so the accuracy
difference rests on all N clips of the corpus, not on one held-out split of a few speakers.
``--fp32-export`` adds the fp32 export as a third column (it should equal PyTorch).

The encoder of ``--export`` must be the one named in its ``model.json`` (the fp32 features come
from that reference, e.g. ``../shared/models/whisper-base-encoder``). Features go through the
feature store (``$SER_CACHE``), so a second run only trains heads.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="Folder made by `ser export … --quantize int8`.")
    parser.add_argument(
        "--fp32-export", type=Path, help="Folder made by `ser export …` without --quantize (optional third column)."
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "ravdess-speech-16k")
    parser.add_argument("--labels", default="ravdess-8")
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    args = parser.parse_args()

    from speech_emotion import Predictor
    from speech_emotion.data import load_dataset
    from speech_emotion.data.splits import leave_speakers_out
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.features.store import encode_dataset
    from speech_emotion.model.head import predict_proba
    from speech_emotion.training.config import TrainConfig
    from speech_emotion.training.loop import fit_head

    exports = {"int8": args.export} | ({"onnx-fp32": args.fp32_export} if args.fp32_export else {})
    predictors = {name: Predictor.from_pretrained(folder) for name, folder in exports.items()}
    reference = predictors["int8"].meta.encoder.source  # the recorded folder when it is still there
    dataset = load_dataset(args.data, labels=args.labels)
    config = TrainConfig(seed=args.seed)
    features = {"torch": encode_dataset(dataset, load_encoder(reference))}
    features |= {name: encode_dataset(dataset, predictor.encoder) for name, predictor in predictors.items()}

    y = np.asarray(dataset.y)
    right = {name: np.zeros(len(y), dtype=bool) for name in features}
    for split in leave_speakers_out(dataset.speakers, args.folds, seed=args.seed):
        train, val, test = split.parts["train"], split.parts["val"], split.parts["test"]
        X = features["torch"]
        head = fit_head(X[train], y[train], X[val], y[val], n_classes=len(dataset.schema.classes), config=config).head
        for name, X_name in features.items():
            right[name][test] = predict_proba(head, X_name[test]).argmax(axis=1) == y[test]

    accuracy = {name: float(hits.mean()) for name, hits in right.items()}
    result = {
        "protocol": f"leave-speakers-out {args.folds}-fold CV, heads trained on PyTorch fp32 features, {len(y)} test "
        "clips",
        "encoder": reference,
        "export": str(args.export),
        "accuracy": accuracy,
        "int8_minus_torch_points": 100 * (accuracy["int8"] - accuracy["torch"]),
        "clips_changed": int((right["int8"] != right["torch"]).sum()),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(result["protocol"])
    print(f"{'features':<10} {'accuracy':>9}")
    for name, value in accuracy.items():
        print(f"{name:<10} {value:>9.2%}")
    print(
        f"int8 − torch: {result['int8_minus_torch_points']:+.2f} points ({result['clips_changed']} of {len(y)} clips "
        "change right/wrong)"
    )


if __name__ == "__main__":
    main()
