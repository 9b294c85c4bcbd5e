"""`ser --help` starts fast: the CLI imports no heavy library until a command needs it.

Each check runs a fresh interpreter: a module imported by an earlier test would hide the
import being checked.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

HEAVY = ("torch", "sklearn", "scipy", "transformers", "ray", "pyarrow")
"""Libraries that take seconds to import (Ray and pyarrow: only `--engine ray` and `--out *.parquet` use them);
`ser --help` must neither need nor try them."""

COMMANDS = ("data", "cache", "remote", "train", "evaluate", "cv", "report", "monitor", "predict", "export", "serve")

BLOCK_HEAVY = """
import sys

HEAVY = {heavy!r}
tried = []


class BlockHeavy:
    # First on sys.meta_path: importing any of HEAVY fails as if it were not installed, and
    # the attempt is recorded (a `try: import torch` that swallows the error still counts).
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_cli_startup)", name=name)
        return None


sys.meta_path.insert(0, BlockHeavy())
""".format(heavy=HEAVY)

RUN_SER = """
sys.argv = ["ser", *{args!r}]
from speech_emotion.cli.app import main  # what the `ser` console script runs

try:
    main()
    code = 0
except SystemExit as done:
    code = done.code
print("TRIED:" + ",".join(sorted(set(tried))), file=sys.stderr)
sys.exit(code)
"""


def run_ser_without_heavy_libraries(*args: str) -> subprocess.CompletedProcess:
    """``ser ARGS`` in a fresh interpreter where torch, sklearn, scipy and transformers cannot be imported."""
    script = BLOCK_HEAVY + RUN_SER.format(args=list(args))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}  # wide: rich does not wrap the help table
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)


def test_the_blocker_blocks():
    """Without this, the checks below could pass with a blocker that blocks nothing."""
    probe = BLOCK_HEAVY + "import sklearn.model_selection\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "No module named 'sklearn' (blocked by test_cli_startup)" in done.stderr


def test_help_lists_the_commands_without_torch_sklearn_scipy_transformers():
    done = run_ser_without_heavy_libraries("--help")
    assert done.returncode == 0, done.stderr
    tried = done.stderr.splitlines()[-1].removeprefix("TRIED:")
    assert not tried, f"`ser --help` tried to import {tried}: import it inside the command that needs it"
    missing = [command for command in COMMANDS if f" {command} " not in done.stdout]
    assert not missing, f"`ser --help` does not list {missing}:\n{done.stdout}"


def test_data_inspect_help_without_torch_sklearn_scipy_transformers():
    done = run_ser_without_heavy_libraries("data", "inspect", "--help")
    assert done.returncode == 0, done.stderr
    tried = done.stderr.splitlines()[-1].removeprefix("TRIED:")
    assert not tried, f"`ser data inspect --help` tried to import {tried}: import it inside the command that needs it"
    assert "Decode every file of a corpus" in done.stdout
    missing = [
        option for option in ("--corpus", "--labels", "--speaker-pattern", "--json") if option not in done.stdout
    ]
    assert not missing, f"`ser data inspect --help` does not show {missing}:\n{done.stdout}"


def test_engine_and_device_options_without_heavy_libraries():
    for command in (("predict", "--help"), ("cache", "fill", "--help")):
        done = run_ser_without_heavy_libraries(*command)
        assert done.returncode == 0, done.stderr
        tried = done.stderr.splitlines()[-1].removeprefix("TRIED:")
        assert not tried, f"`ser {' '.join(command)}` tried to import {tried}: import it inside the command"
        for option in ("--device", "--engine", "--address", "--workers", "--num-gpus-per-worker"):
            assert option in done.stdout, f"`ser {' '.join(command)}` does not show {option}"


IMPORT_SECONDS = """
import json, sys, time

wall, cpu = time.perf_counter(), time.process_time()
import speech_emotion.cli.app

wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({{"wall": wall, "cpu": cpu, "loaded": sorted(name for name in {heavy!r} if name in sys.modules)}}))
"""

IMPORT_BOUND = 1.0
"""Seconds of CPU. The CLI's import takes about 0.25 s; on the same machine torch's alone takes
2.2 s, scikit-learn's 2.3, scipy.stats' 1.4 and transformers' 1.3. CPU time, not wall: on a
machine shared by several test runs the wall time of one import varies five-fold."""


def test_cli_import_stays_fast():
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_SECONDS.format(heavy=HEAVY)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    cpu = statistics.median(run["cpu"] for run in runs)
    wall = statistics.median(run["wall"] for run in runs)
    loaded = sorted({name for run in runs for name in run["loaded"]})
    assert cpu < IMPORT_BOUND, (
        f"`import speech_emotion.cli.app` took {cpu:.2f} s of CPU ({wall:.2f} s wall; medians of 3), expected "
        f"under {IMPORT_BOUND} s; heavy libraries it imported: {loaded or 'none'}. Find what is slow with "
        "`python -X importtime -c 'import speech_emotion.cli.app'` and import it inside the command that needs it."
    )
