"""`ser predict`: many files as JSON lines / CSV / a table, and `--timeline` over long recordings."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speech_emotion.cli.app import app
from speech_emotion.data.audio import load_audio
from speech_emotion.features.store import FeatureStore
from speech_emotion.inference.predictor import Predictor
from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import train

runner = CliRunner()
CLASSES = ["neutral", "happy", "sad"]  # the synthetic corpus's pitch classes


@pytest.fixture(scope="module")
def run(synth_corpus, whisper_tiny, tmp_path_factory):
    """A whisper-tiny.en model trained in seconds on the synthetic corpus."""
    out = tmp_path_factory.mktemp("predict-run") / "run"
    config = TrainConfig(max_epochs=40, lr=3e-3, hidden=32, stop_on_alarm=False)
    train(
        synth_corpus,
        encoder=str(whisper_tiny),
        out=out,
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=config,
        store=FeatureStore(tmp_path_factory.mktemp("predict-cache")),
    )
    return out


CLIP_SPANS: list[tuple[float, float]] = []
"""Where each clip of the recording lies, in seconds (set by the fixture)."""


@pytest.fixture(scope="module")
def recording(ravdess, tmp_path_factory):
    """Four real clips (neutral, angry, strong angry, neutral) joined by 2 s of low noise (about 22 s)."""
    rng = np.random.default_rng(0)
    clips = sorted((ravdess / "Actor_17").glob("03-01-0[15]-*-01-01-17.flac"))
    parts, position = [], 0
    CLIP_SPANS.clear()
    for path in clips + clips[:1]:
        signal, _ = sf.read(path, dtype="float32", always_2d=True)
        CLIP_SPANS.append((position / 16000, (position + len(signal)) / 16000))
        parts += [signal.mean(axis=1), (0.001 * rng.standard_normal(32000)).astype(np.float32)]
        position += len(signal) + 32000
    path = tmp_path_factory.mktemp("rec") / "call.flac"
    sf.write(str(path), np.concatenate(parts), 16000)
    return path


def predicted_directly(run, recording, spans: list[tuple[float, float]], context: float = 0.5) -> list[dict]:
    """What the model says of each span heard with ``context`` seconds around it, as the timeline sends it."""
    signal, rate = load_audio(recording)
    pieces = [signal[int(round(max(0.0, a - context) * rate)) : int(round((b + context) * rate))] for a, b in spans]
    return [p["probabilities"] for p in Predictor.from_pretrained(run).predict(pieces)]


@pytest.fixture
def bad(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"not audio")
    return path


def json_lines(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def csv_rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_timeline_json_lines(run, recording):
    lines = json_lines(runner.invoke(app, ["predict", str(run), str(recording), "--timeline", "--json"]))
    assert len(lines) == 4  # one segment per clip: each clip's speech is shorter than a window
    for line, (clip_start, clip_end) in zip(lines, CLIP_SPANS):
        assert set(line) == {"path", "start", "end", "label", "probabilities"} and line["path"] == str(recording)
        # The speech found lies inside its clip (not in the noise between clips): a sentence of over a second.
        assert clip_start - 0.15 <= line["start"] < line["end"] <= clip_end + 0.15, (line, clip_start, clip_end)
        assert line["end"] - line["start"] > 1.0
        assert line["label"] == max(line["probabilities"], key=line["probabilities"].get)
    expected = predicted_directly(run, recording, [(line["start"], line["end"]) for line in lines])
    for line, probabilities in zip(lines, expected):
        assert line["probabilities"] == pytest.approx(probabilities, abs=1e-4)
    # --format json is the same thing.
    same = json_lines(runner.invoke(app, ["predict", str(run), str(recording), "--timeline", "--format", "json"]))
    assert same == lines


def test_timeline_csv_window_and_hop(run, recording):
    rows = csv_rows(
        runner.invoke(
            app, ["predict", str(run), str(recording), "--timeline", "--format", "csv", "--window", "1", "--hop", "0.5"]
        )
    )
    assert list(rows[0]) == ["path", "start", "end", "label", "p_neutral", "p_happy", "p_sad", "error"]
    spans = [(float(row["start"]), float(row["end"])) for row in rows]
    assert len(rows) > 4  # 1 s windows every 0.5 s: several per clip, overlapping
    for (a, b), (c, d) in zip(spans, spans[1:]):
        if c < b:  # the next window of the same speech region: half a window later
            assert c - a == pytest.approx(0.5, abs=1e-3)
    for row, (start, end) in zip(rows, spans):
        assert row["error"] == "" and 0.5 <= end - start <= 1.5
        assert any(a - 0.15 <= start and end <= b + 0.15 for a, b in CLIP_SPANS), (start, end)
    expected = predicted_directly(run, recording, spans)
    for row, probabilities in zip(rows, expected):
        assert [float(row[f"p_{c}"]) for c in CLASSES] == pytest.approx([probabilities[c] for c in CLASSES], abs=1e-4)


def test_timeline_error_row_keeps_input_order(run, recording, bad):
    lines = json_lines(runner.invoke(app, ["predict", str(run), str(bad), str(recording), "--timeline", "--json"]))
    assert lines[0] == {"path": str(bad), "error": lines[0]["error"]} and "cannot" in lines[0]["error"]
    assert [line["path"] for line in lines[1:]] == [str(recording)] * 4
    rows = csv_rows(
        runner.invoke(app, ["predict", str(run), str(recording), str(bad), "--timeline", "--format", "csv"])
    )
    assert rows[-1]["path"] == str(bad) and rows[-1]["error"] and rows[-1]["label"] == "" and rows[-1]["start"] == ""


def test_timeline_table_and_no_vad(run, recording):
    result = runner.invoke(app, ["predict", str(run), str(recording), "--timeline", "--no-vad", "--window", "5"])
    assert result.exit_code == 0, result.output
    assert "start" in result.stdout and "0.000" in result.stdout and "5.000" in result.stdout  # the table
    # Without the VAD, 5 s windows over the whole recording (its last 2.6 s, more than half a window, get their own).
    lines = json_lines(
        runner.invoke(app, ["predict", str(run), str(recording), "--timeline", "--no-vad", "--window", "5", "--json"])
    )
    duration = sf.info(str(recording)).duration
    assert [(line["start"], line["end"]) for line in lines] == [
        (0.0, 5.0),
        (5.0, 10.0),
        (10.0, 15.0),
        (15.0, 20.0),
        (20.0, pytest.approx(duration, abs=1e-3)),
    ]
    expected = predicted_directly(run, recording, [(line["start"], line["end"]) for line in lines])
    assert [line["probabilities"] for line in lines] == [pytest.approx(p, abs=1e-4) for p in expected]


def test_many_files_csv_with_error_row(run, synth_corpus, bad):
    folder = synth_corpus / "Actor_06"
    rows = csv_rows(runner.invoke(app, ["predict", str(run), str(bad), str(folder), "--format", "csv"]))
    assert list(rows[0]) == ["path", "label", "p_neutral", "p_happy", "p_sad", "error"]
    assert [row["path"] for row in rows] == [str(bad)] + [str(p) for p in sorted(folder.glob("*.wav"))]
    assert rows[0]["error"] and rows[0]["label"] == ""
    assert all(row["error"] == "" and row["label"] in CLASSES for row in rows[1:])
    truth = {"01": "neutral", "03": "happy", "04": "sad"}
    assert sum(row["label"] == truth[row["path"].split("-")[-5]] for row in rows[1:]) >= 10  # of 12 unseen clips


def test_many_files_json_lines_and_table(run, synth_corpus, bad):
    files = sorted((synth_corpus / "Actor_05").glob("*.wav"))[:3]
    lines = json_lines(runner.invoke(app, ["predict", str(run), str(files[0]), str(bad), str(files[1]), "--json"]))
    assert [line["path"] for line in lines] == [str(files[0]), str(bad), str(files[1])]
    assert set(lines[0]) == {"path", "label", "probabilities"} and set(lines[1]) == {"path", "error"}
    table = runner.invoke(app, ["predict", str(run), str(files[2]), str(bad)])
    assert table.exit_code == 0 and "error" in table.stdout and "1 file(s) could not be read" in table.stderr


def test_option_conflicts_are_errors(run, recording):
    both = runner.invoke(app, ["predict", str(run), str(recording), "--json", "--format", "csv"])
    assert both.exit_code == 1 and "--json means --format json" in both.stderr
    window = runner.invoke(app, ["predict", str(run), str(recording), "--window", "2"])
    assert window.exit_code == 1 and "add --timeline" in window.stderr
    short = runner.invoke(app, ["predict", str(run), str(recording), "--timeline", "--window", "0.1"])
    assert short.exit_code == 2  # rejected by the option's range
    onnx = runner.invoke(app, ["predict", str(run), str(recording), "--backend", "onnx"])
    assert onnx.exit_code == 1 and "ser export --format onnx" in onnx.stderr


def test_timeline_work_limits_are_error_lines_before_any_work(run, recording):
    small_hop = runner.invoke(app, ["predict", str(run), str(recording), "--timeline", "--hop", "0.1", "--json"])
    assert small_hop.exit_code == 1 and small_hop.stdout == ""
    assert "error: --hop: expected at least 0.1 × window = 0.4 s" in small_hop.stderr
    many = runner.invoke(
        app,
        ["predict", str(run), str(recording), "--timeline", "--no-vad", "--window", "1", "--hop", "0.5"]
        + ["--max-windows", "10", "--json"],
    )
    assert many.exit_code == 1 and many.stdout == ""
    message = " ".join(many.stderr.split())
    assert re.search(
        rf"error: {re.escape(str(recording))}: 22\.\d s cut every 0\.5 s makes up to 4\d windows, more ", message
    )
    assert "more than max_windows=10" in message and "(--hop, --max-windows)" in message
    plain = runner.invoke(app, ["predict", str(run), str(recording), "--max-windows", "10"])
    assert plain.exit_code == 1 and "add --timeline" in plain.stderr


def test_a_non_utf8_name_and_a_decompression_bomb_are_error_rows(run, synth_corpus, tmp_path):
    import os

    good = synth_corpus / "Actor_05" / "03-01-03-01-01-01-05.wav"
    odd = tmp_path / os.fsdecode(b"d\xe9j\xe0-vu.wav")  # Latin-1 name on disk
    odd.write_bytes(good.read_bytes())
    bomb = tmp_path / "bomb.flac"
    sf.write(str(bomb), np.zeros((655_350 * 3, 8), dtype=np.int16), 655_350)  # 17 KB, 63 MB decoded
    for fmt in ("json", "csv", "table"):
        result = runner.invoke(app, ["predict", str(run), str(odd), str(bomb), str(good), "--format", fmt])
        assert result.exit_code == 0, result.output  # was a UnicodeEncodeError writing the odd name
        assert "2 file(s) could not be read" in result.stderr
        if fmt == "table":
            continue  # a narrow table cuts paths short
        text = " ".join(result.stdout.split())
        assert "d\\xe9j\\xe0-vu.wav" in text.replace("\\\\", "\\") and "not valid UTF-8" in text
        assert "655350 Hz is above the limit" in text
    rows = [json.loads(line) for line in runner.invoke(app, ["predict", str(run), str(good), "--json"]).stdout.split()]
    assert rows[0]["label"] in CLASSES


def test_out_files_hold_the_rows_of_stdout(run, synth_corpus, bad, tmp_path):
    files = [str(p) for p in sorted((synth_corpus / "Actor_06").glob("*.wav"))[:4]]
    files.insert(2, str(bad))
    printed = runner.invoke(app, ["predict", str(run), *files, "--format", "csv"])
    assert printed.exit_code == 0, printed.output
    written = runner.invoke(app, ["predict", str(run), *files, "--out", str(tmp_path / "rows.csv")])
    assert written.exit_code == 0 and "5 row(s) written" in written.stderr and written.stdout == ""
    assert (tmp_path / "rows.csv").read_text() == printed.stdout
    lines = json_lines(runner.invoke(app, ["predict", str(run), *files, "--json", "--min-confidence", "0.5"]))
    runner.invoke(app, ["predict", str(run), *files, "--out", str(tmp_path / "rows.jsonl"), "--min-confidence", "0.5"])
    assert [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == lines
    pq = pytest.importorskip("pyarrow.parquet")
    runner.invoke(
        app, ["predict", str(run), *files, "--out", str(tmp_path / "rows.parquet"), "--min-confidence", "0.5"]
    )
    table = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert [row["path"] for row in table] == files and table[2]["error"] and table[2]["p_sad"] is None
    assert [row["uncertain"] for row in table] == [line.get("uncertain") for line in lines]
    assert [row["p_happy"] for row in table if row["error"] is None] == [
        line["probabilities"]["happy"] for line in lines if "error" not in line
    ]


def test_device_precision_and_engine_options(run, synth_corpus, tmp_path, monkeypatch):
    clip = str(next((synth_corpus / "Actor_06").glob("*.wav")))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cuda = runner.invoke(app, ["predict", str(run), clip, "--device", "cuda"])
    assert cuda.exit_code == 1 and "CUDA is not available here" in " ".join(cuda.stderr.split())
    fp16 = runner.invoke(app, ["predict", str(run), clip, "--precision", "fp16"])
    assert fp16.exit_code == 2 and "fp16 is refused" in " ".join(fp16.output.split())
    bf16 = runner.invoke(app, ["predict", str(run), clip, "--precision", "bf16"])
    assert bf16.exit_code == 1 and "other weights, config or preprocessing" in " ".join(bf16.stderr.split())
    local = runner.invoke(app, ["predict", str(run), clip, "--workers", "2", "--address", "auto"])
    assert local.exit_code == 1 and "--address, --workers apply to --engine ray only" in local.stderr
    suffix = runner.invoke(app, ["predict", str(run), clip, "--out", str(tmp_path / "rows.xlsx")])
    assert suffix.exit_code == 1 and "expected a file ending in .jsonl, .csv or .parquet" in suffix.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written
    predictor = Predictor.from_pretrained(run, device="auto")
    assert (predictor.device, predictor.precision) == ("cpu", "fp32")


def test_every_command_that_encodes_refuses_a_missing_gpu(run, synth_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    commands = {
        "evaluate": ["evaluate", str(run), str(synth_corpus)],
        "adapt": ["adapt", str(run), str(synth_corpus / "Actor_06"), "--out", str(tmp_path / "adapted")],
        "export hf": ["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")],
        "serve": ["serve", str(run)],
        "cv": ["cv", str(synth_corpus), "--encoder", "egemaps", "--folds", "2"],
        "train": ["train", str(synth_corpus), "--encoder", "egemaps", "--out", str(tmp_path / "train")],
        "cache fill": ["cache", "fill", str(synth_corpus), "--encoder", "egemaps"],
    }
    for name, command in commands.items():
        result = runner.invoke(app, [*command, "--device", "cuda"])
        assert result.exit_code == 1 and "CUDA is not available here" in " ".join(result.stderr.split()), name
    onnx = runner.invoke(
        app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "o"), "--device", "cuda"]
    )
    assert onnx.exit_code == 1 and "traced on the CPU" in " ".join(onnx.stderr.split())
    assert not any((tmp_path / name).exists() for name in ("adapted", "o", "train", "hf"))
