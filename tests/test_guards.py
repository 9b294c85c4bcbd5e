"""Cross-site requests: the Host check (DNS rebinding), the Origin check (a foreign page's POST), CORS off by
default (speech_emotion.serving.guards). The page at / keeps working: tests/test_browser.py drives it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from speech_emotion.model.metadata import BundleMeta, EncoderRef
from speech_emotion.serving import ServeLimits, create_app
from speech_emotion.serving.guards import allowed_host_names, host_name, origin_netloc


class Counting:
    """A predictor that counts its calls."""

    classes = ["neutral", "happy"]

    def __init__(self):
        self.meta = BundleMeta(
            classes=tuple(self.classes), schema={"classes": self.classes}, encoder=EncoderRef(reference="fake")
        )
        self.path = "counting"
        self.calls = 0

    def predict(self, signals, *, min_confidence=None):
        self.calls += 1
        return [{"label": "happy", "probabilities": {"neutral": 0.25, "happy": 0.75}} for _ in signals]


def wav() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def post_form(client: TestClient, headers: dict) -> object:
    """What a foreign page's ``<form enctype=multipart/form-data>`` or preflight-free fetch sends."""
    return client.post("/predict", files={"file": ("clip.wav", wav(), "audio/wav")}, headers=headers)


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.nip.io:8000", ""])
def test_a_host_that_is_not_this_server_is_refused(host):
    counting = Counting()
    with TestClient(create_app(counting)) as client:
        for response in (
            post_form(client, {"host": host}),
            client.get("/model", headers={"host": host}),
            client.get("/health", headers={"host": host}),
            client.get("/", headers={"host": host}),
        ):
            assert response.status_code == 400
            assert response.json()["error"] == "invalid_host"
            assert "--allow-host NAME" in response.json()["detail"]
            assert response.headers["connection"] == "close"
    assert counting.calls == 0


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "testserver"])
def test_loopback_names_are_accepted(host):
    with TestClient(create_app(Counting())) as client:
        assert post_form(client, {"host": host}).status_code == 200


def test_more_host_names_are_an_option():
    with TestClient(create_app(Counting(), allowed_hosts=["ser.example.org"])) as client:
        assert client.get("/health", headers={"host": "ser.example.org:8000"}).status_code == 200
        assert client.get("/health", headers={"host": "other.example.org"}).status_code == 400
    with TestClient(create_app(Counting(), allowed_hosts=["*"])) as client:
        assert client.get("/health", headers={"host": "anything.example"}).status_code == 200
    with TestClient(create_app(Counting(), host="0.0.0.0")) as client:  # every interface: addresses, not names
        assert client.get("/health", headers={"host": "192.168.1.20:8000"}).status_code == 200
        assert client.get("/health", headers={"host": "[fe80::1]:8000"}).status_code == 200
        assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400


@pytest.mark.parametrize(
    "origin", ["https://attacker.example", "http://127.0.0.1:9999", "null", "http://testserver:81"]
)
def test_a_post_from_another_site_is_refused_before_its_body_is_read(origin):
    counting = Counting()
    with TestClient(create_app(counting)) as client:
        response = post_form(client, {"origin": origin})
        assert response.status_code == 403
        assert response.json()["error"] == "cross_origin"
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options(
            "/predict", headers={"origin": origin, "access-control-request-method": "POST"}
        )  # no CORS by default
        assert preflight.status_code in (403, 405) and "access-control-allow-origin" not in preflight.headers
    assert counting.calls == 0


def test_the_servers_own_page_may_post():
    with TestClient(create_app(Counting())) as client:
        page = client.get("/")
        assert page.status_code == 200 and "static/app.js" in page.text
        response = post_form(client, {"origin": "http://testserver"})  # what the browser sends from the page
        assert response.status_code == 200 and response.json()["label"] == "happy"
        assert "access-control-allow-origin" not in response.headers


def test_cors_origins_are_an_option():
    app = create_app(Counting(), cors_origins=["http://localhost:3000"])
    with TestClient(app) as client:
        preflight = client.options(
            "/predict",
            headers={
                "origin": "http://localhost:3000",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        response = client.post(
            "/predict", content=wav(), headers={"origin": "http://localhost:3000", "content-type": "audio/wav"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert post_form(client, {"origin": "http://localhost:3001"}).status_code == 403
    with pytest.raises(ValueError, match="cors_origins: 'localhost:3000' is not an origin"):
        create_app(Counting(), cors_origins=["localhost:3000"])


def test_host_and_origin_parsing():
    assert host_name("[::1]:8000") == "::1" and host_name("Example.ORG.:443") == "example.org"
    assert origin_netloc("HTTP://Example.org:80") == "example.org" and origin_netloc("null") is None
    assert origin_netloc("https://[::1]:8443") == "[::1]:8443"
    assert {"localhost", "127.0.0.1", "::1", "testserver", "10.0.0.5"} == allowed_host_names("10.0.0.5")
    assert "extra.example" in allowed_host_names("127.0.0.1", ["Extra.Example."])


def test_limits_in_health_are_unchanged_and_options_round_trip():
    limits = ServeLimits(max_windows=7, body_timeout=3.0, max_channels=2)
    assert ServeLimits(**limits.to_dict()) == limits  # how run_server hands them to worker processes
    with TestClient(create_app(Counting(), limits=limits)) as client:
        assert set(client.get("/health").json()["limits"]) == {
            "max_bytes",
            "max_duration",
            "min_duration",
            "formats",
            "max_concurrent",
            "max_queue",
        }


def test_no_answer_may_be_framed_by_another_site():
    with TestClient(create_app(Counting())) as client:
        for response in (client.get("/"), client.get("/health"), post_form(client, {"origin": "https://x.example"})):
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["content-security-policy"] == "frame-ancestors 'none'"
            assert response.headers["x-content-type-options"] == "nosniff"
