"""The web page in a real browser: headless Chromium driven by Selenium against `ser serve`.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). In CI
(``CI=true``) a missing browser is a failure; elsewhere the tests skip with the reason.
A screenshot of the page with its result is saved to the test's tmp folder and, when
``SER_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]
REAL_CLIP = "Actor_16/03-01-05-01-01-01-16.flac"  # an 'angry' RAVDESS take of a held-out actor


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} not found (apt-get install chromium chromium-driver; .ci/run does)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _browser_available():
    reason = _missing()
    if reason and IN_CI:
        pytest.fail(f"the browser test must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def run_dir(synth_corpus, whisper_tiny, tmp_path_factory) -> Path:
    from speech_emotion.features.store import FeatureStore
    from speech_emotion.training.config import TrainConfig
    from speech_emotion.training.pipeline import train

    out = tmp_path_factory.mktemp("browser") / "synth-whisper-tiny"
    train(
        synth_corpus,
        encoder=str(whisper_tiny),
        out=out,
        test_speakers=["05", "06"],
        val_speakers=["04"],
        config=TrainConfig(max_epochs=40, lr=3e-3, hidden=32, stop_on_alarm=False),
        store=FeatureStore(root=tmp_path_factory.mktemp("browser-cache")),
    )
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`ser serve` in a subprocess on a free loopback port; yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server-log") / "serve.log"
    command = [
        sys.executable,
        "-c",
        "from speech_emotion.cli.app import main; main()",  # `ser`, whichever bin/ it is in
        "serve",
        str(run_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ser serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ser serve did not answer within 120 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=900,1100",
        # a fake microphone (a beeping tone) that needs no permission prompt, for the recording test
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def clip(synth_corpus) -> Path:
    """A real RAVDESS recording when ../shared has them, else a synthetic clip."""
    shared = Path(os.environ.get("SER_SHARED", REPO.parent / "shared"))
    real = shared / "data" / "ravdess-speech-16k" / REAL_CLIP
    return real if real.is_file() else synth_corpus / "Actor_05/03-01-03-01-01-01-05.wav"


def _wait_for_result(driver, timeout: float = 90.0) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("id", "result").get_attribute("data-state") in ("done", "error")
    )
    return driver.find_element("id", "result").get_attribute("data-state")


def _open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "model-line").text.startswith("model "))


def _save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "the browser did not write a screenshot"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    target = os.environ.get("SER_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def test_page_upload_shows_the_api_label(driver, server, clip, tmp_path):
    api = httpx.post(
        server + "predict", files={"file": (clip.name, clip.read_bytes(), "audio/flac")}, timeout=60
    ).json()
    _open_page(driver, server)
    assert "3 classes: neutral, happy, sad" in driver.find_element("id", "model-line").text
    driver.find_element("id", "file").send_keys(str(clip))
    assert _wait_for_result(driver) == "done", driver.find_element("id", "error").text
    shown = driver.find_element("id", "label").text
    assert shown.lower() == api["label"]
    assert driver.find_element("id", "result").get_attribute("data-label") == api["label"]
    bars = driver.find_elements("css selector", "#bars .bar")
    assert {bar.get_attribute("data-class") for bar in bars} == set(api["probabilities"])
    for bar in bars:
        assert float(bar.get_attribute("data-probability")) == pytest.approx(
            api["probabilities"][bar.get_attribute("data-class")], abs=1e-6
        )
        assert (
            bar.find_element("css selector", ".value").text
            == f"{100 * api['probabilities'][bar.get_attribute('data-class')]:.1f}%"
        )
    assert "top" in bars[0].get_attribute("class") and bars[0].get_attribute("data-class") == api["label"]
    assert clip.name in driver.find_element("id", "clip-line").text
    _save_screenshot(driver, tmp_path, "serve.png")


def test_page_shows_the_servers_error(driver, server, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are meeting notes, not audio")
    _open_page(driver, server)
    driver.find_element("id", "file").send_keys(str(not_audio))
    assert _wait_for_result(driver) == "error"
    message = driver.find_element("id", "error").text
    assert message.startswith("415 unsupported_format: notes.wav: not a recognised audio file")
    assert driver.find_element("id", "result").get_attribute("data-label") is None
    _save_screenshot(driver, tmp_path, "serve-error.png")


def test_page_records_from_the_microphone(driver, server, tmp_path):
    from speech_emotion.data.audio import MIN_DURATION

    _open_page(driver, server)
    button = driver.find_element("id", "record")
    assert button.is_enabled()
    button.click()
    time.sleep(MIN_DURATION + 1.5)
    assert "recording" in driver.find_element("id", "record-status").text
    button.click()
    assert _wait_for_result(driver) == "done", driver.find_element("id", "error").text
    # The recording (WebM/Opus in Chromium) was converted to WAV in the page and accepted.
    assert driver.find_element("id", "result").get_attribute("data-source") == "recording.wav"
    assert driver.find_element("id", "label").text.lower() in ("neutral", "happy", "sad")
    assert "recording.wav" in driver.find_element("id", "clip-line").text
