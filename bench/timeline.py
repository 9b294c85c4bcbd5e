"""`ser predict RUN FILE --timeline` on a long recording: speed, where segments fall, labels, memory.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/timeline.py [--model /tmp/runs/base] [--minutes 10]
        [--long-minutes 60] [--window 4] [--clip-baseline] [--json]

The model is a run folder from ``ser train``; by default ``/tmp/runs/base``, made with::

    ser train ../shared/data/ravdess-speech-16k --encoder ../shared/models/whisper-base-encoder \\
        --labels ravdess-8 --test-speakers 16-18 --out /tmp/runs/base

The recording joins real RAVDESS clips of the run's *test* speakers (never heard in
training), shuffled, with 2 s of low noise (-60 dBFS) between clips, written as 16 kHz FLAC
to a temporary folder (never beside ../shared). ``ser predict`` runs as a subprocess, so the
wall time includes start-up (imports, model and VAD loading). Reported:

- wall time and × real time (recording seconds / wall seconds), and the CPU seconds the
  process used (user + system; on a machine shared with other work, wall time grows with
  the load, CPU time much less);
- % of segments lying mostly (> half) in the inserted silences;
- % of clips with a segment, and % of clips whose label at the clip's midpoint is right,
  next to the honest baseline: the run's own test accuracy on whole clips of those
  speakers (``results.json``), and with ``--clip-baseline`` the accuracy on whole clips of
  exactly the clips in the recording;
- peak RSS of the ``ser`` process (``wait4``) and its largest RSS in each quarter of the
  run (polled from /proc), and for flat memory the same on a ``--long-minutes`` recording
  (0 skips it).

The CPU may be shared with other work: say so when quoting the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
RAVDESS = SHARED / "data" / "ravdess-speech-16k"
EMOTIONS = dict(enumerate(["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"], 1))
SILENCE = 2.0


def test_clips(run: Path) -> list[Path]:
    """Clips of the run's test speakers (the speakers it never heard)."""
    speakers = json.loads((run / "split.json").read_text())["parts"]["test"]["speakers"]
    clips = sorted(p for s in speakers for p in (RAVDESS / f"Actor_{s}").glob("*.flac"))
    if not clips:
        raise SystemExit(f"no clips of speakers {speakers} under {RAVDESS}; set SER_SHARED")
    return clips


def build_recording(clips: list[Path], out: Path, minutes: float, seed: int = 0) -> list[dict]:
    """Write clips (reshuffled on each pass) joined by SILENCE s of noise; return each clip's span."""
    rng = np.random.default_rng(seed)
    spans, t, target = [], 0.0, minutes * 60
    with sf.SoundFile(str(out), "w", samplerate=16000, channels=1, format="FLAC", subtype="PCM_16") as sound:
        while t < target:
            for index in rng.permutation(len(clips)):
                path = clips[index]
                signal, rate = sf.read(path, dtype="float32", always_2d=True)
                assert rate == 16000, path
                signal = signal.mean(axis=1)
                sound.write(signal)
                end = t + len(signal) / 16000
                spans.append(
                    {"path": str(path), "start": t, "end": end, "label": EMOTIONS[int(path.name.split("-")[2])]}
                )
                sound.write((0.001 * rng.standard_normal(int(SILENCE * 16000))).astype(np.float32))
                t = end + SILENCE
                if t >= target:
                    break
    return spans


def run_timeline(run: Path, recording: Path, window: float, workdir: Path) -> dict:
    """Run `ser predict --timeline --json` as a child process; wall time and its own peak RSS."""
    ser = Path(sys.executable).with_name("ser")
    command = [
        str(ser) if ser.exists() else "ser",
        "predict",
        str(run),
        str(recording),
        "--timeline",
        "--json",
        "--window",
        str(window),
    ]
    stdout, stderr = workdir / f"{recording.stem}.jsonl", workdir / f"{recording.stem}.err"
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB), polled from /proc

    def poll(pid: int) -> None:
        while True:
            try:
                status_text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return
            rss = next((int(line.split()[1]) for line in status_text.splitlines() if line.startswith("VmRSS:")), None)
            if rss is None:  # a zombie: exited, not yet reaped
                return
            samples.append((time.perf_counter() - start, rss / 1024))
            time.sleep(0.25)

    with open(stdout, "w") as out, open(stderr, "w") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err)
        poller = threading.Thread(target=poll, args=(child.pid,), daemon=True)
        poller.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        poller.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{stderr.read_text()[-3000:]}")
    segments = [json.loads(line) for line in stdout.read_text().splitlines()]
    quarters = [
        max((rss for t, rss in samples if q * wall / 4 <= t < (q + 1) * wall / 4), default=float("nan"))
        for q in range(4)
    ]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "rss_mb_by_quarter": quarters,
        "segments": segments,
    }


def score(segments: list[dict], spans: list[dict]) -> dict:
    """Where segments fall relative to clips and silences, and labels at clip midpoints."""
    ends = np.array([s["end"] for s in spans])

    def in_silence(seg: dict) -> float:
        return float(np.clip(np.minimum(seg["end"], ends + SILENCE) - np.maximum(seg["start"], ends), 0, None).sum())

    n_silent = sum(in_silence(s) > 0.5 * (s["end"] - s["start"]) for s in segments)
    starts = np.array([s["start"] for s in segments])
    found = correct = 0
    for span in spans:
        a, b = span["start"], span["end"]
        lo, hi = np.searchsorted(starts, a - 30), np.searchsorted(starts, b)
        overlapping = [s for s in segments[lo:hi] if s["end"] > a and s["start"] < b]
        if not overlapping:
            continue
        found += 1
        mid = (a + b) / 2
        at_mid = [s for s in overlapping if s["start"] <= mid <= s["end"]] or [
            max(overlapping, key=lambda s: min(s["end"], b) - max(s["start"], a))
        ]
        correct += at_mid[0]["label"] == span["label"]
    return {
        "n_segments": len(segments),
        "segments_in_silence_pct": 100 * n_silent / max(1, len(segments)),
        "n_clips": len(spans),
        "clips_found_pct": 100 * found / len(spans),
        "midpoint_label_right_pct": 100 * correct / len(spans),
        "midpoint_label_right_of_found_pct": 100 * correct / max(1, found),
    }


def clip_baseline(run: Path, spans: list[dict]) -> float:
    """Accuracy of the model on the whole clips in the recording (each clip once)."""
    from speech_emotion import Predictor
    from speech_emotion.data.audio import load_audio

    predictor = Predictor.from_pretrained(run)
    unique = {s["path"]: s["label"] for s in spans}
    paths = sorted(unique)
    results = predictor.predict([load_audio(p)[0] for p in paths])
    return 100 * float(np.mean([r["label"] == unique[p] for r, p in zip(results, paths)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/runs/base"), help="run folder made by ser train")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--long-minutes", type=float, default=60.0, help="flat-memory check on a recording this long (0: skip)"
    )
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--clip-baseline", action="store_true", help="also classify each whole clip of the recording")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where recordings are written (default: a temporary folder)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if not (args.model / "model" / "model.json").is_file():
        raise SystemExit(
            f"{args.model}: no trained run there; make one with the `ser train` command in this script's docstring"
        )
    if str(Path(args.workdir or tempfile.gettempdir()).resolve()).startswith(str(SHARED.resolve())):
        raise SystemExit("--workdir must not be inside ../shared")

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        clips = test_clips(args.model)
        model_meta = json.loads((args.model / "model" / "model.json").read_text())
        results = json.loads((args.model / "results.json").read_text())
        report = {
            "model": str(args.model),
            "encoder": model_meta.get("encoder", {}).get("reference"),
            "classes": model_meta.get("classes") or results.get("classes"),
            "test_speakers": results.get("speakers", {}).get("test"),
            "model_test_accuracy_pct": 100 * results["test"]["accuracy"],
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "runs": [],
        }
        for minutes in [args.minutes] + ([args.long_minutes] if args.long_minutes else []):
            recording = workdir / f"recording-{minutes:g}min.flac"
            spans = build_recording(clips, recording, minutes)
            duration = spans[-1]["end"] + SILENCE
            if minutes == args.minutes and args.clip_baseline:
                report["clip_baseline_accuracy_pct"] = clip_baseline(args.model, spans)
            result = run_timeline(args.model, recording, args.window, workdir)
            report["runs"].append(
                {
                    "minutes": minutes,
                    "duration_s": duration,
                    "file_mb": recording.stat().st_size / 2**20,
                    "wall_s": result["wall_s"],
                    "x_real_time": duration / result["wall_s"],
                    "cpu_s": result["cpu_s"],
                    "peak_rss_mb": result["peak_rss_mb"],
                    "rss_mb_by_quarter": result["rss_mb_by_quarter"],
                    **score(result["segments"], spans),
                }
            )
        report["load_average_after"] = os.getloadavg()

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model    {report['model']}  encoder {report['encoder']}  classes {len(report['classes'] or [])}")
    print(
        f"baseline test accuracy on whole clips of speakers {report['test_speakers']}: "
        f"{report['model_test_accuracy_pct']:.1f}%"
        + (
            f"; on the clips of the recording: {report['clip_baseline_accuracy_pct']:.1f}%"
            if "clip_baseline_accuracy_pct" in report
            else ""
        )
    )
    print(
        f"machine  {report['cpu_count']} CPUs, load average {report['load_average'][0]:.1f} before, "
        f"{report['load_average_after'][0]:.1f} after"
    )
    header = f"{'recording':>10}{'wall s':>9}{'CPU s':>8}{'× real time':>13}{'peak RSS MB':>13}{'segments':>10}{'in silence':>12}{'clips found':>13}{'midpoint right':>16}"  # noqa: E501
    print("\n" + header)
    for r in report["runs"]:
        print(
            f"{r['duration_s'] / 60:>8.1f} "
            f"m{r['wall_s']:>9.1f}{r['cpu_s']:>8.1f}{r['x_real_time']:>12.1f}×{r['peak_rss_mb']:>13.0f}{r['n_segments']:>10}"
            f"{r['segments_in_silence_pct']:>11.1f}%{r['clips_found_pct']:>12.1f}%{r['midpoint_label_right_pct']:>15.1f}%"
        )
    for r in report["runs"]:
        print(
            f"{r['minutes']:g} min: largest RSS in each quarter of the run (MB): "
            + ", ".join(f"{q:.0f}" for q in r["rss_mb_by_quarter"])
        )
    if len(report["runs"]) > 1:
        first, last = report["runs"][0], report["runs"][-1]
        print(
            f"\nflat memory: peak RSS {last['peak_rss_mb']:.0f} MB for {last['minutes']:g} min vs "
            f"{first['peak_rss_mb']:.0f} MB for {first['minutes']:g} min "
            f"(ratio {last['peak_rss_mb'] / first['peak_rss_mb']:.2f})"
        )


if __name__ == "__main__":
    main()
