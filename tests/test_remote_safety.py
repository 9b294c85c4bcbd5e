"""`ser remote` against hostile names and values, on the real OpenSSH test host of test_remote.py.

Each test performs an attack or a fault for real and checks the safe outcome: no command hidden
in a run name, an option or an --env value ever runs on the host, values arrive byte for byte,
a fetch never destroys what the user had, and a fetched run brings no link or special file.
Refusals are one `error:` line and exit code 1.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speech_emotion.remote import RemoteError, fetch, monitor, status
from speech_emotion.remote.fetch import regular_files
from speech_emotion.remote.job import SER
from test_remote import SSHServer, require_sshd, ser

fetch_module = importlib.import_module("speech_emotion.remote.fetch")  # the attribute `fetch` is the function

DELIMITER = "SER_REMOTE_EOF"  # the heredoc delimiter run.sh was once written through


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    require_sshd()
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def hostile(markers: Path, tag: str) -> str:
    """A value that creates a file in ``markers`` if any shell ever parses it, whatever the quoting around it.

    The "host" of these tests is this machine: payloads only ever create marker files.
    """
    return (
        f"a $(touch {markers}/{tag}-dollar) `touch {markers}/{tag}-backtick` "
        f"' ; touch {markers}/{tag}-single ; ' \" ; touch {markers}/{tag}-double ; \" $HOME * \\ \n"
        f"{DELIMITER}\ntouch {markers}/{tag}-heredoc\n{DELIMITER}\nend"
    )


def fake_finished_run(folder: Path) -> Path:
    """What `ser train` leaves: results.json and a model folder (contents do not matter to fetch)."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.json").write_text(json.dumps({"encoder": {}}))
    (folder / "model" / "model.safetensors").write_bytes(os.urandom(256))
    (folder / "results.json").write_text(json.dumps({"protocol": "speaker-disjoint"}) + "\n")
    return folder


def no_staging_left(folder: Path) -> bool:
    return not [path for path in folder.rglob(".*") if ".fetch-" in path.name or ".old-" in path.name]


def test_launch_carries_hostile_values_intact_and_runs_none_of_them(sshd, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    record = tmp_path / "record.jsonl"
    # The host's "python": records how `ser train` was called (then stops), and runs everything else for real.
    python = tmp_path / f"py $(touch {markers}/python-dollar) 'q' `touch {markers}/python-backtick`" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "if sys.argv[1:2] == ['-c'] and sys.argv[3:4] == ['train']:\n"
        f"    with open({str(record)!r}, 'a') as stream:\n"
        "        stream.write(json.dumps({'argv': sys.argv[1:], 'value': os.environ.get('SER_TEST_VALUE')}) + '\\n')\n"
        "    sys.exit(0)\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])\n"
    )
    python.chmod(0o755)
    remote_dir = (
        tmp_path / f"host $(touch {markers}/dir-dollar) 'q' \"d\" `touch {markers}/dir-backtick`" / "ser-remote"
    )
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "clip.wav").write_bytes(b"RIFF")
    # The test host is THIS machine: a payload may only ever create marker files, never delete or change anything
    # (an earlier version of this line carried `rm -rf ~` and, run against the unfixed code, wiped most of ~).
    run = (
        f"runs/r $(touch {markers}/run-dollar) `touch {markers}/run-backtick` 'q' \"d\"\n"
        f"{DELIMITER}\ntouch {markers}/run-heredoc\n"
    )
    labels = '{"neutral": ["neutral"],\n' + hostile(markers, "labels") + "x" * 300 + "}"  # longer than a file name
    source = Path(sys.modules["speech_emotion"].__file__).parents[1]
    result = ser(
        "remote",
        "launch",
        *sshd.alias_flags(),
        "--data",
        data,
        "--encoder",
        "egemaps",
        "--out",
        run,
        "--labels",
        labels,
        "--corpus",
        hostile(markers, "corpus"),
        "--speaker-pattern",
        hostile(markers, "pattern"),
        "--remote-dir",
        remote_dir,
        "--python",
        python,
        "--install",
        "never",
        "--env",
        f"SER_TEST_VALUE={hostile(markers, 'env')}",
        "--env",
        f"PYTHONPATH={source}",
        "--json",
        "--",
        "--note",
        hostile(markers, "option"),
        DELIMITER,
    )
    assert result.exit_code == 0, result.stderr
    launched = json.loads(result.stdout)
    exit_code = remote_dir / f"{run}.job" / "exit_code"
    deadline = time.monotonic() + 60
    while not exit_code.exists():
        assert time.monotonic() < deadline, "the job never wrote its exit code"
        time.sleep(0.2)
    assert exit_code.read_text().strip() == "0"

    [call] = [json.loads(line) for line in record.read_text().splitlines()]
    argv = call["argv"]
    assert argv == launched["command"][1:] and launched["command"][0] == str(python)
    assert argv[:3] == ["-c", SER, "train"]
    assert argv[argv.index("--out") + 1] == run
    assert argv[argv.index("--labels") + 1] == labels
    assert argv[argv.index("--corpus") + 1] == hostile(markers, "corpus")
    assert argv[argv.index("--speaker-pattern") + 1] == hostile(markers, "pattern")
    assert argv[-3:] == ["--note", hostile(markers, "option"), DELIMITER]
    assert call["value"] == hostile(markers, "env")
    job = json.loads((remote_dir / f"{run}.job" / "job.json").read_text())
    assert job["command"] == launched["command"] and job["env"]["SER_TEST_VALUE"] == hostile(markers, "env")

    state = status(sshd.alias_host(), run, remote_dir=str(remote_dir))
    assert state["state"] == "finished" and state["exit_code"] == 0
    assert sorted(markers.iterdir()) == []


def test_status_and_monitor_never_run_a_run_name(sshd, tmp_path):
    """The monitor fallback (host without `ser monitor`) once echoed the run name unquoted."""
    markers = tmp_path / "markers"
    markers.mkdir()
    venv = tmp_path / "bare-venv"  # a Python without speech_emotion: monitor follows metrics.jsonl
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    remote_dir = tmp_path / "remote"
    runs = [
        f"runs/x$(touch {markers}/dollar)",
        f"runs/y`touch {markers}/backtick`",
        f"runs/z' ; touch {markers}/single ; '",
        f'runs/w" ; touch {markers}/double ; "',
        f"runs/n\n{DELIMITER}\ntouch {markers}/newline\n",
    ]
    for run in runs:
        (remote_dir / run).mkdir(parents=True)
        (remote_dir / run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n")
        (remote_dir / f"{run}.job").mkdir()
        (remote_dir / f"{run}.job" / "exit_code").write_text("0\n")
    host = sshd.alias_host()
    for run in runs:
        shown = monitor(host, run, remote_dir=str(remote_dir), python=str(venv / "bin/python"), tty=False, capture=True)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines() == ["epoch 1  train_loss 0.5000"]
        assert f"following {run}/metrics.jsonl" in shown.stderr
        state = status(host, run, remote_dir=str(remote_dir))
        assert state["state"] == "finished" and state["run"] == run
    assert sorted(markers.iterdir()) == []


def test_a_log_line_cannot_pose_as_a_status_field(sshd, tmp_path):
    job = tmp_path / "remote" / "runs" / "spoof.job"
    job.mkdir(parents=True)
    (job / "exit_code").write_text("1\n")
    (job / "train.log").write_text("Traceback ...\n@@exit\n0\n@@results\n{}\n")
    # A file without a final newline does not swallow the marker that follows it either.
    (tmp_path / "remote" / "runs" / "spoof").mkdir()
    (tmp_path / "remote" / "runs" / "spoof" / "results.json").write_text('{"protocol": "by hand"}')
    state = status(sshd.alias_host(), "runs/spoof", remote_dir=str(tmp_path / "remote"))
    assert state["state"] == "failed" and state["exit_code"] == 1 and state["results"] == {"protocol": "by hand"}
    assert state["log_tail"] == ["Traceback ...", "@@exit", "0", "@@results", "{}"]


def test_fetch_never_replaces_the_current_home_or_root_folder(sshd, tmp_path, monkeypatch):
    remote_dir = tmp_path / "remote"
    fake_finished_run(remote_dir / "runs" / "ok")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "mine.txt").write_text("mine")
    (work / "sub" / "keep.txt").write_text("keep")
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("todo")
    (tmp_path / "link-to-work").symlink_to(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    # Only folders inside tmp_path: were a refusal ever to fail, `--force` would empty the folder named.
    for to in (".", "./", str(work), "..", "sub/..", "../link-to-work", str(home), str(home.parent)):
        result = ser(
            "remote", "fetch", *sshd.alias_flags(), "runs/ok", "--remote-dir", remote_dir, "--to", to, "--force"
        )
        assert result.exit_code == 1, (to, result.stderr)
        message = " ".join(result.stderr.split())
        assert message.startswith("error: --to") and "nothing was changed" in message, message
        assert (work / "mine.txt").read_text() == "mine" and (work / "sub" / "keep.txt").read_text() == "keep"
        assert (home / "notes" / "todo.txt").read_text() == "todo"
    assert no_staging_left(tmp_path)

    # A folder of its own is replaced, by rename: nothing of the old content and no temporary folder is left.
    result = ser(
        "remote", "fetch", *sshd.alias_flags(), "runs/ok", "--remote-dir", remote_dir, "--to", "sub", "--force"
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (work / "sub").iterdir()) == ["model", "results.json"]
    assert (work / "mine.txt").read_text() == "mine" and no_staging_left(tmp_path)


def test_a_fetch_that_fails_midway_keeps_what_was_there(sshd, tmp_path, monkeypatch):
    """Faults after the download: a corrupted file, a link that slipped in; the old folder stays as it was."""
    remote_dir = tmp_path / "remote"
    fake_finished_run(remote_dir / "runs" / "ok")
    to = tmp_path / "local" / "ok"
    to.mkdir(parents=True)
    (to / "mine.txt").write_text("mine")
    real_rsync = fetch_module.rsync

    def corrupting(host, source, destination, **kwargs):
        stats = real_rsync(host, source, destination, **kwargs)
        (Path(destination) / "model" / "model.safetensors").write_bytes(b"not what the host has")
        return stats

    def linking(host, source, destination, **kwargs):
        stats = real_rsync(host, source, destination, **kwargs)
        (Path(destination) / "model" / "sneaky").symlink_to("/etc/passwd")
        return stats

    for fault, message in ((corrupting, "sha256 differs: model/model.safetensors"), (linking, "model/sneaky")):
        monkeypatch.setattr(fetch_module, "rsync", fault)
        with pytest.raises(RemoteError, match=message):
            fetch(sshd.alias_host(), "runs/ok", to=to, remote_dir=str(remote_dir), force=True)
        assert [p.name for p in to.iterdir()] == ["mine.txt"] and (to / "mine.txt").read_text() == "mine"
        assert no_staging_left(tmp_path)


@pytest.mark.parametrize(
    "make, offender, kind",
    [
        (lambda run, outside: (run / "model" / "extra").symlink_to("/etc/passwd"), "model/extra", "symbolic link"),
        (lambda run, outside: (run / "report").symlink_to(outside), "report", "symbolic link"),
        (lambda run, outside: os.mkfifo(run / "pipe"), "pipe", "FIFO"),
        (
            lambda run, outside: (
                (run / "model" / "model.json").unlink(),
                (run / "model" / "model.json").symlink_to(outside / "m.json"),
            ),
            "model/model.json",
            "symbolic link",
        ),
    ],
    ids=["link-to-file", "link-to-folder", "fifo", "model-json-is-a-link"],
)
def test_fetch_refuses_links_and_special_files(sshd, tmp_path, make, offender, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.json").write_text(json.dumps({"encoder": {}}))
    remote_dir = tmp_path / "remote"
    run = fake_finished_run(remote_dir / "runs" / "bad")
    make(run, outside)
    to = tmp_path / "got"
    result = ser("remote", "fetch", *sshd.alias_flags(), "runs/bad", "--remote-dir", remote_dir, "--to", to)
    assert result.exit_code == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error: ") and offender in message and kind in message, message
    assert not to.exists() and no_staging_left(tmp_path)
    # Over an existing folder, with --force: it stays as it was.
    to.mkdir()
    (to / "mine.txt").write_text("mine")
    result = ser("remote", "fetch", *sshd.alias_flags(), "runs/bad", "--remote-dir", remote_dir, "--to", to, "--force")
    assert result.exit_code == 1 and [p.name for p in to.iterdir()] == ["mine.txt"]


def test_fetch_takes_a_run_name_literally(sshd, tmp_path):
    """rsync on the host expands wildcards in the paths it sends: runs/[ab] must not mean runs/a and runs/b."""
    markers = tmp_path / "markers"
    markers.mkdir()
    remote_dir = tmp_path / "remote"
    parent = f"runs/$(touch {markers}/dollar) 'q'"
    name = f"{parent}/[ab]"  # the wildcard in the last part, beside the folders it would match
    fake_finished_run(remote_dir / name)
    for decoy in ("a", "b"):
        fake_finished_run(remote_dir / parent / decoy)
        (remote_dir / parent / decoy / "decoy.txt").write_text("not this run")
    to = tmp_path / "got"
    result = ser("remote", "fetch", *sshd.alias_flags(), name, "--remote-dir", remote_dir, "--to", to, "--json")
    assert result.exit_code == 0, result.stderr
    fetched = json.loads(result.stdout)
    assert set(fetched["checksums"]) == {"model/model.json", "model/model.safetensors", "results.json"}
    for file in fetched["checksums"]:
        assert (to / file).read_bytes() == (remote_dir / name / file).read_bytes()
    assert not (to / "decoy.txt").exists() and sorted(markers.iterdir()) == []


def test_check_destination_refuses_the_root_and_the_home_folder(tmp_path, monkeypatch):
    """Checked without fetching: a fetch that got past a wrong answer here would replace / or ~ (see above)."""
    from speech_emotion.remote.fetch import check_destination

    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path / "work")
    for to, why in ((Path("/"), "the filesystem root"), (home, "your home folder"), (home / "..", "holding")):
        with pytest.raises(ValueError, match=why):
            check_destination(to)
    assert check_destination(home / "runs" / "a") == home.resolve() / "runs" / "a"


def test_run_names_and_remote_dirs_that_could_reach_elsewhere_are_refused(sshd, tmp_path):
    for args, expected in (
        (["runs/../.."], "without '..' parts"),
        (["../outside"], "without '..' parts"),
        (["runs/a", "--remote-dir", f"{tmp_path}/a\nb"], "without control characters"),
    ):
        result = ser("remote", "status", *sshd.alias_flags(), *args)
        assert result.exit_code == 1 and result.stderr.startswith("error: ") and expected in result.stderr, (
            result.stderr
        )


def test_regular_files_refuses_links_and_special_files_by_name(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    assert [p.name for p in regular_files(tmp_path)] == ["model.json"]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last").symlink_to("/etc")  # never fetched: not looked at
    assert [p.name for p in regular_files(tmp_path)] == ["model.json"]
    (tmp_path / "model" / "bundled").symlink_to(tmp_path)
    with pytest.raises(RemoteError, match="model/bundled is a symbolic link"):
        regular_files(tmp_path)
    (tmp_path / "model" / "bundled").unlink()
    os.mkfifo(tmp_path / "model" / "pipe")
    with pytest.raises(RemoteError, match="model/pipe is a FIFO"):
        regular_files(tmp_path)


def test_replace_folder_puts_the_old_content_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    from speech_emotion.remote.fetch import replace_folder

    dest, staging = tmp_path / "run", tmp_path / ".run.fetch-x"
    dest.mkdir()
    (dest / "mine.txt").write_text("mine")
    staging.mkdir()
    (staging / "results.json").write_text("{}")
    real_rename = os.rename

    def failing(source, target):
        if Path(source) == staging:
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="No space left"):
        replace_folder(staging, dest, print)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"] and (staging / "results.json").exists()
    monkeypatch.setattr(os, "rename", real_rename)
    replace_folder(staging, dest, print)
    assert [p.name for p in dest.iterdir()] == ["results.json"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "run"
    ]
