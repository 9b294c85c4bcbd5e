"""6-fold leave-speakers-out CV of partial fine-tuning (``ser train --finetune top-N``), fold by fold.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/cv_finetune.py --top 1 --epochs 8 --out /tmp/cv-ft

Same folds as ``ser cv … --folds 6 --seed 0``; each fold is a ``ser train`` run folder under
``--out`` (test speakers = the fold's, validation speakers = the fold's), so every fold keeps
its report. The frozen layers' frame states are cached once in the feature store and shared by
all folds. Prints per-fold and mean ± std test accuracy and UAR.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default=str(SHARED / "models" / "whisper-base-encoder"))
    parser.add_argument("--top", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from speech_emotion.data import load_dataset
    from speech_emotion.data.splits import leave_speakers_out
    from speech_emotion.training.config import TrainConfig
    from speech_emotion.training.pipeline import train

    data = SHARED / "data" / "ravdess-speech-16k"
    dataset = load_dataset(data, labels="ravdess-8")
    config = TrainConfig(finetune=args.top, max_epochs=args.epochs, patience=args.patience, batch_size=args.batch_size)
    scores = []
    for fold, split in enumerate(leave_speakers_out(dataset.speakers, 6, seed=0), start=1):
        speakers = {part: sorted({dataset.speakers[i] for i in rows}) for part, rows in split.parts.items()}
        results = train(
            data,
            encoder=args.encoder,
            out=args.out / f"fold{fold}",
            labels="ravdess-8",
            test_speakers=speakers["test"],
            val_speakers=speakers["val"],
            config=config,
            force=True,
        )
        scores.append((results["test"]["accuracy"], results["test"]["uar"]))
        print(
            f"fold {fold} test {','.join(speakers['test'])}: accuracy {scores[-1][0]:.1%}, UAR {scores[-1][1]:.1%}",
            flush=True,
        )
    a = np.array(scores)
    print(
        f"top-{args.top}: accuracy {a[:, 0].mean():.1%} ± {a[:, 0].std():.1%}, UAR {a[:, 1].mean():.1%} ± "
        f"{a[:, 1].std():.1%}"
    )


if __name__ == "__main__":
    main()
