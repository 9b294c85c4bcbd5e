"""The REST service (speech_emotion.serving): good requests, every kind of bad request, concurrency.

A whisper-tiny head is trained once per module on the synthetic corpus; the API must give the
same label and probabilities as ``Predictor`` and ``ser predict``.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the REST service needs fastapi: pip install -e '.[dev]'")
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from speech_emotion.cli.app import app as cli  # noqa: E402
from speech_emotion.model.metadata import BundleMeta, EncoderRef  # noqa: E402
from speech_emotion.serving import ServeLimits, UploadError, create_app  # noqa: E402
from speech_emotion.serving.uploads import decode_upload, parse_formats, sniff_format  # noqa: E402

MAX_BYTES = 200_000
MAX_DURATION = 3.0
GOOD = "Actor_05/03-01-03-01-01-01-05.wav"  # a 'happy' (260 Hz) clip of a test speaker


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(synth_corpus, whisper_tiny, tmp_path_factory) -> Path:
    from speech_emotion.features.store import FeatureStore
    from speech_emotion.training.config import TrainConfig
    from speech_emotion.training.pipeline import train

    out = tmp_path_factory.mktemp("serving") / "run"
    train(
        synth_corpus,
        encoder=str(whisper_tiny),
        out=out,
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=TrainConfig(max_epochs=40, lr=3e-3, hidden=32, mixing="softmax", weight_decay=1e-2, stop_on_alarm=False),
        store=FeatureStore(root=tmp_path_factory.mktemp("serving-cache")),
    )
    return out


@pytest.fixture(scope="module")
def predictor(run_dir):
    from speech_emotion.inference.predictor import Predictor

    return Predictor.from_pretrained(run_dir)


@pytest.fixture(scope="module")
def client(predictor):
    app = create_app(predictor, limits=ServeLimits(max_bytes=MAX_BYTES, max_duration=MAX_DURATION))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def wav_only_client(predictor):
    with TestClient(create_app(predictor, limits=ServeLimits(formats="wav"))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def good_clip(synth_corpus) -> Path:
    return synth_corpus / GOOD


def encode(signal: np.ndarray, *, format: str = "WAV", subtype: str | None = None, sampling_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, sampling_rate, format=format, subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float, *, freq: float = 260.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noisy_tone(seconds: float) -> np.ndarray:
    """A tone with noise: compresses into several Ogg pages, unlike a pure tone."""
    return (tone(seconds) + 0.05 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)


def wav(signal: np.ndarray) -> dict:
    return {"content": encode(signal), "headers": {"content-type": "audio/wav"}}


def raw(data: bytes, content_type: str = "audio/wav") -> dict:
    return {"content": data, "headers": {"content-type": content_type}}


def chunks(data: bytes, size: int = 16384):
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- good requests -------------------------------------------------------------------------------


def test_predict_matches_predictor(client, predictor, good_clip):
    data = good_clip.read_bytes()
    expected = predictor(good_clip)
    for response in (
        client.post("/predict", files={"file": (good_clip.name, data, "audio/wav")}),
        client.post("/predict", content=data, headers={"content-type": "audio/wav"}),
        client.post("/predict", content=data, headers={"content-type": "application/octet-stream"}),
        client.post("/predict", content=data),  # no content type at all: the bytes decide
    ):
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "probabilities", "duration", "model"}
        assert body["label"] == expected["label"] == "happy"
        assert list(body["probabilities"]) == predictor.classes  # class order kept
        np.testing.assert_allclose(
            list(body["probabilities"].values()), list(expected["probabilities"].values()), atol=1e-6
        )
        assert body["duration"] == pytest.approx(1.0)
        assert body["model"] == "run"


def test_predict_matches_ser_predict_cli(client, run_dir, good_clip):
    result = CliRunner().invoke(cli, ["predict", str(run_dir), str(good_clip), "--json"])
    assert result.exit_code == 0, result.output
    cli_row = json.loads(result.stdout.strip().splitlines()[-1])
    body = client.post("/predict", files={"file": (good_clip.name, good_clip.read_bytes(), "audio/wav")}).json()
    assert body["label"] == cli_row["label"]
    assert body["probabilities"].keys() == cli_row["probabilities"].keys()
    for name, p in cli_row["probabilities"].items():
        assert body["probabilities"][name] == pytest.approx(p, abs=1e-5)


@pytest.mark.parametrize(
    "format, subtype, sampling_rate",
    [
        ("FLAC", None, 16000),
        ("OGG", "VORBIS", 16000),
        ("OGG", "OPUS", 48000),
        ("MP3", "MPEG_LAYER_III", 44100),
        ("WAV", "FLOAT", 22050),
    ],
    ids=["flac", "ogg-vorbis", "ogg-opus", "mp3", "wav-float-22k"],
)
def test_predict_accepts_each_format(client, predictor, good_clip, format, subtype, sampling_rate):
    import soxr

    signal, _ = sf.read(good_clip, dtype="float32")
    data = encode(
        soxr.resample(signal, 16000, sampling_rate), format=format, subtype=subtype, sampling_rate=sampling_rate
    )
    response = client.post("/predict", files={"file": (f"clip.{format.lower()}", data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "happy"  # lossy or resampled, still the 260 Hz class
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["duration"] == pytest.approx(1.0, abs=0.06)  # MP3/Opus encoders pad a little


def test_health_model_and_page(client, predictor):
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model": "run",
        "in_flight": 0,
        "waiting": 0,
        "limits": {
            "max_bytes": MAX_BYTES,
            "max_duration": MAX_DURATION,
            "min_duration": 0.25,
            "formats": ["wav", "flac", "ogg", "mp3"],
            "max_concurrent": 1,
            "max_queue": 64,
        },
    }
    model = client.get("/model").json()
    meta = predictor.meta.to_dict()
    assert model["classes"] == ["neutral", "happy", "sad"] == predictor.classes
    # The encoder was a local folder: GET /model names it, never its path on the server.
    assert model["encoder"]["reference"] == Path(meta["encoder"]["reference"]).name == "whisper-tiny.en-encoder"
    assert model["encoder"]["fingerprint"] == meta["encoder"]["fingerprint"]
    assert model["metrics"] == meta["metrics"] and "test" in model["metrics"]
    assert model["protocol"] == "speaker-disjoint"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "MediaRecorder" in script.text and "predict" in script.text
    assert client.get("/static/style.css").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


# -- bad requests: each gets a 4xx with a JSON error, and the server keeps serving ----------------


def _truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


BAD_REQUESTS = [
    # (id, client, request builder(good_bytes) → post kwargs, status, error code, text in detail)
    ("empty-raw-body", "main", lambda g: raw(b""), 400, "empty", "empty upload"),
    ("no-body-no-type", "main", lambda g: {}, 400, "empty", "empty upload"),
    (
        "empty-file-field",
        "main",
        lambda g: {"files": {"file": ("clip.wav", b"", "audio/wav")}},
        400,
        "empty",
        "clip.wav: empty upload",
    ),
    (
        "missing-file-field",
        "main",
        lambda g: {"files": {"audio": ("clip.wav", g, "audio/wav")}},
        400,
        "missing_file",
        "no file field 'file' (fields sent: 'audio')",
    ),
    (
        "file-field-is-text",
        "main",
        lambda g: {"data": {"file": "clip.wav"}, "files": {"other": ("x", b"1")}},
        400,
        "missing_file",
        "must be a file upload",
    ),
    (
        "malformed-multipart",
        "main",
        lambda g: raw(b"--nope\r\ngarbage", "multipart/form-data; boundary=abc"),
        400,
        "bad_request",
        "multipart/form-data",
    ),
    ("multipart-without-boundary", "main", lambda g: raw(g, "multipart/form-data"), 400, "bad_request", "boundary"),
    (
        "json-body",
        "main",
        lambda g: {"json": {"audio": "base64..."}},
        415,
        "unsupported_media_type",
        "'application/json' is not audio",
    ),
    ("text-body", "main", lambda g: raw(g, "text/plain"), 415, "unsupported_media_type", "'text/plain' is not audio"),
    ("urlencoded-form", "main", lambda g: {"data": {"clip": "x"}}, 415, "unsupported_media_type", "url-encoded form"),
    (
        "file-part-is-image",
        "main",
        lambda g: {"files": {"file": ("cat.png", g, "image/png")}},
        415,
        "unsupported_media_type",
        "field 'file' (cat.png): content type 'image/png'",
    ),
    (
        "not-audio-bytes",
        "main",
        lambda g: raw(b"hello, this is text not audio" * 10),
        415,
        "unsupported_format",
        "not a recognised audio file",
    ),
    (
        "webm-recording",
        "main",
        lambda g: raw(b"\x1aE\xdf\xa3" + bytes(400), "audio/webm"),
        415,
        "unsupported_format",
        "webm audio cannot be decoded",
    ),
    (
        "mp4-audio",
        "main",
        lambda g: raw(b"\x00\x00\x00\x20ftypM4A " + bytes(400), "audio/mp4"),
        415,
        "unsupported_format",
        "mp4",
    ),
    (
        "format-not-accepted",
        "wav_only",
        lambda g: raw(encode(tone(1.0), format="FLAC"), "audio/flac"),
        415,
        "unsupported_format",
        "flac is not accepted by this server; send one of: wav",
    ),
    (
        "too-large-declared",
        "main",
        lambda g: raw(encode(tone(10.0))),
        413,
        "too_large",
        "request body of 320044 bytes is more than this server's limit",
    ),
    (
        "too-large-streamed",
        "main",
        lambda g: raw(chunks(encode(tone(10.0)))),
        413,
        "too_large",
        "passed this server's limit",
    ),
    (
        "too-large-file-field",
        "main",
        lambda g: {"files": {"file": ("long.wav", encode(tone(10.0)), "audio/wav")}},
        413,
        "too_large",
        "limit",
    ),
    (
        "too-large-under-slack",
        "main",
        lambda g: raw(encode(tone(6.3))),
        413,
        "too_large",
        "more than this server's limit of 200000 bytes",
    ),
    (
        "too-long",
        "main",
        lambda g: raw(encode(tone(5.0), format="FLAC")),
        413,
        "too_long",
        "5.0 s long, more than this server's limit of 3 s",
    ),
    ("too-short", "main", lambda g: wav(tone(0.1)), 422, "unreadable_audio", "too short: 0.100 s"),
    ("silent", "main", lambda g: wav(np.zeros(16000, dtype=np.float32)), 422, "unreadable_audio", "silent"),
    (
        "nan-samples",
        "main",
        lambda g: raw(
            encode(np.where(np.arange(16000) % 100 == 0, np.nan, tone(1.0)).astype(np.float32), subtype="FLOAT")
        ),
        422,
        "unreadable_audio",
        "NaN",
    ),
    (
        "inf-samples",
        "main",
        lambda g: raw(encode(np.where(np.arange(16000) == 5, np.inf, tone(1.0)).astype(np.float32), subtype="FLOAT")),
        422,
        "unreadable_audio",
        "infinite",
    ),
    ("header-only-wav", "main", lambda g: raw(encode(np.zeros(0, dtype=np.float32))), 422, "unreadable_audio", "empty"),
    ("truncated-wav", "main", lambda g: raw(_truncated(g)), 422, "unreadable_audio", "truncated"),
    ("corrupt-wav", "main", lambda g: raw(g[:12] + bytes(range(256)) * 4), 422, "unreadable_audio", "body:"),
    (
        "truncated-flac",
        "main",
        lambda g: raw(_truncated(encode(tone(1.0), format="FLAC"), 0.05), "audio/flac"),
        422,
        "unreadable_audio",
        "body: cannot decode audio",
    ),
    (
        "truncated-ogg",
        "main",
        lambda g: raw(_truncated(encode(noisy_tone(2.5), format="OGG", subtype="VORBIS"), 0.5), "audio/ogg"),
        422,
        "unreadable_audio",
        "end-of-stream",
    ),
    (
        "corrupt-mp3",
        "main",
        lambda g: raw(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2000), "audio/mpeg"),
        422,
        "unreadable_audio",
        "body: cannot read the mp3 header",
    ),
    (
        "timeline-not-boolean",
        "main",
        lambda g: {**raw(g), "params": {"timeline": "maybe"}},
        422,
        "invalid_request",
        "query timeline",
    ),
    (
        "negative-window",
        "main",
        lambda g: {**raw(g), "params": {"timeline": "1", "window": "-2"}},
        422,
        "invalid_request",
        "query window",
    ),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_4xx_json(case, client, wav_only_client, good_clip):
    name, which, build, status, code, fragment = case
    response = (client if which == "main" else wav_only_client).post("/predict", **build(good_clip.read_bytes()))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert fragment in body["detail"]
    assert "/tmp" not in body["detail"] and "ser-upload-" not in body["detail"]  # no server paths leak


def test_wrong_method_and_route(client):
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.json() == {
        "error": "method_not_allowed",
        "detail": "GET is not allowed on /predict; see /docs for the methods each route takes",
    }
    response = client.post("/predicts")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_server_keeps_serving_after_every_bad_request(client, wav_only_client, predictor, good_clip):
    good = good_clip.read_bytes()
    statuses = set()
    for name, which, build, status, code, fragment in BAD_REQUESTS:
        statuses.add((client if which == "main" else wav_only_client).post("/predict", **build(good)).status_code)
    assert statuses == {400, 413, 415, 422}
    assert len(BAD_REQUESTS) >= 20
    health = client.get("/health").json()
    assert (health["status"], health["in_flight"], health["waiting"]) == ("ok", 0, 0)
    body = client.post("/predict", files={"file": ("clip.wav", good, "audio/wav")}).json()
    assert body["label"] == predictor(good_clip)["label"]


# -- timeline ------------------------------------------------------------------------------------


def test_timeline_segments(client, predictor, synth_corpus, tmp_path):
    sad = sf.read(synth_corpus / "Actor_06/03-01-04-01-01-01-06.wav", dtype="float32")[0]
    happy = sf.read(synth_corpus / "Actor_06/03-01-03-01-01-01-06.wav", dtype="float32")[0]
    data = encode(np.concatenate([happy, happy, sad]))  # 3 s (the limit): two seconds happy, one sad
    response = client.post("/predict", params={"timeline": "1", "window": "1", "vad": "false"}, **raw(data))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(3.0)
    segments = body["segments"]
    assert [(s["start"], s["end"]) for s in segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert segments[-1]["label"] == "sad"
    # The service returns exactly what the library's timeline gives for the same audio.
    from speech_emotion.inference.timeline import predict_timeline

    path = tmp_path / "three.wav"
    path.write_bytes(data)
    expected = list(predict_timeline(predictor, path, window=1.0, vad=False))
    assert [s["label"] for s in segments] == [s["label"] for s in expected]
    for got, want in zip(segments, expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    for segment in segments:
        assert list(segment["probabilities"]) == predictor.classes
        assert sum(segment["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    plain = client.post("/predict", **raw(data)).json()
    assert "segments" not in plain and plain["probabilities"] == body["probabilities"]


def test_timeline_unavailable_is_501(client, good_clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "speech_emotion.inference.timeline", None)  # import now fails
    response = client.post("/predict", params={"timeline": "1"}, **raw(good_clip.read_bytes()))
    assert response.status_code == 501
    assert response.json()["error"] == "not_implemented"
    assert client.get("/health").json()["status"] == "ok"


# -- concurrency: inference off the event loop, bounded, failures contained ------------------------


class SlowPredictor:
    """Blocks in predict() until released; counts how many calls overlap."""

    classes = ["neutral", "happy"]

    def __init__(self):
        self.meta = BundleMeta(
            classes=tuple(self.classes), schema={"classes": self.classes}, encoder=EncoderRef(reference="fake")
        )
        self.path = Path("slow")
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.fail_next = False

    def predict(self, signals, *, min_confidence=None):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.release.wait(timeout=10)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("boom")
            return [{"label": "happy", "probabilities": {"neutral": 0.25, "happy": 0.75}} for _ in signals]
        finally:
            with self.lock:
                self.running -= 1


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _post_in_threads(client, n: int, data: bytes) -> tuple[list, list[threading.Thread]]:
    results: list = []

    def post():
        results.append(client.post("/predict", **raw(data)))

    threads = [threading.Thread(target=post) for _ in range(n)]
    for thread in threads:
        thread.start()
    return results, threads


def test_inference_is_bounded_and_off_the_event_loop():
    slow = SlowPredictor()
    data = encode(tone(1.0))
    with TestClient(create_app(slow, limits=ServeLimits(max_concurrent=2, max_queue=10))) as client:
        results, threads = _post_in_threads(client, 6, data)
        _wait_for(lambda: client.get("/health").json()["waiting"] == 4)
        health = client.get("/health").json()  # answered while inference blocks: the loop is free
        assert (health["in_flight"], health["waiting"]) == (2, 4)
        assert slow.running == 2
        slow.release.set()
        for thread in threads:
            thread.join(timeout=20)
    assert [r.status_code for r in results] == [200] * 6
    assert slow.max_running == 2
    assert results[0].json() == {
        "label": "happy",
        "probabilities": {"neutral": 0.25, "happy": 0.75},
        "duration": 1.0,
        "model": "slow",
    }


def test_full_queue_gets_503_then_recovers():
    slow = SlowPredictor()
    data = encode(tone(1.0))
    with TestClient(create_app(slow, limits=ServeLimits(max_concurrent=1, max_queue=1))) as client:
        results, threads = _post_in_threads(client, 2, data)
        _wait_for(lambda: client.get("/health").json()["waiting"] == 1)
        response = client.post("/predict", **raw(data))
        assert response.status_code == 503
        assert response.json()["error"] == "busy" and "max_queue=1" in response.json()["detail"]
        slow.release.set()
        for thread in threads:
            thread.join(timeout=20)
        assert [r.status_code for r in results] == [200, 200]
        assert client.post("/predict", **raw(data)).status_code == 200


def test_failure_in_model_is_500_json_and_server_keeps_serving():
    slow = SlowPredictor()
    slow.release.set()
    slow.fail_next = True
    data = encode(tone(1.0))
    with TestClient(create_app(slow), raise_server_exceptions=False) as client:
        response = client.post("/predict", **raw(data))
        assert response.status_code == 500
        assert response.json() == {
            "error": "internal",
            "detail": "RuntimeError: the server failed on this request; it keeps serving others",
        }
        assert client.post("/predict", **raw(data)).status_code == 200


# -- library pieces and the CLI ------------------------------------------------------------------


def test_limits_and_formats_are_checked():
    assert parse_formats("WAV, .flac,wav") == ("wav", "flac")
    with pytest.raises(ValueError, match="'webm' is not a format the server can decode"):
        ServeLimits(formats="wav,webm")
    with pytest.raises(ValueError, match="at least one"):
        ServeLimits(formats="")
    with pytest.raises(ValueError, match="max_concurrent must be at least 1, got 0"):
        ServeLimits(max_concurrent=0)
    with pytest.raises(ValueError, match="min_duration <= max_duration"):
        ServeLimits(max_duration=0.1)


def test_sniff_and_decode_upload():
    assert sniff_format(encode(tone(0.5))) == "wav"
    assert sniff_format(encode(tone(0.5), format="FLAC")) == "flac"
    assert sniff_format(encode(tone(0.5), format="OGG", subtype="VORBIS")) == "ogg"
    assert sniff_format(encode(tone(0.5), format="MP3", subtype="MPEG_LAYER_III", sampling_rate=44100)) == "mp3"
    assert sniff_format(b"\x1aE\xdf\xa3") == "webm" and sniff_format(b"") is None
    signal = decode_upload(
        encode(np.stack([tone(1.0), tone(1.0)], axis=1), sampling_rate=16000),
        limits=ServeLimits(),
        filename="stereo.wav",
    )
    assert signal.shape == (16000,) and signal.dtype == np.float32
    with pytest.raises(UploadError, match=r"clip\.wav: too short") as caught:
        decode_upload(encode(tone(0.1)), limits=ServeLimits(), filename="clip.wav")
    assert (caught.value.status_code, caught.value.code) == (422, "unreadable_audio")


def test_cli_serve_refuses_bad_options(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(run_dir), "--formats", "wav,webm"])
    assert result.exit_code == 1
    assert "'webm' is not a format the server can decode" in result.stderr
    result = runner.invoke(cli, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["serve", str(tmp_path)])  # exists, but no model in it
    assert result.exit_code == 1
    assert "no model.json" in result.stderr


def test_warm_up_fails_early_for_a_model_that_cannot_label_single_clips():
    from speech_emotion.serving.app import warm_up

    class SpeakerNormalised(SlowPredictor):
        def predict(self, signals, *, min_confidence=None):
            raise ValueError(
                "this model standardises features per speaker (--speaker-norm) and cannot label single clips"
            )

    with pytest.raises(ValueError, match="--speaker-norm"):
        warm_up(SpeakerNormalised())
    slow = SlowPredictor()
    slow.release.set()
    warm_up(slow)
    assert slow.max_running == 1


# -- hostile uploads: decode budget, timeline work, paths ---------------------------------------------


class CountingPredictor(SlowPredictor):
    """A SlowPredictor that answers at once; ``calls`` counts predict() calls."""

    def __init__(self):
        super().__init__()
        self.release.set()
        self.calls = 0

    def predict(self, signals, *, min_confidence=None):
        self.calls += 1
        return super().predict(signals, min_confidence=min_confidence)


def flac_bomb(sampling_rate: int = 655_350, channels: int = 8, seconds: float = 3.0) -> bytes:
    """Digital silence as FLAC: a few KB that decode to ``sampling_rate × channels × seconds`` samples."""
    return encode(
        np.zeros((int(sampling_rate * seconds), channels), dtype=np.int16), format="FLAC", sampling_rate=sampling_rate
    )


@pytest.mark.parametrize(
    "build, code, fragment",
    [
        (flac_bomb, "sampling_rate_too_high", "sampling rate 655350 Hz, more than this server's limit of 192000 Hz"),
        (
            lambda: encode(np.zeros((8000, 16), dtype=np.int16)),
            "too_many_channels",
            "16 channels, more than this server's limit of 8",
        ),
        (
            lambda: flac_bomb(96_000, 8, 16.0),
            "too_many_samples",
            "1536000 frames × 8 channels = 12288000 samples to decode, more than this server's limit of 11520000",
        ),
    ],
    ids=["655khz-8ch-3s", "16-channels", "96khz-8ch-16s"],
)
def test_decompression_bombs_are_refused_from_the_header_before_decoding(build, code, fragment, monkeypatch):
    from speech_emotion.serving import uploads

    data = build()
    decoded = []
    monkeypatch.setattr(uploads, "load_audio", lambda *args, **kwargs: decoded.append(args))
    counting = CountingPredictor()
    assert len(data) < 700_000
    with TestClient(create_app(counting)) as client:
        for request in (raw(data, "audio/flac"), {"files": {"file": ("bomb.flac", data, "audio/flac")}}):
            response = client.post("/predict", **request)
            assert response.status_code == 413, response.text
            assert response.json()["error"] == code and fragment in response.json()["detail"]
        assert client.get("/health").json()["status"] == "ok"
    assert decoded == [] and counting.calls == 0


def test_decode_budget_is_an_option():
    counting = CountingPredictor()
    stereo = encode(np.stack([tone(2.0), tone(2.0)], axis=1))  # 2 s, 2 channels: 64000 samples
    with TestClient(create_app(counting, limits=ServeLimits(max_samples=63_999))) as client:
        response = client.post("/predict", **raw(stereo))
        assert response.status_code == 413 and response.json()["error"] == "too_many_samples"
        assert "limit of 63999 (max_samples)" in response.json()["detail"]
    with TestClient(create_app(counting, limits=ServeLimits(max_samples=64_000))) as client:
        assert client.post("/predict", **raw(stereo)).status_code == 200
    with pytest.raises(ValueError, match="max_samples: expected a positive integer, got 0"):
        ServeLimits(max_samples=0)


def test_timeline_work_is_bounded_before_any_inference():
    counting = CountingPredictor()
    clip = encode(tone(3.0))
    with TestClient(create_app(counting, limits=ServeLimits(max_windows=5))) as client:
        # The attack: 4 s windows every millisecond.
        tiny_hop = client.post(
            "/predict", params={"timeline": "1", "vad": "false", "window": "4", "hop": "0.001"}, **raw(clip)
        )
        assert tiny_hop.status_code == 422
        assert tiny_hop.json() == {
            "error": "invalid_request",
            "detail": "timeline: hop: expected at least 0.1 × window = 0.4 s (windows overlapping by at most 90%), "
            "got 0.001 s",
        }
        many = client.post(
            "/predict", params={"timeline": "1", "vad": "false", "window": "1", "hop": "0.5"}, **raw(clip)
        )
        assert many.status_code == 422 and many.json()["error"] == "too_many_windows"
        assert many.json()["detail"].startswith(
            "body: 3.0 s cut every 0.5 s makes up to 6 windows, more than max_windows=5"
        )
        assert counting.calls == 0  # refused before the clip was decoded or predicted
        fine = client.post("/predict", params={"timeline": "1", "vad": "false", "window": "1"}, **raw(clip))
        assert fine.status_code == 200 and len(fine.json()["segments"]) == 3


def test_model_info_and_errors_reveal_no_server_path(tmp_path):
    class LocalEncoder(CountingPredictor):
        def __init__(self, reference, path=None):
            super().__init__()
            self.meta = BundleMeta(
                classes=tuple(self.classes),
                schema={"classes": self.classes},
                encoder=EncoderRef(reference=reference, path=path),
            )
            self.path = tmp_path / "secret-runs" / "model"

        def predict(self, signals, *, min_confidence=None):
            raise ValueError(f"{self.path}: this model cannot label single clips")

    folder = str(tmp_path / "home" / "ana" / "whisper-base")
    for predictor, shown in (
        (LocalEncoder(folder, folder), "whisper-base"),
        (LocalEncoder("../models/wav2vec2-base"), "wav2vec2-base"),
        (LocalEncoder("openai/whisper-base"), "openai/whisper-base"),
    ):
        with TestClient(create_app(predictor)) as client:
            info = client.get("/model").json()
            assert info["encoder"]["reference"] == shown
            failed = client.post("/predict", **raw(encode(tone(1.0))))
            assert failed.status_code == 422
            assert str(tmp_path) not in json.dumps(info) + failed.text


def test_cli_serve_refuses_bad_limits_and_origins_before_serving(run_dir):
    runner = CliRunner()
    origin = runner.invoke(cli, ["serve", str(run_dir), "--cors-origin", "localhost:3000"])
    assert origin.exit_code == 1 and "cors_origins: 'localhost:3000' is not an origin" in origin.stderr
    timeout = runner.invoke(cli, ["serve", str(run_dir), "--body-timeout", "0"])
    assert timeout.exit_code == 1 and "body_timeout: expected a positive number of seconds, got 0" in timeout.stderr
    assert runner.invoke(cli, ["serve", str(run_dir), "--max-windows", "0"]).exit_code == 2
