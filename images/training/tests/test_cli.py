"""Configuration, validation and the unreachable-server path of `python -m trainer`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_testlib import IMAGE_DIR, QUIET_ENV, free_port

from trainer import cli

BASE_ENV = {"MLFLOW_TRACKING_URI": "http://mlflow-service.mlops-training.svc.cluster.local:5000"}


def test_defaults_match_the_contract():
    config = cli.load_config([], BASE_ENV)
    assert (config.n_estimators, config.max_depth, config.run_name) == (100, 5, "baseline")
    assert config.promotion_policy == "always"
    assert config.experiment_name == "iris-classification"
    assert config.models_dir == Path("/data/models")
    assert config.model_name == "iris-classifier"
    assert config.tracking_uri == BASE_ENV["MLFLOW_TRACKING_URI"]
    assert config.table_max_cells == 4_194_304
    assert cli.load_config([], {**BASE_ENV, "TABLE_MAX_CELLS": "0"}).table_max_cells == 0


def test_environment_fallbacks_and_flags_win():
    env = {
        **BASE_ENV,
        "N_ESTIMATORS": "200",
        "MAX_DEPTH": "20",
        "RUN_NAME": "experiment-001",
        "PROMOTION_POLICY": "Better",
        "MODELS_DIR": "/tmp/m",
        "MODEL_NAME": "other-model",
        "MLFLOW_EXPERIMENT_NAME": "exp",
    }
    config = cli.load_config([], env)
    assert (config.n_estimators, config.max_depth, config.run_name) == (200, 20, "experiment-001")
    assert (config.promotion_policy, config.models_dir, config.model_name) == ("better", Path("/tmp/m"), "other-model")
    assert config.experiment_name == "exp"

    flags = ["--n-estimators", "300", "--max-depth", "15", "--run-name", "optimized", "--promotion-policy", "always"]
    config = cli.load_config(flags, env)
    assert (config.n_estimators, config.max_depth, config.run_name) == (300, 15, "optimized")
    assert config.promotion_policy == "always"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-estimators", "abc"], "argument --n-estimators: must be an integer >= 1, got 'abc'"),
        (["--n-estimators", "0"], "argument --n-estimators: must be an integer >= 1, got '0'"),
        (["--max-depth", "-3"], "argument --max-depth: must be an integer >= 1, got '-3'"),
        (["--max-depth", "2.5"], "argument --max-depth: must be an integer >= 1, got '2.5'"),
        (["--run-name", "  "], "argument --run-name: must be 1-250 printable characters, got '  '"),
        (["--promotion-policy", "sometimes"], "argument --promotion-policy: invalid choice: 'sometimes'"),
        (["--learning-rate", "1"], "unrecognized arguments: --learning-rate 1"),
    ],
)
def test_bad_flags_exit_2_naming_flag_and_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.load_config(argv, BASE_ENV)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLFLOW_TRACKING_URI": ""}, "MLFLOW_TRACKING_URI is not set"),
        ({"MLFLOW_TRACKING_URI": "mlflow-service:5000"}, "MLFLOW_TRACKING_URI must be an http:// or https:// URL"),
        ({"MLFLOW_TRACKING_URI": "ftp://x"}, "got 'ftp://x'"),
        ({"N_ESTIMATORS": "many"}, "N_ESTIMATORS must be an integer >= 1, got 'many'"),
        ({"MAX_DEPTH": "0"}, "MAX_DEPTH must be an integer >= 1, got '0'"),
        ({"RUN_NAME": "x" * 251}, "RUN_NAME must be 1-250 printable characters"),
        ({"PROMOTION_POLICY": "sometimes"}, "PROMOTION_POLICY must be one of always, better, got 'sometimes'"),
        ({"MODEL_NAME": "../etc"}, "MODEL_NAME must be 1-128 letters, digits"),
        ({"MLFLOW_CONNECT_RETRIES": "0"}, "MLFLOW_CONNECT_RETRIES must be an integer between 1 and 100, got '0'"),
        ({"MLFLOW_CONNECT_BACKOFF_SECONDS": "soon"}, "MLFLOW_CONNECT_BACKOFF_SECONDS must be a number of seconds"),
        ({"MLFLOW_CONNECT_BACKOFF_SECONDS": "99"}, "between 0 and 30, got '99'"),
        ({"TABLE_MAX_CELLS": "lots"}, "TABLE_MAX_CELLS must be an integer between 0 and 8388608, got 'lots'"),
        ({"TABLE_MAX_CELLS": "-1"}, "TABLE_MAX_CELLS must be an integer between 0 and 8388608, got '-1'"),
        ({"TABLE_MAX_CELLS": "8388609"}, "got '8388609'"),
    ],
)
def test_bad_environment_is_a_config_error_naming_the_variable(env, message):
    with pytest.raises(cli.ConfigError) as exc:
        cli.load_config([], {**BASE_ENV, **env})
    assert message in str(exc.value)


def test_unwritable_models_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(cli.ConfigError, match="MODELS_DIR '.*/file/models' cannot be created"):
        cli.check_models_dir(blocker / "models")


def test_backoff_doubles_and_is_capped():
    port = free_port()  # nothing listens there
    sleeps: list[float] = []
    with pytest.raises(cli.TrackingUnavailable) as exc:
        cli.wait_for_tracking_server(f"http://127.0.0.1:{port}", retries=8, backoff=1.0, sleep=sleeps.append)
    assert sleeps == [1, 2, 4, 8, 16, 30, 30]
    assert f"http://127.0.0.1:{port}" in str(exc.value) and "after 8 attempts" in str(exc.value)
    assert "Connection refused" in str(exc.value)


def _run_trainer(env: dict[str, str], *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "N_EST", "MAX_D", "RUN_N"))}
    full_env.update(QUIET_ENV)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "trainer", *argv],
        cwd=IMAGE_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_mlflow_down_exits_non_zero_naming_the_uri_within_the_bound(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = _run_trainer(
        {
            "MLFLOW_TRACKING_URI": uri,
            "MODELS_DIR": str(tmp_path / "models"),
            "MLFLOW_CONNECT_RETRIES": "3",
            "MLFLOW_CONNECT_BACKOFF_SECONDS": "0.5",
        },
        "--run-name",
        "offline",
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("[trainer] error: MLflow tracking server at " + uri + " is unreachable after 3 attempts")
    assert proc.stdout.count("retrying in") == 2
    assert "retrying in 0.5s" in proc.stdout and "retrying in 1s" in proc.stdout
    # Waits 0.5 + 1 s, plus interpreter start-up; never MLflow's own multi-minute retries.
    assert 1.5 <= elapsed < 30
    assert not (tmp_path / "models" / "iris-classifier").exists()


def test_python_m_trainer_reports_bad_values(tmp_path):
    proc = _run_trainer({"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "MAX_DEPTH": "deep"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "[trainer] error: MAX_DEPTH must be an integer >= 1, got 'deep'"

    proc = _run_trainer({"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, "--n-estimators", "-1")
    assert proc.returncode == 2
    assert "argument --n-estimators: must be an integer >= 1, got '-1'" in proc.stderr
