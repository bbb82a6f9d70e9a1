"""What the trainer leaves in MLflow for the UI, checked through the MLflow client against the real server:
experiment kind and saved runs view, dataset inputs, model and model-version descriptions."""

from __future__ import annotations

import json

from trainer import cli, tracking
from trainer.model import FEATURE_NAMES, train_model


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _run(client, experiment_id, run_name):
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1
    return runs[0]


def test_experiment_is_a_training_experiment_with_a_metrics_view(trainer_env, mlflow_server, capsys):
    assert cli.main(["--n-estimators", "5", "--max-depth", "2", "--run-name", "first"]) == 0
    out = capsys.readouterr().out
    client = _client(mlflow_server.uri)
    experiment = client.get_experiment_by_name(trainer_env["MLFLOW_EXPERIMENT_NAME"])
    tags = experiment.tags

    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert trainer_env["MODEL_NAME"] in tags["mlflow.note.content"] and "champion" in tags["mlflow.note.content"]

    envelope = json.loads(tags["mlflow.sharedViewState.training-metrics"])
    assert envelope["name"] == "Training metrics" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["selectedColumns"][:4] == [
        "metrics.`accuracy`",
        "metrics.`f1_macro`",
        "params.`n_estimators`",
        "params.`max_depth`",
    ]
    assert "attributes.`Dataset`" in state["selectedColumns"] and "attributes.`Models`" in state["selectedColumns"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`accuracy`", False)

    # The links the trainer prints open the runs (machine-learning workflow), the view and the run.
    eid = experiment.experiment_id
    run = _run(client, eid, "first")
    assert (
        f"{mlflow_server.uri}/#/experiments/{eid}/runs?workflowType=machine_learning"
        "&viewStateShareKey=training-metrics" in out
    )
    assert f"{mlflow_server.uri}/#/experiments/{eid}/runs/{run.info.run_id}?workflowType=machine_learning" in out

    # A second run keeps what a user edited (note, view) and puts the kind back if it was changed.
    client.set_experiment_tag(eid, "mlflow.note.content", "my own notes")
    client.set_experiment_tag(
        eid,
        "mlflow.sharedViewState.training-metrics",
        tags["mlflow.sharedViewState.training-metrics"].replace("Training metrics", "Mine"),
    )
    client.set_experiment_tag(eid, "mlflow.experimentKind", "genai_development")
    assert cli.main(["--n-estimators", "5", "--max-depth", "2", "--run-name", "second"]) == 0
    tags = client.get_experiment(eid).tags
    assert tags["mlflow.note.content"] == "my own notes"
    assert json.loads(tags["mlflow.sharedViewState.training-metrics"])["name"] == "Mine"
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_splits_are_logged_as_dataset_inputs(trainer_env, mlflow_server):
    assert cli.main(["--n-estimators", "7", "--max-depth", "3", "--run-name", "data"]) == 0
    client = _client(mlflow_server.uri)
    experiment = client.get_experiment_by_name(trainer_env["MLFLOW_EXPERIMENT_NAME"])
    run = client.get_run(_run(client, experiment.experiment_id, "data").info.run_id)

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"iris-train", "iris-test"}
    # Same data, same digest: computed here from the same split, independently of the run.
    expected = {d.name: d for d, _ in tracking.split_datasets(train_model(7, 3))}
    for name, rows, context in (("iris-train", 105, "training"), ("iris-test", 45, "testing")):
        dataset = inputs[name].dataset
        assert {t.key: t.value for t in inputs[name].tags}["mlflow.data.context"] == context
        assert dataset.digest == expected[name].digest and len(dataset.digest) >= 8
        assert dataset.source_type == "local"
        assert json.loads(dataset.source)["uri"].endswith("sklearn/datasets/data/iris.csv")
        schema = json.loads(dataset.schema)["mlflow_colspec"]
        assert [c["name"] for c in schema] == [*FEATURE_NAMES, "target"]
        assert [c["type"] for c in schema] == ["double"] * 4 + ["long"]
        assert json.loads(dataset.profile)["num_rows"] == rows
    assert inputs["iris-train"].dataset.digest != inputs["iris-test"].dataset.digest

    # The dataset source loads back as the rows' origin (scikit-learn's bundled CSV).
    import mlflow.data

    loaded = mlflow.data.get_source(inputs["iris-train"])
    assert loaded.to_dict()["uri"] == tracking.iris_source_uri()


def test_model_and_versions_carry_descriptions(trainer_env, mlflow_server):
    client = _client(mlflow_server.uri)
    name = trainer_env["MODEL_NAME"]
    assert cli.main(["--n-estimators", "9", "--max-depth", "3", "--run-name", "described"]) == 0
    assert (
        cli.main(["--n-estimators", "1", "--max-depth", "1", "--run-name", "stump", "--promotion-policy", "better"])
        == 0
    )

    model = client.get_registered_model(name)
    assert "Iris" in model.description and "champion" in model.description
    experiment = client.get_experiment_by_name(trainer_env["MLFLOW_EXPERIMENT_NAME"])

    for version, run_name, n, depth, promoted in (("1", "described", 9, 3, True), ("2", "stump", 1, 1, False)):
        run = _run(client, experiment.experiment_id, run_name)
        text = client.get_model_version(name, version).description
        metrics = run.data.metrics
        assert f"Run `{run_name}` ({run.info.run_id})" in text
        assert f"accuracy {metrics['accuracy']:.4f}, f1_macro {metrics['f1_macro']:.4f}" in text
        assert f"n_estimators={n}, max_depth={depth}, seed=42, test_size=0.3" in text
        for key in ("precision_setosa", "recall_virginica"):
            assert f"| {key} | {metrics[key]:.4f} |" in text
        for dataset in client.get_run(run.info.run_id).inputs.dataset_inputs:
            assert f"{dataset.dataset.name} (digest {dataset.dataset.digest})" in text
        if promoted:
            assert "Promotion: promoted to 'champion' (policy 'always')." in text
        else:
            assert "Promotion: not promoted to 'champion' (policy 'better': does not beat the champion" in text
        note = run.data.tags["mlflow.note.content"]
        assert f"accuracy {metrics['accuracy']:.4f}" in note and f"version {version}" in note


def test_version_description_orders_the_key_metrics_first():
    text = tracking.version_description(
        run_name="r",
        run_id="abc",
        params={"n_estimators": 3, "max_depth": 2},
        metrics={"recall_a": 0.5, "f1_macro": 0.75, "accuracy": 1.0},
    )
    lines = text.splitlines()
    assert lines[0] == "Run `r` (abc): accuracy 1.0000, f1_macro 0.7500."
    assert lines[2] == "Parameters: n_estimators=3, max_depth=2."
    assert lines[-3:] == ["| accuracy | 1.0000 |", "| f1_macro | 0.7500 |", "| recall_a | 0.5000 |"]
    assert "Promotion" not in text and "Data:" not in text
