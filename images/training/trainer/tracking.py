"""What the trainer writes into MLflow beyond params and metrics, so the UI reads as a data scientist expects.

- The experiment is tagged ``mlflow.experimentKind=custom_model_development`` ("Machine learning"),
  MLflow 3's record of what kind of experiment this is; without it the UI guesses and, for an experiment
  of unknown kind, opens the GenAI overview/traces view. MLflow 3.17.2's UI routes by its *workflow type*
  (the sidebar switch "GenAI | Model training", kept per browser, default GenAI), which a
  ``?workflowType=machine_learning`` URL parameter overrides: every link the trainer prints carries it,
  so it opens on the Runs tab whatever the browser last used.
- A saved runs view (experiment tag ``mlflow.sharedViewState.<id>``, the format of the UI's "Save view")
  with the columns that matter first (accuracy, macro F1, n_estimators, max_depth), then models and
  datasets, sorted by accuracy. MLflow keeps the default column set per browser (localStorage): there is
  no server-side default, so the view is offered in the Runs tab's view selector and by a direct link.
- The training and held-out splits as dataset inputs (name, digest, schema, source, profile): the runs
  list's Dataset column and the run page's inputs show them.
- The registered model and each model version get a description (params, metrics, the run, the data).

Every function imports MLflow lazily; ``version_description`` and ``runs_view_state`` are pure.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
SAVED_VIEW_ID = "training-metrics"
SAVED_VIEW_NAME = "Training metrics"
# The metrics a user compares runs by; listed first in the saved view and in descriptions.
KEY_METRICS = ("accuracy", "f1_macro")
KEY_PARAMS = ("n_estimators", "max_depth")
TRAIN_DATASET = "iris-train"
TEST_DATASET = "iris-test"

EXPERIMENT_NOTE = (
    "Iris classifier training runs of the ops-demo stack (`pulumi config set nEstimators ...` then "
    "`pulumi up`). Each run: a RandomForest on scikit-learn's bundled Iris (70/30 stratified split, "
    "seed 42), params `n_estimators`, `max_depth`; metrics `accuracy`, `f1_macro`, per-class precision "
    "and recall; plots under `plots/`; the model registered as `{model}`, promoted with the alias "
    '`champion` (what serving answers with). The view "Training metrics" shows the metric columns.'
)
MODEL_DESCRIPTION = (
    "RandomForest classifier for Iris species (setosa, versicolor, virginica) from 4 features "
    "(sepal_length, sepal_width, petal_length, petal_width), trained by the ops-demo trainer. "
    "The alias `champion` marks the version the iris-serving Deployment answers with."
)


def _column(kind: str, key: str) -> str:
    # The UI's canonical column key: makeCanonicalSortKey(type, name) = type + ".`" + name + "`".
    return f"{kind}.`{key}`"


def runs_view_state() -> dict:
    """The runs-table state of the saved view: search facets plus UI state, as the UI saves them."""
    key_columns = [*(_column("metrics", m) for m in KEY_METRICS), *(_column("params", p) for p in KEY_PARAMS)]
    return {
        "orderByKey": _column("metrics", "accuracy"),
        "orderByAsc": False,
        "selectedColumns": [*key_columns, _column("attributes", "Models"), _column("attributes", "Dataset")],
        # Right after the run name (its column id is the run-name tag), before the wide Dataset column.
        "columnOrder": [_column("tags", "mlflow.runName"), *key_columns],
    }


ML_WORKFLOW = "workflowType=machine_learning"


def runs_view_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs, in the "Training metrics" view, whatever workflow the browser last used."""
    base = tracking_uri.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_WORKFLOW}&viewStateShareKey={SAVED_VIEW_ID}"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{ML_WORKFLOW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_WORKFLOW}"


def prepare_experiment(client, experiment, model_name: str, now_ms: int) -> None:
    """Kind tag (always: the trainer owns this experiment), note and saved view (only when absent)."""
    tags = dict(experiment.tags or {})
    experiment_id = experiment.experiment_id
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not tags.get(NOTE_TAG, "").strip():
        client.set_experiment_tag(experiment_id, NOTE_TAG, EXPERIMENT_NOTE.format(model=model_name))
    view_key = SAVED_VIEW_PREFIX + SAVED_VIEW_ID
    if view_key not in tags:
        envelope = {
            "name": SAVED_VIEW_NAME,
            "createdAt": now_ms,
            "updatedAt": now_ms,
            "state": json.dumps(runs_view_state()),
        }
        client.set_experiment_tag(experiment_id, view_key, json.dumps(envelope))


def _split_frame(X, y, feature_names):
    import pandas as pd

    frame = pd.DataFrame(X, columns=list(feature_names))
    frame["target"] = y
    return frame


def iris_source_uri() -> str:
    """The CSV the rows come from: scikit-learn's bundled copy of Iris (no download)."""
    import importlib.resources

    return Path(str(importlib.resources.files("sklearn.datasets.data") / "iris.csv")).as_uri()


def split_datasets(result) -> list[tuple[object, str]]:
    """(dataset, context) for the training and held-out splits, as mlflow.data PandasDatasets."""
    import mlflow.data

    source = iris_source_uri()
    out = []
    for name, context, X, y in (
        (TRAIN_DATASET, "training", result.X_train, result.y_train),
        (TEST_DATASET, "testing", result.X_test, result.y_test),
    ):
        with _quiet_schema_hints():
            dataset = mlflow.data.from_pandas(
                _split_frame(X, y, result.feature_names), source=source, targets="target", name=name
            )
        out.append((dataset, context))
    return out


def log_split_datasets(result) -> dict[str, str]:
    """Log both splits as inputs of the active run; returns {dataset name: digest}."""
    import mlflow

    digests = {}
    for dataset, context in split_datasets(result):
        with _quiet_schema_hints():  # the schema is inferred again when the input is logged
            mlflow.log_input(dataset, context=context)
        digests[dataset.name] = dataset.digest
    return digests


@contextmanager
def _quiet_schema_hints() -> Iterator[None]:
    """MLflow's UserWarnings here are noise: "integer column(s) cannot represent missing values" (class
    ids are never missing) and "can be interpreted in multiple ways: LocalArtifactDatasetSource,
    LocalArtifactDatasetSource" (one kind, registered twice); MLflow's digest code calls pandas in a way
    pandas 4 deprecates (not ours to change)."""
    with warnings.catch_warnings():
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def version_description(
    *,
    run_name: str,
    run_id: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    datasets: Mapping[str, str] | None = None,
    promotion: str | None = None,
) -> str:
    """Markdown for a model version: the run, its parameters and metrics (key ones first), the data."""
    ordered = [m for m in KEY_METRICS if m in metrics] + sorted(m for m in metrics if m not in KEY_METRICS)
    headline = ", ".join(f"{m} {_fmt(metrics[m])}" for m in KEY_METRICS if m in metrics)
    param_text = ", ".join(f"{k}={v}" for k, v in params.items())
    lines = [
        f"Run `{run_name}` ({run_id}): {headline}.",
        "",
        f"Parameters: {param_text}.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {m} | {_fmt(metrics[m])} |" for m in ordered),
    ]
    if datasets:
        lines += ["", "Data: " + ", ".join(f"{name} (digest {digest})" for name, digest in datasets.items()) + "."]
    if promotion:
        lines += ["", f"Promotion: {promotion}."]
    return "\n".join(lines)
