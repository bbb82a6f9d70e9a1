"""Fixtures: the trainer package on sys.path and a real MLflow server on loopback (session-wide).

The server is started with the exact command of docs/interfaces.md ("MLflow server" section),
with /data moved to a temporary directory, the port to a free one and the bind address to
127.0.0.1.
"""

from __future__ import annotations

import pytest
from trainer_testlib import running_mlflow_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("data")) as (server, _proc):
        yield server
