"""Do two devices (or precisions) give the same answer? Features, probabilities and labels of one model, side by side.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/device_agreement.py --model RUN --a cpu:fp32 --b cuda:fp32 [--clips 200] [--json]
    HF_HUB_OFFLINE=1 python bench/device_agreement.py --model RUN --a cuda:fp32 --b cuda:bf16

Each side is ``DEVICE:PRECISION`` (``cpu``, ``cuda``, ``cuda:N``; ``fp32`` or ``bf16``). The same
RAVDESS clips (``$SER_SHARED/data/ravdess-speech-16k``, spread over every actor) are encoded by
``Predictor.from_pretrained(RUN, device=..., precision=...)`` on both sides; a bf16 side on an
fp32 model is allowed as a comparison (``allow_encoder_mismatch``). It prints, and checks
against the tolerances of docs/speed.md (exit code 1 when one is exceeded):

- ``feature_rel``: the largest |a − b| of the pooled features, per layer relative to that
  layer's largest |a|, over all clips;
- ``probability_abs``: the largest |a − b| of the probabilities;
- ``same_label``: the share of clips given the same label.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CORPUS = SHARED / "data" / "ravdess-speech-16k"

TOLERANCES = {
    "same precision": {"feature_rel": 1e-3, "probability_abs": 1e-4, "same_label": 0.999},
    "fp32 vs bf16": {"feature_rel": 0.05, "probability_abs": 0.05, "same_label": 0.97},
}
"""What docs/speed.md states: a device never changes the answer beyond these (DESIGN invariant 11)."""


def side(spec: str) -> tuple[str, str]:
    """``"cuda:0:bf16"`` → ``("cuda:0", "bf16")``; without a precision, fp32."""
    device, _, precision = spec.rpartition(":")
    return (device, precision) if precision in ("fp32", "bf16") else (spec, "fp32")


def encode(model: str, spec: str, clips: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    from speech_emotion import Predictor
    from speech_emotion.data.audio import load_audio

    device, precision = side(spec)
    predictor = Predictor.from_pretrained(model, device=device, precision=precision, allow_encoder_mismatch=True)
    signals = [load_audio(path)[0] for path in clips]
    features = np.stack(predictor.encoder.features(signals))
    return features, predictor.predict_features(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder made by `ser train`")
    parser.add_argument("--a", default="cpu:fp32", help="DEVICE:PRECISION of the reference side")
    parser.add_argument("--b", required=True, help="DEVICE:PRECISION of the side compared with it")
    parser.add_argument("--clips", type=int, default=200, help="RAVDESS clips (default 200)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()

    files = sorted(p for p in CORPUS.glob("Actor_*/*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise SystemExit(f"no clips under {CORPUS}; set SER_SHARED")
    clips = files[:: max(1, len(files) // args.clips)][: args.clips]
    try:
        (fa, pa), (fb, pb) = encode(args.model, args.a, clips), encode(args.model, args.b, clips)
    except ValueError as error:  # a device that is not here: say so, never compare the CPU with itself
        raise SystemExit(f"bench/device_agreement.py: {error}") from None
    scale = np.abs(fa).max(axis=(0, 2), keepdims=True)
    report = {
        "model": args.model,
        "a": args.a,
        "b": args.b,
        "n_clips": len(clips),
        "feature_rel": float((np.abs(fa - fb) / scale).max()),
        "probability_abs": float(np.abs(pa - pb).max()),
        "same_label": float((pa.argmax(1) == pb.argmax(1)).mean()),
    }
    kind = "same precision" if side(args.a)[1] == side(args.b)[1] else "fp32 vs bf16"
    limits = TOLERANCES[kind]
    report["tolerances"] = {kind: limits}
    report["within"] = (
        report["feature_rel"] <= limits["feature_rel"]
        and report["probability_abs"] <= limits["probability_abs"]
        and report["same_label"] >= limits["same_label"]
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.a} vs {args.b} on {len(clips)} clips: features {report['feature_rel']:.2e} (rel, ≤ "
            f"{limits['feature_rel']:g}), probabilities {report['probability_abs']:.2e} "
            f"(≤ {limits['probability_abs']:g}), same label {report['same_label']:.1%} (≥ {limits['same_label']:.1%}): "
            + ("within" if report["within"] else "OUTSIDE")
            + f" the tolerances for {kind}"
        )
    raise SystemExit(0 if report["within"] else 1)


if __name__ == "__main__":
    main()
