"""`ser remote` against a real OpenSSH server on 127.0.0.1 (its own keys, config and port).

The "remote host" is this machine: launch syncs with rsync over ssh, starts a real tiny
training detached, status is polled until it ends, fetch downloads and verifies the bundle,
which must load and predict. In CI (CI=true) sshd and rsync must be there: the test fails
instead of skipping.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import synth_clip, write_synth_corpus
from speech_emotion.cli.app import app
from speech_emotion.remote import Host, RemoteError, fetch, monitor, status
from speech_emotion.remote.ssh import parse_rsync_stats
from speech_emotion.remote.state import RemoteRun, parse_sections, read_state

runner = CliRunner()
SSHD = "/usr/sbin/sshd"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tools() -> list[str]:
    missing = [name for name in ("ssh", "ssh-keygen", "rsync") if shutil.which(name) is None]
    return missing + ([SSHD] if not os.access(SSHD, os.X_OK) else [])


def require_sshd() -> None:
    missing = missing_tools()
    if missing:
        message = f"{', '.join(missing)} not installed (Debian: apt-get install openssh-server openssh-client rsync)"
        if IN_CI:
            pytest.fail(f"CI must run the SSH test: {message}; .ci/run installs them")
        pytest.skip(message)
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        if os.geteuid() != 0:
            if IN_CI:
                pytest.fail("sshd needs /run/sshd, and this non-root CI user cannot create it")
            pytest.skip("sshd needs its privilege separation folder /run/sshd (create it as root)")
        privsep.mkdir(mode=0o755, parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SSHServer:
    """sshd -D on 127.0.0.1 with a temporary host key, client key and config."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.user = getpass.getuser()
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ser-test", "-f", str(folder / name)], check=True
            )
        self.identity = folder / "client_key"
        (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
        self.port = free_port()
        (folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        )
        host_key = " ".join((folder / "host_key.pub").read_text().split()[:2])
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
        # An ssh config name, as users have in ~/.ssh/config.
        self.config = folder / "ssh_config"
        self.config.write_text(
            f"Host ser-test-host\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n  IdentityFile "
            f"{self.identity}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
        )
        self.log = open(folder / "sshd.log", "w")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(folder / "sshd_config"), "-e"], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {(folder / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen on port {self.port}: {(folder / 'sshd.log').read_text()}")
                time.sleep(0.05)

    def alias_host(self) -> Host:
        return Host("ser-test-host", config=self.config)

    def alias_flags(self) -> list[str]:
        return ["ser-test-host", "--ssh-config", str(self.config)]

    def direct_flags(self) -> list[str]:
        """user@host with --port and --identity, no ssh config."""
        return [
            f"{self.user}@127.0.0.1",
            "--port",
            str(self.port),
            "--identity",
            str(self.identity),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "--ssh-config",
            "/dev/null",
        ]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    require_sshd()
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """4 speakers × 3 pitch classes × 2 takes of 0.5 s."""
    return write_synth_corpus(tmp_path_factory.mktemp("remote-corpus"), n_speakers=4, n_takes=2, seconds=0.5)


def ser(*args):
    return runner.invoke(app, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_job(remote_dir: Path, run: str) -> None:
    """Leave no training behind when a test fails half-way (this machine is the 'host')."""
    pid_file = remote_dir / f"{run}.job" / "pid"
    if pid_file.is_file() and not (remote_dir / f"{run}.job" / "exit_code").exists():
        try:
            os.killpg(int(pid_file.read_text()), 15)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


def test_launch_status_monitor_fetch_predict(sshd, tiny_corpus, whisper_tiny, tmp_path, monkeypatch):
    remote_dir = tmp_path / "host-home" / "ser-remote"
    common = ["--remote-dir", remote_dir]
    # The "host" Python is this one: PYTHONPATH makes it import the source under test, as this process does, so the
    # package is only checked; without it a checkout that differs from the installed one would be pip-installed
    # over this machine's own speech_emotion.
    source = Path(sys.modules["speech_emotion"].__file__).parents[1]
    env = [
        "--env",
        f"SER_CACHE={os.environ['SER_CACHE']}",
        "--env",
        "HF_HUB_OFFLINE=1",
        "--env",
        f"PYTHONPATH={source}",
    ]
    started = time.monotonic()
    try:
        result = ser(
            "remote",
            "launch",
            *sshd.alias_flags(),
            "--data",
            tiny_corpus,
            "--encoder",
            whisper_tiny,
            "--out",
            "runs/demo",
            "--test-speakers",
            "04",
            "--val-speakers",
            "03",
            "--epochs",
            "6",
            "--lr",
            "0.003",
            "--warn-only",
            *common,
            *env,
            "--json",
            "--",
            "--optimizer",
            "adamw",
        )  # mini-batch epochs: L-BFGS may converge before 6; `--` passes train options through
        assert result.exit_code == 0, result.stderr
        launched = json.loads(result.stdout)
        err = result.stderr
        # Everything was sent the first time; the package was checked, not reinstalled (same source).
        assert launched["synced"]["data"]["n_files"] == 24 and launched["synced"]["data"]["n_transferred"] == 24
        assert launched["synced"]["encoder"]["n_skipped"] == 0
        assert launched["synced"]["project"]["n_files"] > 10
        package = sys.modules["speech_emotion"]
        assert launched["package"] == {
            "action": "checked",
            "version": package.__version__,
            "location": str(Path(package.__file__).parent),
            "same_source": True,
        }
        assert "24 files" in err and "24 sent" in err and "started" in err and "ser remote status ser-test-host" in err
        assert launched["command"][0] == sys.executable  # absolute python, not whatever PATH holds there
        try:
            assert (
                os.getsid(launched["pid"]) == launched["pid"]
            )  # its own session: the end of the ssh session does not reach it
        except ProcessLookupError:
            pass  # already done
        assert (remote_dir / "data").is_dir() and (remote_dir / "project" / "pyproject.toml").is_file()
        assert not (remote_dir / "project" / "tests").exists()

        # A second launch sends nothing the host already has (its bad `ser train` option makes a failed job,
        # checked at the end).
        result = ser(
            "remote",
            "launch",
            *sshd.alias_flags(),
            "--data",
            tiny_corpus,
            "--encoder",
            whisper_tiny,
            "--out",
            "runs/bad",
            *common,
            *env,
            "--json",
            "--",
            "--no-such-option",
        )
        assert result.exit_code == 0, result.stderr
        again = json.loads(result.stdout)
        # (the project source may differ: people edit it meanwhile)
        assert again["synced"]["data"]["n_transferred"] == again["synced"]["encoder"]["n_transferred"] == 0, again[
            "synced"
        ]
        assert "24 files (" in result.stderr and "0 sent (0 B), 24 already there" in result.stderr

        # The launching ssh session is over; the job runs on in its own session until it ends.
        host = sshd.alias_host()
        states = []
        while True:
            state = status(host, "runs/demo", remote_dir=str(remote_dir))
            states.append(state["state"])
            if state["state"] not in ("running", "starting"):
                break
            assert time.monotonic() - started < 150, f"training did not end: {state}"
            time.sleep(1)
        assert state["state"] == "finished", state["log_tail"]
        assert states[0] == "running"  # the launching ssh session had ended by then
        assert state["exit_code"] == 0 and state["epochs"] == 6 and state["last_epoch"]["epoch"] == 6
        assert state["results"]["test"]["n"] == 6 and 0 <= state["results"]["test"]["uar"] <= 1

        # status from the CLI, reaching the host as user@127.0.0.1 with --port/--identity.
        result = ser("remote", "status", *sshd.direct_flags(), "runs/demo", *common)
        assert result.exit_code == 0, result.stderr
        text = " ".join(result.stderr.split())
        assert "finished, exit code 0" in text and "epochs: 6; last: epoch 6" in text and "val_uar" in text

        # monitor: plain lines (no terminal here), one per epoch.
        shown = monitor(host, "runs/demo", remote_dir=str(remote_dir), tty=False, capture=True)
        assert shown.returncode == 0, shown.stderr
        metrics = [json.loads(line) for line in (remote_dir / "runs/demo/metrics.jsonl").read_text().splitlines()]
        lines = [line for line in shown.stdout.splitlines() if "epoch" in line]
        assert len(lines) >= len(metrics) == 6, shown.stdout
        for record in metrics:
            assert any(re.search(rf"epoch\W+{record['epoch']}\b", line) for line in lines), shown.stdout

        # fetch: every file's sha256 checked; the bundle loads here and predicts.
        monkeypatch.chdir(tmp_path)
        result = ser("remote", "fetch", *sshd.alias_flags(), "runs/demo", *common, "--json")
        assert result.exit_code == 0, result.stderr
        fetched = json.loads(result.stdout)
        local = tmp_path / "runs/demo"
        assert fetched["to"] == "runs/demo" and "verified sha256" in result.stderr
        assert {
            "model/model.json",
            "model/model.safetensors",
            "results.json",
            "metrics.jsonl",
            "config.json",
            "train.log",
        } <= set(fetched["checksums"])
        for name, digest in fetched["checksums"].items():
            assert sha256(local / name) == digest == sha256(remote_dir / "runs/demo" / name)
        assert not list(tmp_path.glob("runs/.demo.fetch-*"))  # staging folder moved into place

        from speech_emotion import Predictor

        predictor = Predictor.from_pretrained(local, encoder=str(whisper_tiny))
        assert predictor.classes == ["neutral", "happy", "sad"]
        prediction = predictor(synth_clip(260.0, seconds=0.5, seed=7), sampling_rate=16000)
        assert prediction["label"] in predictor.classes and abs(sum(prediction["probabilities"].values()) - 1) < 1e-5

        # Never overwrites silently.
        (local / "notes.txt").write_text("mine")
        result = ser("remote", "fetch", *sshd.alias_flags(), "runs/demo", *common)
        assert result.exit_code == 1 and "exists and is not empty" in result.stderr and "--force" in result.stderr
        assert (local / "notes.txt").read_text() == "mine"
        result = ser("remote", "fetch", *sshd.alias_flags(), "runs/demo", *common, "--to", local, "--force")
        assert result.exit_code == 0, result.stderr
        assert (
            not (local / "notes.txt").exists()
            and sha256(local / "model/model.safetensors") == fetched["checksums"]["model/model.safetensors"]
        )

        # A launch onto the finished run is refused (before anything is synced).
        result = ser(
            "remote",
            "launch",
            *sshd.alias_flags(),
            "--data",
            tiny_corpus,
            "--encoder",
            whisper_tiny,
            "--out",
            "runs/demo",
            *common,
        )
        assert result.exit_code == 1 and "exists and is not empty" in result.stderr and "syncing" not in result.stderr

        # The failed job: exit code and the end of its log.
        while (state := status(host, "runs/bad", remote_dir=str(remote_dir)))["state"] in ("running", "starting"):
            assert time.monotonic() - started < 170
            time.sleep(1)
        assert state["state"] == "failed" and state["exit_code"] == 2
        assert any("No such option" in line for line in state["log_tail"])
        shown = monitor(host, "runs/bad", remote_dir=str(remote_dir), tty=False, capture=True)
        assert shown.returncode == 1 and "ended with exit code 2 before creating runs/bad/" in shown.stderr
        shown = monitor(host, "runs/typo", remote_dir=str(remote_dir), tty=False, capture=True)
        assert shown.returncode == 3 and "no run runs/typo" in shown.stderr
        with pytest.raises(RemoteError, match="no model/model.json"):
            fetch(host, "runs/bad", to=tmp_path / "bad", remote_dir=str(remote_dir))
        assert not (tmp_path / "bad").exists()
    finally:
        kill_job(remote_dir, "runs/demo")
        kill_job(remote_dir, "runs/bad")
    assert time.monotonic() - started < 120


def test_install_step_pip_installs_synced_source_into_a_fresh_python(sshd, tmp_path):
    """--install always: `python -m pip install` of the synced project, offline, into a venv on the host."""
    from speech_emotion.remote.job import PROJECT_FILTERS, ensure_package, probe_python, project_root
    from speech_emotion.remote.ssh import rsync

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    host = sshd.alias_host()
    remote_dir = tmp_path / "remote"
    (remote_dir / "project").mkdir(parents=True)
    rsync(host, f"{project_root()}/", host.remote_path(f"{remote_dir}/project/"), delete=True, filters=PROJECT_FILTERS)
    # Offline: no index, build with the setuptools at hand, dependencies already there (system site-packages).
    env = {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_NO_DEPS": "1"}
    before = probe_python(host, remote_dir=str(remote_dir), python=python, env=env)
    lines = []
    package = ensure_package(
        host,
        before,
        python=python,
        remote_dir=str(remote_dir),
        root=project_root(),
        install="always",
        env=env,
        report=lines.append,
    )
    assert package["action"] == "installed" and package["same_source"]
    assert package["location"].startswith(str(venv)), package  # the venv's own copy, not the editable checkout
    assert any("pip install" in line for line in lines)
    # ensure_package compared the installed source's fingerprint with this one; the venv now imports its own copy.
    after = probe_python(host, remote_dir=str(remote_dir), python=python, env={})
    assert after["location"] == package["location"] and before["location"] != after["location"]


def test_connection_and_python_errors_are_clear(sshd, tmp_path):
    with pytest.raises(RemoteError, match=r"check the host name, --port, --identity"):
        status(Host("127.0.0.1", port=free_port(), options=("BatchMode=yes",), config="/dev/null"), "runs/x")
    result = ser(
        "remote",
        "launch",
        *sshd.alias_flags(),
        "--data",
        tmp_path,
        "--encoder",
        "egemaps",
        "--out",
        "runs/x",
        "--remote-dir",
        tmp_path / "r",
        "--python",
        "/no/such/python",
    )
    assert (
        result.exit_code == 1
        and "/no/such/python: not found" in " ".join(result.stderr.split())
        and "--python" in result.stderr
    )
    with pytest.raises(RemoteError, match="no run 'runs/none'"):
        status(sshd.alias_host(), "runs/none", remote_dir=str(tmp_path / "r"))


def test_read_state_from_job_files():
    run = RemoteRun("d", "runs/a")
    host = Host("h")
    died = read_state(
        host, run, parse_sections("@@pid\n41\n@@alive\n@@exit\n@@now\n100\n@@started\n40\n@@job_exists\nyes\n")
    )
    assert died["state"] == "died" and died["elapsed_s"] == 60
    failed = read_state(host, run, parse_sections("@@pid\n41\n@@exit\n137\n@@log\nKilled\n"))
    assert failed["state"] == "failed" and failed["exit_code"] == 137 and failed["log_tail"] == ["Killed"]
    running = read_state(
        host, run, parse_sections('@@pid\n41\n@@alive\nsh runs/a.job/run.sh\n@@epochs\n2\n@@last_epoch\n{"epoch": 2}\n')
    )
    assert running["state"] == "running" and running["last_epoch"] == {"epoch": 2} and running["epochs"] == 2
    reused = read_state(host, run, parse_sections("@@pid\n41\n@@alive\n/usr/bin/some-other-program\n"))
    assert reused["state"] == "died"  # a recycled pid is not our job
    with pytest.raises(RemoteError, match="no run 'runs/a' under d"):
        read_state(host, run, parse_sections("@@pid\n@@exit\n"))


def test_rsync_stats_and_host_validation():
    stats = parse_rsync_stats(
        "Number of files: 5 (reg: 3, dir: 2)\nNumber of regular files transferred: 0\nTotal file size: 1,000 "
        "bytes\nTotal transferred file size: 0 bytes\n"
    )
    assert (stats.n_files, stats.n_skipped, str(stats)) == (3, 3, "3 files (1.0 kB): 0 sent (0 B), 3 already there")
    with pytest.raises(ValueError, match="user@host"):
        Host("-oProxyCommand=evil")
    with pytest.raises(ValueError, match="Key=Value"):
        Host("h", options=("StrictHostKeyChecking",))
    assert Host("u@h", port=2222).ssh_args(tty=True)[-4:] == ["-t", "-p", "2222", "u@h"]


def test_monitor_falls_back_to_metrics_when_the_host_has_no_ser_monitor(tmp_path):
    """The host's Python lacks `ser monitor` (here: a bare venv): metrics.jsonl is followed, one line per epoch."""
    import threading

    from speech_emotion.remote.follow import monitor_script

    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    run = RemoteRun(str(tmp_path / "remote"), "runs/a")
    (tmp_path / "remote/runs/a").mkdir(parents=True)
    (tmp_path / "remote/runs/a.job").mkdir()
    metrics = tmp_path / "remote/runs/a/metrics.jsonl"
    metrics.write_text(json.dumps({"epoch": 1, "train_loss": 0.5, "val_uar": 0.5, "alarms": []}) + "\n")
    job = subprocess.Popen(["sleep", "1.5"])  # the training: followed until it ends
    threading.Thread(target=job.wait, daemon=True).start()  # reaped at once (a zombie would look alive)
    (tmp_path / "remote/runs/a.job/pid").write_text(f"{job.pid}\n")
    follower = subprocess.Popen(
        ["sh", "-c", monitor_script(run, str(venv / "bin" / "python"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    with open(metrics, "a") as stream:
        stream.write(json.dumps({"epoch": 2, "train_loss": 0.25, "val_uar": 0.75, "alarms": ["zero_loss"]}) + "\n")
    out, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err
    assert "ser monitor is not available on this host" in err
    assert out.splitlines() == [
        "epoch 1  train_loss 0.5000  val_uar 50.0%",
        "epoch 2  train_loss 0.2500  val_uar 75.0%  alarms zero_loss",
    ]
    # Ended job, --no-follow: the whole file at once.
    (tmp_path / "remote/runs/a.job/exit_code").write_text("0\n")
    done = subprocess.run(
        ["sh", "-c", monitor_script(run, str(venv / "bin" / "python"), follow=False)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.stdout.splitlines()[-1] == "epoch 2  train_loss 0.2500  val_uar 75.0%  alarms zero_loss"
