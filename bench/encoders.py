"""Speed of Encoder.features() on real clips: one clip per call vs. sorted, masked batches.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/encoders.py [--encoder FOLDER] [--n-clips 100]
        [--batch-seconds 15 30 60] [--threads N] [--repeats 5] [--stock]

Clips are read from ``$SER_SHARED/data/ravdess-speech-16k`` (default ``../shared``), spread
over all actors, downmixed to mono. Prints a table of clips per second and the largest
difference between batched and one-by-one features. Modes are interleaved and repeated
because a shared CPU changes speed from one moment to the next; compare medians.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from speech_emotion.features.encoders import load_encoder  # noqa: E402

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def read_clips(n_clips: int) -> list[np.ndarray]:
    files = sorted((SHARED / "data" / "ravdess-speech-16k").glob("Actor_*/*.flac"))
    if not files:
        raise SystemExit(f"no clips under {SHARED / 'data' / 'ravdess-speech-16k'}; set SER_SHARED")
    step = max(1, len(files) // n_clips)
    clips = []
    for path in files[::step][:n_clips]:
        signal, sampling_rate = sf.read(path, dtype="float32", always_2d=True)
        if sampling_rate != 16000:
            raise SystemExit(f"{path}: expected 16000 Hz, got {sampling_rate} Hz")
        clips.append(signal.mean(axis=1))
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=str(SHARED / "models" / "whisper-base-encoder"))
    parser.add_argument("--n-clips", type=int, default=100)
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=[15.0, 30.0, 60.0, 120.0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stock", action="store_true", help="also time transformers' 30 s-padded encoder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clips = read_clips(args.n_clips)
    seconds = sum(len(c) for c in clips) / 16000
    start = time.perf_counter()
    encoder = load_encoder(args.encoder, device=args.device)
    load_s = time.perf_counter() - start
    print(f"encoder  {encoder!r}  (loaded in {load_s:.1f} s)")
    print(f"clips    {len(clips)} clips, {seconds:.1f} s of audio, torch threads {torch.get_num_threads()}")
    encoder.features(clips[:2])  # warm-up

    modes = {"one clip per call": None}
    for batch_seconds in args.batch_seconds:
        modes[f"batched, batch_seconds={batch_seconds:g}"] = batch_seconds
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    diffs: dict[str, float] = {}
    reference = None
    # Modes are interleaved and repeated: shared CPUs change speed from one second to the next.
    for _ in range(args.repeats):
        for mode, batch_seconds in modes.items():
            start = time.perf_counter()
            if batch_seconds is None:
                result = [encoder.features([clip])[0] for clip in clips]
            else:
                result = encoder.features(clips, batch_seconds=batch_seconds)
            times[mode].append(time.perf_counter() - start)
            if reference is None:
                reference = result
            diffs[mode] = max(float(np.abs(a - b).max()) for a, b in zip(reference, result))
    if args.stock:
        times["stock transformers, 30 s padding"] = [stock_seconds_per_clip(args.encoder, clips[:10]) * len(clips)]
        diffs["stock transformers, 30 s padding"] = float("nan")

    print(f"\n{'mode':<40}{'best s':>8}{'median s':>10}{'best clips/s':>14}{'median clips/s':>16}{'max |diff|':>12}")
    for mode, values in times.items():
        best, median = min(values), float(np.median(values))
        print(
            f"{mode:<40}{best:>8.2f}{median:>10.2f}{len(clips) / best:>14.1f}{len(clips) / median:>16.1f}"
            f"{diffs[mode]:>12.1e}"
        )


def stock_seconds_per_clip(folder: str, clips: list[np.ndarray]) -> float:
    """Seconds per clip of transformers' own Whisper encoder, each clip padded to 30 s."""
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the classifier head is missing on purpose
    hf_logging.disable_progress_bar()
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    model = WhisperForAudioClassification.from_pretrained(folder).encoder.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for clip in clips:
            mel = extractor(clip, sampling_rate=16000, return_tensors="pt")["input_features"]
            model(mel, output_hidden_states=True)
    return (time.perf_counter() - start) / len(clips)


if __name__ == "__main__":
    main()
