"""Fixtures: the trainer package on sys.path and a real MLflow server on loopback (session-wide).

The server is started with the exact command of docs/interfaces.md ("MLflow server" section),
with /data moved to a temporary directory, the port to a free one and the bind address to
127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from trainer_testlib import (
    QUIET_ENV,
    SERVER_START_DEADLINE,
    MlflowServer,
    documented_server_command,
    free_port,
    localize_command,
    wait_for_health,
)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "mlflow").mkdir()
    port = free_port()
    argv = localize_command(documented_server_command(), data_dir, port)
    log_path = data_dir / "mlflow-server.log"
    env = {**os.environ, **QUIET_ENV, "HOME": str(data_dir)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", port, data_dir, log_path, argv)
    try:
        wait_for_health(server.uri, proc, SERVER_START_DEADLINE, server.log_tail)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
