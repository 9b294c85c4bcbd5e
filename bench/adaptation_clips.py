"""How many unlabelled clips does `ser adapt` need? Leave-one-corpus-out, the tool's own commands.

Usage (from the repository root)::

    SER_CACHE=/tmp/ser-cache HF_HUB_OFFLINE=1 python bench/adaptation_clips.py [--clips 10 30 100] [--draws 5] [--json]

For each shared corpus held out in turn (RAVDESS actors 01-18, TESS, TurEV-DB: ``$SER_SHARED/data``,
default ``../shared``), a model is trained on the other corpora exactly as ``ser train A B --encoder
ENC --labels common-4 --out RUN`` would (default recipe, plus ``--train-option``s), then the held-out
corpus is scored with ``ser evaluate RUN HELD_OUT --labels common-4``:

- unadapted;
- adapted by ``ser adapt RUN HELD_OUT --n-clips N --seed S`` for each N of ``--clips`` and
  ``--draws`` seeds S (statistics from N clips drawn at random; every clip is then scored), and
  by ``ser adapt RUN HELD_OUT`` from all its audio ("all");
- as ``ser evaluate --adapt`` scores it: statistics of the scored clips only ("scored"), and
  each speaker standardised by their own scored clips (``--per-speaker``).

``ser adapt`` reads every clip of the folder, emotions outside the schema included (TESS's
disgust, fear and pleasant surprise; RAVDESS's fearful, disgust and surprised), as a user's
unlabelled recordings would be; "scored" sees only the clips of the schema's classes, so the
two differ by the emotion mix.
Only unlabelled audio of the held-out corpus is read to adapt; labels are read only to score.
Features go through the feature store, so a warm ``$SER_CACHE`` leaves only head training.
Prints one table (UAR; for N clips the median over the draws and the range) and, with ``--json``,
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CORPORA = {
    "ravdess": SHARED / "data" / "ravdess-speech-16k",
    "tess": SHARED / "data" / "tess-16k",
    "turev": SHARED / "data" / "turev-db-16k" / "metadata.csv",
}


def held_out_scores(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Train on every corpus but ``name``; score ``name`` unadapted, adapted from N clips, and from all."""
    from speech_emotion.inference.adapt import adapt
    from speech_emotion.inference.evaluate import evaluate
    from speech_emotion.training.pipeline import train

    held_out = CORPORA[name]
    run = work / f"without-{name}"
    train(
        [str(path) for other, path in CORPORA.items() if other != name],
        encoder=str(args.encoder),
        labels=args.labels,
        out=run,
        config=args.config,
        device=args.device,
        force=True,
    )
    full = evaluate(run, held_out, labels=args.labels, adapt=True, per_speaker=True, device=args.device)
    row = {
        "unadapted": full["uar"],
        "scored": full["adapted"]["uar"],
        "per_speaker": full["adapted_per_speaker"]["uar"],
        "n": full["n"],
    }
    everything = work / f"without-{name}-all"
    adapt(run, held_out, out=everything, force=True, device=args.device)
    row["all"] = evaluate(everything, held_out, labels=args.labels, device=args.device)["uar"]
    for n_clips in args.clips:
        draws = []
        for seed in range(args.draws):
            adapted = work / f"without-{name}-{n_clips}-{seed}"
            adapt(run, held_out, out=adapted, n_clips=n_clips, seed=seed, force=True, device=args.device)
            draws.append(evaluate(adapted, held_out, labels=args.labels, device=args.device)["uar"])
        row[str(n_clips)] = {"median": statistics.median(draws), "min": min(draws), "max": max(draws), "draws": draws}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", type=Path, default=SHARED / "models" / "whisper-base-encoder")
    parser.add_argument("--labels", default="common-4")
    parser.add_argument("--clips", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--draws", type=int, default=5, help="Random draws of N clips (seeds 0..draws-1).")
    parser.add_argument("--held-out", nargs="+", choices=sorted(CORPORA), default=sorted(CORPORA))
    parser.add_argument("--train-option", action="append", default=[], help="A TrainConfig field, e.g. weight_decay=3.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    args = parser.parse_args()
    from speech_emotion.training.config import TrainConfig

    try:
        args.config = TrainConfig.from_dict(dict(_typed(o) for o in args.train_option), where="--train-option")
    except ValueError as error:
        parser.error(str(error))

    with tempfile.TemporaryDirectory(prefix="ser-adapt-bench-") as work:
        rows = {name: held_out_scores(name, args, Path(work)) for name in args.held_out}
    if args.json:
        print(json.dumps({"labels": args.labels, "encoder": str(args.encoder), "rows": rows}))
        return
    columns = ["unadapted"] + [str(n) for n in args.clips] + ["all", "scored", "per_speaker"]
    print(f"UAR on the held-out corpus ({args.labels}; N clips: median of {args.draws} draws [min-max])")
    print(f"{'held out':<10}{'n':>6}  " + "".join(f"{c:>20}" for c in columns))
    for name, row in rows.items():
        cells = [_cell(row[c]) for c in columns]
        print(f"{name:<10}{row['n']:>6}  " + "".join(f"{c:>20}" for c in cells))
    means = [statistics.mean(_value(rows[name][c]) for name in rows) for c in columns]
    print(f"{'mean':<16}  " + "".join(f"{m:>19.1%} " for m in means))


def _typed(option: str) -> tuple[str, object]:
    """``key=value`` as a (key, value) pair, the value read as JSON when it parses (numbers, lists, booleans)."""
    key, _, value = option.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _value(cell) -> float:
    return cell["median"] if isinstance(cell, dict) else cell


def _cell(cell) -> str:
    if isinstance(cell, dict):
        return f"{cell['median']:.1%} [{cell['min']:.0%}-{cell['max']:.0%}]"
    return f"{cell:.1%}"


if __name__ == "__main__":
    main()
