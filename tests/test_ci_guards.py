"""CI cannot pass falsely: a skip is a failure there, missing shared data stops `.ci/run`, torch is not pinned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]

SKIPPING = """
import pytest

pytest.importorskip("ser_no_such_module")  # a whole module that skips


def test_nothing():
    pass
"""

SKIPPING_INSIDE = """
import pytest


@pytest.fixture
def shared_data():
    pytest.skip("shared data not found")


def test_needs_data(shared_data):
    pass


@pytest.mark.skip_in_ci_ok("needs a GPU")
def test_needs_a_gpu():
    pytest.skip("no GPU here")
"""


def run_pytest(tmp_path: Path, name: str, source: str, *, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / name).write_text(source)
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / name)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_a_skip_fails_in_ci_and_only_there(tmp_path):
    for name, source in (("test_module_skip.py", SKIPPING), ("test_fixture_skip.py", SKIPPING_INSIDE)):
        outside = run_pytest(tmp_path, name, source, ci=False)
        assert outside.returncode in (0, 5) and "skipped" in outside.stdout, outside.stdout  # 5: nothing left to run
        inside = run_pytest(tmp_path, name, source, ci=True)
        assert inside.returncode != 0 and "skipped in CI" in inside.stdout, inside.stdout
    # The one marked as allowed (hardware CI lacks) still skips in CI.
    inside = run_pytest(tmp_path, "test_fixture_skip.py", SKIPPING_INSIDE, ci=True)
    assert "1 skipped, 1 error" in inside.stdout, inside.stdout  # a skip in a fixture fails at setup


def test_ci_run_stops_without_the_shared_folder(tmp_path):
    done = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "SER_SHARED": str(tmp_path / "absent")},
        timeout=60,
    )
    assert done.returncode == 1
    assert "error: the shared data and models are missing" in done.stderr
    assert f"{tmp_path / 'absent'}/data/ravdess-speech-16k" in done.stderr  # names what is missing


def test_torch_is_a_range_and_ci_installs_the_cpu_wheel_first():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (torch,) = [d for d in project["dependencies"] if d.split(">")[0].split("=")[0].split("<")[0].strip() == "torch"]
    assert "==" not in torch and ">=" in torch and "<3" in torch, torch
    pins = [d for extra in project["optional-dependencies"].values() for d in extra if "==" in d]
    assert all(d.startswith(("silero-vad==", "ruff==")) for d in pins), pins  # the model file / the formatter
    script = (REPO / ".ci" / "run").read_text()
    assert script.index("pip install -q torch==2.13.0") < script.index("pip install -q -e '.[dev]'")
