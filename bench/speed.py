"""End-to-end speed of emotion prediction on real clips: transformers pipeline vs. our paths.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/speed.py [--model RUN] [--clips 100] [--repeats 3] [--json]
        [--device auto|cpu|cuda|cuda:N] [--precision fp32|bf16] [--batch-frames N]

On the same N RAVDESS clips (``$SER_SHARED/data/ravdess-speech-16k``, default ``../shared``,
spread over all actors), each path is timed end to end — decode → features → probabilities —
after a warm-up, in its own subprocess (so that peak RSS is its own). Passes are interleaved
across paths (a, b, c, d, a, b, …) so that a shared machine's drifting load hits them alike:

(a) ``pipeline``: ``transformers.pipeline("audio-classification")`` with
    ``WhisperForAudioClassification`` built from the same Whisper-base weights (its head is
    random: timing only). Its feature extractor pads every clip to 30 s.
(b) ``torch``: ``Predictor.predict_files`` on a model folder made by ``ser train`` (PyTorch:
    variable-length log-mel, length-bucketed masked batches, decoding overlapped).
(c) ``onnx-fp32`` / ``onnx-int8``: the same model through ``ser export --format onnx``
    [``--quantize int8``], run by ONNX Runtime.
(d) ``ser predict``: the command itself, ``ser predict MODEL FILES… --json``, as a subprocess;
    start-up is excluded by subtracting the time of a 1-clip call.

Load and warm-up are excluded from (a)-(c). Prints clips/s (median of repeats), real-time
factor (processing seconds per second of audio), peak RSS and speed-up over (a). Every path
runs with ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set (as ``ser`` does; set
``OMP_WAIT_POLICY=ACTIVE`` to compare spinning threads).

``--model`` is a run folder made by ``ser train`` with a Whisper-base encoder; without it, a
model with an untrained head on ``$SER_SHARED/models/whisper-base-encoder`` is built (the
head's weights do not change the timing). ONNX exports are written under ``--work``
(default: a temporary folder) and reused from there.

``--device`` (default ``auto``: CUDA when present) is where every path runs: our encoders'
device, the pipeline's device, ONNX Runtime's provider (CUDA needs onnxruntime-gpu). A device
that is not there stops the benchmark before anything runs: ``--device cuda`` on a machine
without a GPU never falls back to the CPU. ``--precision bf16`` (our PyTorch paths; timing
only, the model's fp32 head is used as it is) and ``--batch-frames N`` (padded frames per
forward pass; default: the device's, ``speech_emotion.features.devices.DEFAULT_BATCH_FRAMES``)
tune our paths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every path (the pipeline too) runs with the thread wait policy `ser` uses: idle threads sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CORPUS = SHARED / "data" / "ravdess-speech-16k"
WHISPER_BASE = SHARED / "models" / "whisper-base-encoder"
PATHS = ("pipeline", "torch", "onnx-fp32", "onnx-int8", "ser-predict")
WARMUP_CLIPS = 8


def pick_clips(n_clips: int) -> list[Path]:
    """N clips spread evenly over the corpus (every actor, every emotion)."""
    files = sorted(p for p in CORPUS.glob("Actor_*/*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise SystemExit(f"no clips under {CORPUS}; set SER_SHARED to the folder holding data/ and models/")
    step = max(1, len(files) // n_clips)
    return files[::step][:n_clips]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    Linux's VmHWM, which starts afresh at exec (``ru_maxrss`` would carry over the parent's
    peak); ``ru_maxrss`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


# ---------------------------------------------------------------------------------------------
# Workers: one path each, in a subprocess
# ---------------------------------------------------------------------------------------------


def worker(kind: str, model: str, clips: list[Path], encoder_folder: str, setup: dict) -> None:
    """Load the path's model and warm up (not timed), then time one pass per ``run`` line on stdin.

    ``setup`` holds ``device``, ``precision`` and ``batch_frames`` (see the module's docstring).
    Prints one JSON line when ready, one per pass (``{"seconds": …}``), and a last one with
    the peak RSS when stdin says ``exit``.
    """
    started = time.perf_counter()
    if kind == "pipeline":
        run = pipeline_runner(encoder_folder, setup["device"])
    else:
        from speech_emotion import Predictor

        # bf16 features on a head trained on fp32 ones: a preprocessing mismatch, allowed here for timing only.
        bf16 = setup["precision"] != "fp32"
        torch_only = {"precision": setup["precision"], "allow_encoder_mismatch": bf16} if kind == "torch" else {}
        predictor = Predictor.from_pretrained(model, device=setup["device"], **torch_only)
        if setup["batch_frames"] and kind == "torch":
            predictor.encoder.batch_frames = setup["batch_frames"]

        def run(paths: list[Path]) -> list[dict]:
            return list(predictor.predict_files(paths))

    load_s = time.perf_counter() - started
    run(clips[:WARMUP_CLIPS])
    info: dict = {"kind": kind, "load_s": load_s}
    if kind != "pipeline":
        info["backend"] = predictor.backend_name
        info["device"] = predictor.device
        info["precision"] = predictor.precision
        if predictor.backend_name == "torch":
            import torch

            info["threads"] = torch.get_num_threads()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        results = run(clips)
        seconds = time.perf_counter() - start
        errors = [r for r in results if "error" in r]
        if errors:
            raise SystemExit(f"{kind}: {len(errors)} clips failed, e.g. {errors[0]}")
        print(json.dumps({"seconds": seconds}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def pipeline_runner(encoder_folder: str, device: str):
    """(a): the stock transformers audio-classification pipeline on Whisper-base (random head), on ``device``."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification, pipeline
    from transformers.utils import logging as hf_logging

    from speech_emotion.data.audio import load_audio

    hf_logging.set_verbosity_error()  # the classifier head is missing from the checkpoint on purpose
    hf_logging.disable_progress_bar()
    model = WhisperForAudioClassification.from_pretrained(encoder_folder, num_labels=8).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(encoder_folder)
    from speech_emotion.features.devices import resolve_device

    where = resolve_device(device)
    classify = pipeline("audio-classification", model=model, feature_extractor=extractor, device=where)

    def run(paths: list[Path]) -> list[dict]:
        results = []
        with torch.inference_mode():
            for path in paths:
                signal = load_audio(path)[0]  # decoded as our paths decode (no ffmpeg needed)
                results.append({"path": str(path), "top": classify({"raw": signal, "sampling_rate": 16000}, top_k=1)})
        return results

    return run


class Worker:
    """A path's subprocess: loaded and warmed up once, then timed pass by pass."""

    def __init__(self, kind: str, model: str, clips: list[Path], encoder_folder: str, setup: dict):
        spec = {"kind": kind, "model": model, "clips": [str(c) for c in clips], "encoder": encoder_folder}
        spec["setup"] = setup
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()
        self.info["times_s"] = []

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"{self.kind} worker failed (exit code {self.process.wait()}); its error is above")
        return json.loads(line)

    def run(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        seconds = self._read()["seconds"]
        self.info["times_s"].append(seconds)
        return seconds

    def close(self) -> dict:
        self.process.stdin.write("exit\n")
        self.process.stdin.flush()
        self.info.update(self._read())
        self.process.wait()
        return self.info


def ser_predict_timer(model: str, clips: list[Path], device: str):
    """(d): ``ser predict MODEL FILES… --json --device DEVICE``; start-up removed by subtracting a 1-clip call.

    Returns a function that times one pass and the dict it fills.
    """
    ser = shutil.which("ser")
    command = [ser] if ser else [sys.executable, "-c", "from speech_emotion.cli.app import main; main()"]

    def call(paths: list[Path]) -> tuple[float, float]:
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            start = time.perf_counter()
            process = subprocess.Popen(
                [*command, "predict", model, *map(str, paths), "--json", "--device", device],
                stdout=stdout,
                stderr=stderr,
            )
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
            seconds = time.perf_counter() - start
            process.returncode = os.waitstatus_to_exitcode(status)
            stdout.seek(0)
            stderr.seek(0)
            if process.returncode != 0:
                raise SystemExit(f"ser predict failed:\n{stderr.read().decode()[-3000:]}")
            rows = [json.loads(line) for line in stdout.read().decode().splitlines() if line.startswith("{")]
        if len(rows) != len(paths) or any("error" in r for r in rows):
            raise SystemExit(f"ser predict: expected {len(paths)} rows without errors, got {len(rows)}")
        return seconds, usage.ru_maxrss / 1024

    call(clips[:1])  # warm the file cache and Python's bytecode
    info: dict = {"kind": "ser-predict", "times_s": [], "startup_s": [], "peak_rss_mb": 0.0}

    def one_pass() -> None:
        one, _ = call(clips[:1])
        full, rss = call(clips)
        if full <= one:
            raise SystemExit(
                f"ser predict: {len(clips)} clips took {full:.1f} s, 1 clip {one:.1f} s; too few clips to tell "
                "start-up apart (use more --clips)"
            )
        info["startup_s"].append(one)
        info["times_s"].append((full - one) * len(clips) / (len(clips) - 1))
        info["peak_rss_mb"] = max(info["peak_rss_mb"], rss)
        info["load_s"] = statistics.median(info["startup_s"])

    return one_pass, info


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def untrained_model(folder: Path, encoder_folder: str) -> Path:
    """A ``ser train``-style model folder with an untrained head on ``encoder_folder`` (timing only)."""
    if (folder / "model" / "model.json").is_file():
        return folder
    from speech_emotion.data.labels import LabelSchema
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.model.bundle import save_bundle
    from speech_emotion.model.head import EmotionHead, HeadConfig
    from speech_emotion.model.metadata import BundleMeta, EncoderRef

    encoder = load_encoder(encoder_folder)
    schema = LabelSchema.from_name("ravdess-8")
    head = EmotionHead(HeadConfig(n_layers=encoder.n_layers, dim=encoder.dim, n_classes=schema.n_classes))
    head.eval()
    meta = BundleMeta(  # an untrained head: for timing only
        classes=tuple(schema.classes),
        schema=schema.to_dict(),
        encoder=EncoderRef.of(encoder, reference=encoder_folder, path=str(Path(encoder_folder).resolve())),
        preprocessing=encoder.preprocessing,
    )
    save_bundle(folder / "model", head, meta)
    return folder


def onnx_export(model: str, folder: Path, quantize: str | None) -> Path:
    if (folder / "model.json").is_file():
        return folder
    from speech_emotion.export.onnx import export_onnx

    export_onnx(model, folder, quantize=quantize)
    return folder


def prepare(model: str | None, encoder_folder: str, work: Path, paths: list[str]) -> dict[str, str]:
    """The model folder of each path: the given run (or an untrained one) and its ONNX exports."""
    model = model or str(untrained_model(work / "untrained-run", encoder_folder))
    models = {"torch": model, "ser-predict": model, "pipeline": model}
    if "onnx-fp32" in paths:
        models["onnx-fp32"] = str(onnx_export(model, work / "onnx-fp32", None))
    if "onnx-int8" in paths:
        models["onnx-int8"] = str(onnx_export(model, work / "onnx-int8", "int8"))
    return models


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

LABELS = {
    "pipeline": "(a) transformers pipeline (30 s padding)",
    "torch": "(b) ours, PyTorch",
    "onnx-fp32": "(c) ours, ONNX Runtime fp32",
    "onnx-int8": "(c) ours, ONNX Runtime int8",
    "ser-predict": "(d) `ser predict --json` (default backend)",
}


def summarise(results: dict[str, dict], n_clips: int, audio_s: float) -> dict[str, dict]:
    base = results.get("pipeline")
    base_rate = n_clips / statistics.median(base["times_s"]) if base else None
    rows = {}
    for kind, info in results.items():
        median = statistics.median(info["times_s"])
        rate = n_clips / median
        rows[kind] = {
            "clips_per_s": round(rate, 2),
            "clips_per_s_all": [round(n_clips / t, 2) for t in info["times_s"]],
            "real_time_factor": round(median / audio_s, 4),
            "peak_rss_mb": round(info["peak_rss_mb"]),
            "speedup_vs_pipeline": round(rate / base_rate, 1) if base_rate else None,
            "load_s": round(info["load_s"], 1),
            **{k: info[k] for k in ("backend", "threads") if k in info},
        }
    return rows


def print_table(report: dict) -> None:
    print(
        f"{report['n_clips']} clips, {report['audio_s']:.1f} s of audio (mean "
        f"{report['audio_s'] / report['n_clips']:.2f} s), "
        f"{report['repeats']} repeats, {report['cpus']} CPUs, OMP_WAIT_POLICY={report['omp_wait_policy']}, load "
        f"average {report['load_before'][0]:.2f} before / "
        f"{report['load_after'][0]:.2f} after"
    )
    print(f"model: {report['model']}; device {report['device']}, precision {report['precision']}")
    print(f"\n{'path':<46}{'clips/s':>9}{'RTF':>9}{'peak RSS MB':>13}{'× (a)':>8}   all repeats (clips/s)")
    for kind, row in report["paths"].items():
        speedup = f"{row['speedup_vs_pipeline']:.1f}" if row["speedup_vs_pipeline"] is not None else "-"
        print(
            f"{LABELS[kind]:<46}{row['clips_per_s']:>9.2f}{row['real_time_factor']:>9.4f}{row['peak_rss_mb']:>13}{speedup:>8}   "  # noqa: E501
            f"{', '.join(f'{r:.2f}' for r in row['clips_per_s_all'])}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="run folder made by `ser train` on Whisper-base (default: an untrained head, timing only)"
    )
    parser.add_argument(
        "--encoder", default=str(WHISPER_BASE), help="Whisper-base folder for (a) and the default model"
    )
    parser.add_argument("--clips", type=int, default=100, help="number of real clips (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path; the median counts (default 3)")
    parser.add_argument("--pipeline-repeats", type=int, help="timed passes for (a), which is slow (default: --repeats)")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to time (default: all)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for the default model and ONNX exports, reused across runs (default: temporary)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N; a missing GPU is an error"
    )
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16 (our PyTorch paths; timing only)")
    parser.add_argument(
        "--batch-frames", type=int, help="padded frames per forward pass of our PyTorch path (default: the device's)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("prepare"):
            print(json.dumps(prepare(spec["model"], spec["encoder"], Path(spec["work"]), spec["paths"])))
            return
        worker(spec["kind"], spec["model"], [Path(c) for c in spec["clips"]], spec["encoder"], spec["setup"])
        return

    from speech_emotion.features.devices import check_precision, resolve_device

    try:  # a device that is not here stops the benchmark: never a quiet run on the CPU
        device = str(resolve_device(args.device))
        precision = check_precision(args.precision)
    except ValueError as error:
        raise SystemExit(f"bench/speed.py: {error}") from None
    setup = {"device": device, "precision": precision, "batch_frames": args.batch_frames}
    clips = pick_clips(args.clips)
    import soundfile as sf

    audio_s = sum(sf.info(str(c)).duration for c in clips)
    temporary = None
    work = args.work
    if work is None:
        temporary = tempfile.TemporaryDirectory(prefix="ser-speed-")
        work = Path(temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        # Models are built in a subprocess: this process stays small, so that the peak RSS a
        # child reports is its own.
        spec = {"prepare": True, "model": args.model, "encoder": args.encoder, "work": str(work), "paths": args.paths}
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"preparing the models failed:\n{done.stderr[-3000:]}")
        models = json.loads(done.stdout.strip().splitlines()[-1])
        model = models["torch"]

        load_before = os.getloadavg()
        # Passes are interleaved (a, b, c, d, a, b, …): the load of a shared machine drifts, and
        # every path should see the same drift.
        workers = {}
        for kind in args.paths:
            if kind != "ser-predict":
                print(f"loading {LABELS[kind]} …", file=sys.stderr, flush=True)
                workers[kind] = Worker(kind, models[kind], clips, args.encoder, setup)
        ser_pass, ser_info = ser_predict_timer(model, clips, device) if "ser-predict" in args.paths else (None, None)
        pipeline_repeats = args.pipeline_repeats or args.repeats
        for repeat in range(args.repeats):
            for kind in args.paths:
                if kind == "pipeline" and repeat >= pipeline_repeats:
                    continue
                print(f"pass {repeat + 1}/{args.repeats}: {LABELS[kind]} …", file=sys.stderr, flush=True)
                if kind == "ser-predict":
                    ser_pass()
                else:
                    workers[kind].run()
        results = {kind: workers[kind].close() if kind in workers else ser_info for kind in args.paths}
        report = {
            "n_clips": len(clips),
            "audio_s": round(audio_s, 2),
            "repeats": args.repeats,
            "model": model,
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "device": device,
            "precision": precision,
            "batch_frames": args.batch_frames,
            "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "paths": summarise(results, len(clips), audio_s),
        }
    finally:
        if temporary is not None:
            temporary.cleanup()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
