"""`ser remote`: train on another machine over SSH (launch, status, monitor, fetch)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from speech_emotion.cli.console import err_console, fail, print_json
from speech_emotion.remote.follow import format_epoch
from speech_emotion.remote.job import INSTALL_MODES
from speech_emotion.remote.ssh import Host, RemoteError
from speech_emotion.remote.state import DEFAULT_REMOTE_DIR

app = typer.Typer(
    help="Train on another machine over SSH: sync data, encoder and code with rsync, start `ser train` detached, "
    "follow it, fetch the model with verified checksums. Uses your OpenSSH client and ~/.ssh/config.",
    no_args_is_help=True,
)

USER_ERRORS = (RemoteError, FileExistsError, FileNotFoundError, ValueError)

HostArg = Annotated[
    str,
    typer.Argument(help="An ssh config name, host or user@host (key login: ssh-copy-id first).", show_default=False),
]
RunArg = Annotated[
    str,
    typer.Argument(
        help="Run folder on the host, as given to `ser remote launch --out` (relative to --remote-dir).",
        show_default=False,
    ),
]
PortOpt = Annotated[
    Optional[int], typer.Option("--port", "-p", help="ssh port (default: 22 or the ssh config's Port).")
]
IdentityOpt = Annotated[
    Optional[Path], typer.Option("--identity", "-i", help="Private key file (ssh -i).", exists=True, dir_okay=False)
]
SshOptionOpt = Annotated[
    Optional[List[str]],
    typer.Option(
        "--ssh-option", "-o", help="Extra ssh -o Key=Value (repeatable), e.g. -o StrictHostKeyChecking=accept-new."
    ),
]
SshConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--ssh-config",
        "-F",
        help="ssh config file to use instead of ~/.ssh/config (ssh -F).",
        exists=True,
        dir_okay=False,
    ),
]
RemoteDirOpt = Annotated[
    str, typer.Option("--remote-dir", help="Base folder on the host (relative to its home, or absolute).")
]
PythonOpt = Annotated[
    Optional[str],
    typer.Option(
        "--python",
        help="Python on the host, absolute path (non-interactive ssh has a minimal PATH). Default: this Python's path.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only compact JSON on stdout.")]


def make_host(
    host: str, port: int | None, identity: Path | None, ssh_option: list[str] | None, ssh_config: Path | None
) -> Host:
    try:
        return Host(host, port=port, identity=identity, options=tuple(ssh_option or ()), config=ssh_config)
    except ValueError as error:
        raise fail(error) from None


def host_flags(host: Host, remote_dir: str) -> str:
    """The options that reach the same host and folder again, for the follow-up commands printed."""
    flags = [host.target]
    if host.port is not None:
        flags += ["--port", str(host.port)]
    if host.identity is not None:
        flags += ["--identity", str(host.identity)]
    if host.config is not None:
        flags += ["--ssh-config", str(host.config)]
    for option in host.options:
        flags += ["-o", option]
    if remote_dir != DEFAULT_REMOTE_DIR:
        flags += ["--remote-dir", remote_dir]
    return shlex.join(flags)


def ssh_line(host: Host, command: str) -> str:
    """A plain ``ssh`` command line reaching the host as ``host`` does, to copy into a terminal."""
    args = ["ssh"] + (["-F", str(host.config)] if host.config is not None else [])
    args += ["-p", str(host.port)] if host.port is not None else []
    args += ["-i", str(host.identity)] if host.identity is not None else []
    for option in host.options:
        args += ["-o", option]
    return shlex.join(args + [host.target]) + " " + shlex.quote(command)


def report(line: str) -> None:
    err_console.print(escape(line), highlight=False, soft_wrap=True)


@app.command(context_settings={"allow_extra_args": True})
def launch(
    ctx: typer.Context,
    host: HostArg,
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="Local corpus folder (or CSV/TSV manifest inside one); mirrored to the host.", exists=True
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", help="Run folder on the host, relative to --remote-dir (e.g. runs/base).")
    ],
    encoder: Annotated[
        str,
        typer.Option("--encoder", help="Local encoder folder (synced) or a name the host resolves (hub id, egemaps)."),
    ],
    labels: Annotated[
        Optional[str], typer.Option("--labels", help="`ser train --labels`; a local schema file is synced.")
    ] = None,
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="`ser train --corpus`.")] = None,
    speaker_pattern: Annotated[
        Optional[str], typer.Option("--speaker-pattern", help="`ser train --speaker-pattern`.")
    ] = None,
    test_speakers: Annotated[Optional[str], typer.Option(help="Held-out test speakers, e.g. 16-18.")] = None,
    val_speakers: Annotated[Optional[str], typer.Option(help="Validation speakers, e.g. 13-15.")] = None,
    split: Annotated[
        Optional[Path],
        typer.Option(
            "--split", help="A local split file (`ser data split --out`), synced.", exists=True, dir_okay=False
        ),
    ] = None,
    allow_speaker_overlap: Annotated[bool, typer.Option(help="`ser train --allow-speaker-overlap`.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="`ser train --seed`.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="`ser train --epochs`.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="`ser train --patience`.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="`ser train --lr`.")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="`ser train --hidden`.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="`ser train --skip-bad`.")] = False,
    warn_only: Annotated[bool, typer.Option(help="`ser train --warn-only`.")] = False,
    force: Annotated[
        bool, typer.Option(help="Replace the run folder on the host if it exists and is not empty.")
    ] = False,
    remote_dir: RemoteDirOpt = DEFAULT_REMOTE_DIR,
    python: PythonOpt = None,
    install: Annotated[
        str,
        typer.Option(
            help="auto: pip install the synced source unless the host already imports the same; always; never (only "
            "check)."
        ),
    ] = "auto",
    env: Annotated[
        Optional[List[str]],
        typer.Option("--env", help="NAME=VALUE exported on the host for install and training (repeatable)."),
    ] = None,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_option: SshOptionOpt = None,
    ssh_config: SshConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sync data, encoder and code to HOST, then start `ser train` there, detached.

    rsync sends only what the host lacks. The package is pip-installed from the synced
    source unless the host's Python already imports the same source. Training runs under
    setsid nohup (it survives the connection ending), logging to RUN.job/train.log.
    Options of `ser train` not listed here go after `--`.

    Example: ser remote launch gpu-box --data ../shared/data/ravdess-speech-16k
    --encoder ../shared/models/whisper-base-encoder --labels ravdess-8 --test-speakers 16-18 --out runs/base
    """
    from speech_emotion.remote.job import launch as run_launch

    if install not in INSTALL_MODES:
        raise fail(f"--install {install!r}: expected one of {', '.join(INSTALL_MODES)}")
    variables = {}
    for item in env or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--env {item!r}: expected NAME=VALUE")
        variables[name] = value
    options: list[str] = []
    for flag, value in (
        ("--corpus", corpus),
        ("--speaker-pattern", speaker_pattern),
        ("--test-speakers", test_speakers),
        ("--val-speakers", val_speakers),
        ("--seed", seed),
        ("--epochs", epochs),
        ("--patience", patience),
        ("--lr", lr),
        ("--hidden", hidden),
    ):
        if value is not None:
            options += [flag, str(value)]
    for flag, on in (
        ("--allow-speaker-overlap", allow_speaker_overlap),
        ("--skip-bad", skip_bad),
        ("--warn-only", warn_only),
    ):
        if on:
            options.append(flag)
    options += list(ctx.args)
    target = make_host(host, port, identity, ssh_option, ssh_config)
    try:
        result = run_launch(
            target,
            data=data,
            out=out,
            encoder=encoder,
            labels=labels,
            split=split,
            train_options=options,
            remote_dir=remote_dir,
            python=python,
            install=install,
            env=variables,
            force=force,
            report=report,
        )
    except USER_ERRORS as error:
        raise fail(error) from None
    flags = host_flags(target, remote_dir)
    run = shlex.quote(out)
    err_console.print(
        f"[bold green]started[/] `ser train` on {escape(str(target))} (pid {result['pid']}): "
        f"{escape(result['remote_dir'])}/{escape(out)}\n"
        f"follow it:\n"
        f"  ser remote status {escape(flags)} {escape(run)}\n"
        f"  ser remote monitor {escape(flags)} {escape(run)}\n"
        f"  ser remote fetch {escape(flags)} {escape(run)}\n"
        f"  {escape(ssh_line(target, 'tail -f ' + shlex.quote(result['log'])))}",
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        print_json(result)


def print_status(state: dict) -> None:
    colour = {"running": "cyan", "starting": "cyan", "finished": "green", "failed": "red", "died": "red"}.get(
        state["state"], "yellow"
    )
    line = f"{escape(state['host'])}:{escape(state['path'])}: [bold {colour}]{state['state']}[/]"
    if state["pid"] is not None and state["state"] in ("running", "died"):
        line += f" (pid {state['pid']})"
    if state["exit_code"] is not None:
        line += f", exit code {state['exit_code']}"
    if state["elapsed_s"] is not None:
        line += f", {state['elapsed_s']} s"
    err_console.print(line, highlight=False, soft_wrap=True)
    if state["last_epoch"]:
        err_console.print(
            f"epochs: {state['epochs']}; last: {escape(format_epoch(state['last_epoch']))}",
            highlight=False,
            soft_wrap=True,
        )
    elif state["state"] in ("running", "starting"):
        err_console.print("no epoch yet (decoding audio / encoding features)")
    results = state["results"]
    if results:
        parts = [
            f"{part} accuracy {results[part]['accuracy']:.1%} UAR {results[part]['uar']:.1%} (n={results[part]['n']})"
            for part in ("val", "test")
            if part in results
        ]
        err_console.print(
            f"results (best epoch {results.get('best_epoch')}, {results.get('protocol')}): " + "; ".join(parts),
            highlight=False,
            soft_wrap=True,
        )
    if state["state"] in ("failed", "died", "unknown") and state["log_tail"]:
        err_console.print("end of train.log:")
        for line in state["log_tail"]:
            err_console.print("  " + escape(line), highlight=False, soft_wrap=True)


@app.command()
def status(
    host: HostArg,
    run: RunArg,
    remote_dir: RemoteDirOpt = DEFAULT_REMOTE_DIR,
    wait: Annotated[
        bool, typer.Option("--wait", help="Poll until the run ends; exit 0 if it finished, 1 if not.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --wait.")] = 10.0,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_option: SshOptionOpt = None,
    ssh_config: SshConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Is a run on HOST running, finished or failed? Last epoch's metrics, exit code, log tail."""
    from speech_emotion.remote.state import status as run_status

    target = make_host(host, port, identity, ssh_option, ssh_config)
    try:
        state = run_status(target, run, remote_dir=remote_dir)
        while wait and state["state"] in ("running", "starting"):
            time.sleep(interval)
            state = run_status(target, run, remote_dir=remote_dir)
    except USER_ERRORS as error:
        raise fail(error) from None
    print_status(state)
    if as_json:
        print_json(state)
    if wait and state["state"] != "finished":
        raise typer.Exit(code=1)


@app.command()
def monitor(
    host: HostArg,
    run: RunArg,
    remote_dir: RemoteDirOpt = DEFAULT_REMOTE_DIR,
    python: PythonOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Follow until the run ends; --no-follow prints its state once.")
    ] = True,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_option: SshOptionOpt = None,
    ssh_config: SshConfigOpt = None,
) -> None:
    """Follow a run on HOST live: runs `ser monitor RUN` there over ssh (a terminal is passed through)."""
    from speech_emotion.remote.follow import monitor as run_monitor

    target = make_host(host, port, identity, ssh_option, ssh_config)
    try:
        done = run_monitor(target, run, remote_dir=remote_dir, python=python, follow=follow)
    except USER_ERRORS as error:
        raise fail(error) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    if done.returncode:
        raise typer.Exit(code=done.returncode)


@app.command()
def fetch(
    host: HostArg,
    run: RunArg,
    to: Annotated[
        Optional[Path],
        typer.Option(
            "--to",
            help="Local folder to write (default: RUN, relative to here). It is replaced as a whole, so never the "
            "current folder, the home folder, / or a folder holding one of them.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace --to if it exists and is not empty.")] = False,
    remote_dir: RemoteDirOpt = DEFAULT_REMOTE_DIR,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_option: SshOptionOpt = None,
    ssh_config: SshConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a finished run (model/, reports, metrics, log) and verify every file's sha256.

    A run holding symbolic links, devices, FIFOs or sockets is refused. What --to held is
    replaced only once the download is verified, and kept as it was if anything fails.
    """
    from speech_emotion.remote.fetch import fetch as run_fetch

    target = make_host(host, port, identity, ssh_option, ssh_config)
    try:
        result = run_fetch(target, run, to=to, remote_dir=remote_dir, force=force, report=report)
    except USER_ERRORS as error:
        raise fail(error) from None
    err_console.print(
        f"[bold green]fetched[/] {result['n_files']} files to {escape(result['to'])}; sha256 verified against "
        f"{escape(str(target))}",
        highlight=False,
    )
    if as_json:
        print_json(result)
