"""Helpers for the trainer tests: paths, a free port, and the documented MLflow server command.

The server is started with the exact command of docs/interfaces.md ("MLflow server" section),
with /data moved to a temporary directory, the port to a free one and the bind address to
127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IMAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = IMAGE_DIR.parents[1]
INTERFACES = REPO_DIR / "docs" / "interfaces.md"
if str(IMAGE_DIR) not in sys.path:
    sys.path.insert(0, str(IMAGE_DIR))

# What the training image sets; keeps the tests off the network.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "GIT_PYTHON_REFRESH": "quiet"}
os.environ.update(QUIET_ENV)

SERVER_START_DEADLINE = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def documented_server_command() -> list[str]:
    """The `mlflow server ...` command from docs/interfaces.md, as an argv list."""
    text = INTERFACES.read_text()
    match = re.search(r"## MLflow server[^\n]*\n```\n(.*?)```", text, re.S)
    if not match:
        raise AssertionError(f"{INTERFACES}: no fenced command block under '## MLflow server'")
    argv = shlex.split(match.group(1))
    if argv[:2] != ["mlflow", "server"]:
        raise AssertionError(f"{INTERFACES}: the MLflow server command must start with 'mlflow server', got {argv[:2]}")
    return argv


def localize_command(argv: list[str], data_dir: Path, port: int) -> list[str]:
    """Run the documented command on loopback: /data -> data_dir, port 5000 -> port, 0.0.0.0 -> 127.0.0.1."""
    out: list[str] = []
    previous = None
    for arg in argv:
        if previous == "--port":
            arg = str(port)
        elif previous == "--host":
            arg = "127.0.0.1"
        elif previous == "--workers":
            arg = "1"  # one worker is enough for the tests on a small machine
        elif previous in ("--backend-store-uri", "--artifacts-destination"):
            arg = arg.replace("/data/", f"{data_dir}/")
        out.append(arg)
        previous = arg if arg.startswith("--") else None
    # `mlflow` from the venv running the tests, so client and server versions match.
    return [sys.executable, "-m", "mlflow", *out[1:]]


@dataclass
class MlflowServer:
    uri: str
    port: int
    data_dir: Path
    log_path: Path
    argv: list[str]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_for_health(uri: str, proc: subprocess.Popen | None, deadline_s: float, log_tail=lambda: "") -> None:
    import requests

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}:\n{log_tail()}")
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"mlflow server at {uri} not healthy within {deadline_s:.0f}s:\n{log_tail()}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def running_mlflow_server(
    data_dir: Path, port: int | None = None, edit_argv=lambda argv: argv
) -> Iterator[tuple[MlflowServer, subprocess.Popen]]:
    """Start the documented server command on loopback with its data in data_dir; stop it on exit.
    `edit_argv` may change the localized command first (options the stack adds, e.g. metrics)."""
    (data_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = edit_argv(localize_command(documented_server_command(), data_dir, port))
    log_path = data_dir / f"mlflow-server-{port}.log"
    env = {**os.environ, **QUIET_ENV, "HOME": str(data_dir)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", port, data_dir, log_path, argv)
    try:
        wait_for_health(server.uri, proc, SERVER_START_DEADLINE, server.log_tail)
        yield server, proc
    finally:
        stop_process_group(proc)
