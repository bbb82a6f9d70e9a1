"""Fixtures: the trainer package on sys.path and a real MLflow server on loopback (session-wide).

The server is started with the exact command of docs/interfaces.md ("MLflow server" section),
with /data moved to a temporary directory, the port to a free one and the bind address to
127.0.0.1.
"""

from __future__ import annotations

import uuid

import pytest
from trainer_testlib import running_mlflow_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("data")) as (server, _proc):
        yield server


@pytest.fixture
def trainer_env(mlflow_server, tmp_path, monkeypatch):
    """Environment for one trainer invocation: its own model name, experiment and models dir."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_EXPERIMENT_NAME": f"exp-{suffix}",
        "MODEL_NAME": f"iris-{suffix}",
        "MODELS_DIR": str(tmp_path / "models"),
        "MLFLOW_CONNECT_RETRIES": "3",
        "MLFLOW_CONNECT_BACKOFF_SECONDS": "0.2",
    }
    for key in ("N_ESTIMATORS", "MAX_DEPTH", "RUN_NAME", "PROMOTION_POLICY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
