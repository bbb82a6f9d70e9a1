"""The trainer against a real MLflow server (session fixture in conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_iris

from trainer import cli
from trainer.export import load_version, read_current
from trainer.model import CLASS_NAMES, train_model

PLOTS = ("plots/confusion_matrix.png", "plots/feature_importance.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _run_by_name(client, experiment_name, run_name):
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _train(monkeypatch, *argv, policy=None):
    if policy:
        monkeypatch.setenv("PROMOTION_POLICY", policy)
    return cli.main(list(argv))


def test_run_is_logged_registered_promoted_and_exported(trainer_env, monkeypatch, mlflow_server, tmp_path, capsys):
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import Model
    from PIL import Image

    assert _train(monkeypatch, "--n-estimators", "30", "--max-depth", "4", "--run-name", "exp-always") == 0
    out = capsys.readouterr().out
    client = _client(mlflow_server.uri)
    name = trainer_env["MODEL_NAME"]

    run = _run_by_name(client, trainer_env["MLFLOW_EXPERIMENT_NAME"], "exp-always")
    assert run.info.status == "FINISHED"
    assert run.info.run_id in out and "promoted" in out
    params = run.data.params
    assert (params["n_estimators"], params["max_depth"], params["promotion_policy"]) == ("30", "4", "always")

    expected = train_model(30, 4)
    assert set(run.data.metrics) == set(expected.metrics)
    for key, value in expected.metrics.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    assert {f"precision_{c}" for c in CLASS_NAMES} <= set(run.data.metrics)
    assert {f"recall_{c}" for c in CLASS_NAMES} <= set(run.data.metrics)

    listed = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert listed == set(PLOTS)
    for artifact in PLOTS:
        local = client.download_artifacts(run.info.run_id, artifact, str(tmp_path))
        with open(local, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC, artifact
        with Image.open(local) as image:
            assert image.width > 100 and image.height > 100

    versions = client.search_model_versions(f"name = '{name}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run.info.run_id)]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version(name, "1").tags.get("promoted") == "true"
    assert run.data.tags["promoted"] == "true"

    # Signature and input example travel with the logged model.
    model_info = Model.load(f"models:/{name}/1")
    assert model_info.signature is not None
    assert model_info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 4)
    assert model_info.saved_input_example_info is not None
    logged = mlflow.sklearn.load_model(f"models:/{name}@champion")

    # The exported model is the promoted one and predicts exactly like it.
    current = read_current(trainer_env["MODELS_DIR"], name)
    assert (current["version"], current["run_id"]) == ("1", run.info.run_id)
    assert run.data.tags["exported_to"] == str(current["path"])
    exported, metadata = load_version(current["path"])
    X = load_iris().data
    np.testing.assert_array_equal(exported.predict(X), logged.predict(X))
    np.testing.assert_array_equal(
        exported.predict(X), np.asarray(mlflow.pyfunc.load_model(f"models:/{name}/1").predict(X))
    )
    assert exported.predict([[5.1, 3.5, 1.4, 0.2]]).tolist() == [0]
    assert metadata["version"] == "1" and metadata["run_id"] == run.info.run_id
    assert metadata["run_name"] == "exp-always" and metadata["name"] == name
    assert metadata["params"]["n_estimators"] == 30
    assert metadata["metrics"]["accuracy"] == pytest.approx(expected.metrics["accuracy"])
    pointer = json.loads((current["path"].parents[1] / "current.json").read_text())
    assert pointer["dir"] == current["path"].name


def test_better_policy_refuses_a_worse_model_and_promotes_a_better_one(trainer_env, monkeypatch, mlflow_server):
    client = _client(mlflow_server.uri)
    name, models_dir, experiment = (
        trainer_env["MODEL_NAME"],
        trainer_env["MODELS_DIR"],
        trainer_env["MLFLOW_EXPERIMENT_NAME"],
    )

    # No champion yet: the first model is promoted even under "better".
    assert _train(monkeypatch, "--n-estimators", "50", "--max-depth", "5", "--run-name", "good", policy="better") == 0
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert read_current(models_dir, name)["version"] == "1"

    # A stump is worse on the held-out set: registered, not promoted, nothing exported.
    assert _train(monkeypatch, "--n-estimators", "1", "--max-depth", "1", "--run-name", "stump", policy="better") == 0
    stump_run = _run_by_name(client, experiment, "stump")
    assert stump_run.info.status == "FINISHED"
    assert stump_run.data.tags["promoted"] == "false"
    assert "exported_to" not in stump_run.data.tags
    assert stump_run.data.metrics["champion_accuracy"] > stump_run.data.metrics["accuracy"]
    assert client.get_model_version(name, "2").tags.get("promoted") == "false"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert read_current(models_dir, name)["version"] == "1"

    # "always" promotes the stump anyway ...
    assert _train(monkeypatch, "--n-estimators", "1", "--max-depth", "1", "--run-name", "forced", policy="always") == 0
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    assert read_current(models_dir, name)["version"] == "3"

    # ... and "better" replaces it with a model that beats it. The flag wins over the env.
    monkeypatch.setenv("PROMOTION_POLICY", "always")
    assert (
        cli.main(["--n-estimators", "50", "--max-depth", "5", "--run-name", "back", "--promotion-policy", "better"])
        == 0
    )
    back = _run_by_name(client, experiment, "back")
    assert back.data.params["promotion_policy"] == "better"
    assert back.data.tags["promoted"] == "true"
    assert back.data.metrics["accuracy"] > back.data.metrics["champion_accuracy"]
    assert client.get_model_version_by_alias(name, "champion").version == "4"
    current = read_current(models_dir, name)
    assert (current["version"], current["run_id"]) == ("4", back.info.run_id)


def test_a_failure_mid_run_marks_the_run_failed_and_keeps_the_champion(trainer_env, monkeypatch, mlflow_server, capsys):
    import trainer.export

    client = _client(mlflow_server.uri)
    name, models_dir = trainer_env["MODEL_NAME"], trainer_env["MODELS_DIR"]
    assert _train(monkeypatch, "--n-estimators", "20", "--max-depth", "3", "--run-name", "ok") == 0

    def broken_publish(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.export, "publish_model", broken_publish)
    assert _train(monkeypatch, "--n-estimators", "20", "--max-depth", "3", "--run-name", "broken") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("[trainer] error: run failed") and "No space left on device" in err
    assert mlflow_server.uri in err

    run = _run_by_name(client, trainer_env["MLFLOW_EXPERIMENT_NAME"], "broken")
    assert run.info.status == "FAILED"
    # The alias went back to the model that is still being served.
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert read_current(models_dir, name)["version"] == "1"


def test_first_export_failure_leaves_no_champion(trainer_env, monkeypatch, mlflow_server):
    from mlflow.exceptions import MlflowException

    import trainer.export

    monkeypatch.setattr(trainer.export, "publish_model", lambda *a, **k: 1 / 0)
    assert _train(monkeypatch, "--n-estimators", "5", "--max-depth", "2", "--run-name", "first-broken") == 1
    client = _client(mlflow_server.uri)
    assert _run_by_name(client, trainer_env["MLFLOW_EXPERIMENT_NAME"], "first-broken").info.status == "FAILED"
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(trainer_env["MODEL_NAME"], "champion")
    assert read_current(trainer_env["MODELS_DIR"], trainer_env["MODEL_NAME"]) is None


def test_mlflow_lost_mid_run_exits_non_zero_and_never_records_the_run_as_finished(tmp_path, monkeypatch, capsys):
    """The tracking server dies after the run started: bounded failure, and the run is not FINISHED."""
    import time

    from trainer_testlib import free_port, running_mlflow_server, stop_process_group

    import trainer.plots

    data_dir, port = tmp_path / "data", free_port()
    name, models_dir = "iris-outage", tmp_path / "models"
    env = {
        "MLFLOW_EXPERIMENT_NAME": "outage",
        "MODEL_NAME": name,
        "MODELS_DIR": str(models_dir),
        "PROMOTION_POLICY": "always",
        # MLflow's own client retries, kept short here (the trainer's default is 3 retries).
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    with running_mlflow_server(data_dir, port) as (server, proc):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        real_plot = trainer.plots.confusion_matrix_figure

        def server_dies_then_plot(*args, **kwargs):
            stop_process_group(proc)
            return real_plot(*args, **kwargs)

        monkeypatch.setattr(trainer.plots, "confusion_matrix_figure", server_dies_then_plot)
        started = time.monotonic()
        code = cli.main(["--n-estimators", "10", "--max-depth", "3", "--run-name", "outage"])
        elapsed = time.monotonic() - started

    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("[trainer] error: run failed") and server.uri in last
    assert elapsed < 120
    assert read_current(models_dir, name) is None

    # Back up on the same store: the run is there, but not recorded as finished; nothing registered.
    with running_mlflow_server(data_dir, port) as (server, _proc):
        client = _client(server.uri)
        run = _run_by_name(client, "outage", "outage")
        assert run.info.status in ("RUNNING", "FAILED")
        assert client.search_model_versions(f"name = '{name}'") == []


def test_the_result_file_carries_what_the_stack_outputs_show(trainer_env, monkeypatch, mlflow_server, tmp_path):
    """$TRAINER_RESULT_FILE (the Job's termination message) gets the run's result, or the reason it failed."""
    import json

    import trainer.export

    result_file = tmp_path / "termination-log"
    monkeypatch.setenv(cli.RESULT_FILE_ENV, str(result_file))
    assert _train(monkeypatch, "--n-estimators", "20", "--max-depth", "3", "--run-name", "resulted") == 0
    result = json.loads(result_file.read_text())
    run = _run_by_name(_client(mlflow_server.uri), trainer_env["MLFLOW_EXPERIMENT_NAME"], "resulted")
    assert result["status"] == "succeeded"
    assert (result["run_name"], result["n_estimators"], result["max_depth"]) == ("resulted", 20, 3)
    assert result["run_id"] == run.info.run_id
    assert result["accuracy"] == round(run.data.metrics["accuracy"], 4)
    assert result["f1_macro"] == round(run.data.metrics["f1_macro"], 4)
    assert (result["version"], result["promoted"], result["promotion_reason"]) == ("1", True, "policy 'always'")
    assert result["run_url"].startswith(mlflow_server.uri) and run.info.run_id in result["run_url"]
    assert len(result_file.read_bytes()) <= cli.RESULT_MAX_BYTES

    monkeypatch.setattr(trainer.export, "publish_model", lambda *a, **k: 1 / 0)
    assert _train(monkeypatch, "--n-estimators", "5", "--max-depth", "2", "--run-name", "broken") == 1
    failed = json.loads(result_file.read_text())
    assert failed["status"] == "failed" and failed["run_name"] == "broken"
    assert "ZeroDivisionError" in failed["reason"]
