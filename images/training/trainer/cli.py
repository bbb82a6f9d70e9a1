"""``python -m trainer``: train, log to MLflow, register, promote and export the Iris classifier.

Flags win over environment variables, which win over defaults (docs/interfaces.md):

    --n-estimators / N_ESTIMATORS (100)    --max-depth / MAX_DEPTH (5)    --run-name / RUN_NAME (baseline)
    --promotion-policy / PROMOTION_POLICY (always | better; default always)
    MLFLOW_TRACKING_URI (required)  MLFLOW_EXPERIMENT_NAME (iris-classification)
    MODELS_DIR (/data/models)       MODEL_NAME (iris-classifier)
    MLFLOW_CONNECT_RETRIES (8)      MLFLOW_CONNECT_BACKOFF_SECONDS (1.0, doubled per attempt, capped at 30)

Exit codes: 0 the run finished (promoted or not); 2 bad configuration; 3 the tracking server is
unreachable; 1 any other failure (the MLflow run, if one was started, is marked FAILED).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from trainer.forest_npz import DEFAULT_TABLE_MAX_CELLS, MAX_TABLE_MAX_CELLS
from trainer.model import DEFAULT_SEED, TEST_SIZE

ALIAS = "champion"
POLICIES = ("always", "better")
DEFAULTS = {
    "N_ESTIMATORS": "100",
    "MAX_DEPTH": "5",
    "RUN_NAME": "baseline",
    "PROMOTION_POLICY": "always",
    "MLFLOW_EXPERIMENT_NAME": "iris-classification",
    "MODELS_DIR": "/data/models",
    "MODEL_NAME": "iris-classifier",
    "MLFLOW_CONNECT_RETRIES": "8",
    "MLFLOW_CONNECT_BACKOFF_SECONDS": "1.0",
    "TABLE_MAX_CELLS": str(DEFAULT_TABLE_MAX_CELLS),
}
MAX_BACKOFF_SECONDS = 30.0
MAX_RUN_NAME = 250
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3


class ConfigError(ValueError):
    """A flag or environment variable has a value the trainer cannot use."""


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server did not answer within the retry budget."""


@dataclass(frozen=True)
class Config:
    n_estimators: int
    max_depth: int
    run_name: str
    promotion_policy: str
    tracking_uri: str
    experiment_name: str
    models_dir: Path
    model_name: str
    connect_retries: int
    connect_backoff: float
    table_max_cells: int = DEFAULT_TABLE_MAX_CELLS


def log(message: str) -> None:
    print(f"[trainer] {message}", flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"must be an integer >= 1, got {text!r}")
    return value


def _flag_int(text: str) -> int:
    try:
        return _positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_name(text: str) -> str:
    name = text.strip()
    if not name or len(name) > MAX_RUN_NAME or any(ord(c) < 32 for c in name):
        raise ValueError(f"must be 1-{MAX_RUN_NAME} printable characters, got {text!r}")
    return name


def _flag_run_name(text: str) -> str:
    try:
        return _run_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train a RandomForest on Iris, log it to MLflow, register, promote and export it.",
        epilog="Each flag falls back to the environment variable in brackets. Also read: MLFLOW_TRACKING_URI "
        "(required), MLFLOW_EXPERIMENT_NAME, MODELS_DIR, MODEL_NAME, MLFLOW_CONNECT_RETRIES, "
        "MLFLOW_CONNECT_BACKOFF_SECONDS, TABLE_MAX_CELLS.",
    )
    parser.add_argument("--n-estimators", type=_flag_int, help="trees in the forest, >= 1 [N_ESTIMATORS, 100]")
    parser.add_argument("--max-depth", type=_flag_int, help="maximum tree depth, >= 1 [MAX_DEPTH, 5]")
    parser.add_argument("--run-name", type=_flag_run_name, help="MLflow run name [RUN_NAME, baseline]")
    parser.add_argument(
        "--promotion-policy",
        choices=POLICIES,
        help="always promote, or only when it beats the current champion [PROMOTION_POLICY, always]",
    )
    return parser


def _env(env: Mapping[str, str], key: str) -> str:
    value = env.get(key, "")
    return value if value.strip() else DEFAULTS[key]


def _from_env(env: Mapping[str, str], key: str, convert: Callable[[str], object]):
    raw = _env(env, key)
    try:
        return convert(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} {exc}") from None


def load_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> Config:
    """Parse flags with environment fallbacks. argparse exits(2) on a bad flag; ConfigError for the rest."""
    args = build_parser().parse_args(argv)

    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise ConfigError(
            "MLFLOW_TRACKING_URI is not set; set it to the tracking server, e.g. http://mlflow-service:5000"
        )
    scheme = urlparse(uri).scheme
    if scheme not in ("http", "https") or not urlparse(uri).netloc:
        raise ConfigError(f"MLFLOW_TRACKING_URI must be an http:// or https:// URL with a host, got {uri!r}")

    policy = args.promotion_policy or _env(env, "PROMOTION_POLICY").strip().lower()
    if policy not in POLICIES:
        raise ConfigError(
            f"PROMOTION_POLICY must be one of {', '.join(POLICIES)}, got {_env(env, 'PROMOTION_POLICY')!r}"
        )

    model_name = _env(env, "MODEL_NAME").strip()
    if not _MODEL_NAME.match(model_name):
        raise ConfigError(
            f"MODEL_NAME must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            f"got {model_name!r}"
        )

    def retries(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be an integer between 1 and 100, got {text!r}") from None
        if not 1 <= value <= 100:
            raise ValueError(f"must be an integer between 1 and 100, got {text!r}")
        return value

    def backoff(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(
                f"must be a number of seconds between 0 and {MAX_BACKOFF_SECONDS:g}, got {text!r}"
            ) from None
        if not 0 <= value <= MAX_BACKOFF_SECONDS:
            raise ValueError(f"must be a number of seconds between 0 and {MAX_BACKOFF_SECONDS:g}, got {text!r}")
        return value

    def table_cells(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be an integer between 0 and {MAX_TABLE_MAX_CELLS}, got {text!r}") from None
        if not 0 <= value <= MAX_TABLE_MAX_CELLS:
            raise ValueError(f"must be an integer between 0 and {MAX_TABLE_MAX_CELLS}, got {text!r}")
        return value

    experiment = _env(env, "MLFLOW_EXPERIMENT_NAME").strip()
    return Config(
        n_estimators=args.n_estimators or _from_env(env, "N_ESTIMATORS", _positive_int),
        max_depth=args.max_depth or _from_env(env, "MAX_DEPTH", _positive_int),
        run_name=args.run_name or _from_env(env, "RUN_NAME", _run_name),
        promotion_policy=policy,
        tracking_uri=uri.rstrip("/"),
        experiment_name=experiment,
        models_dir=Path(_env(env, "MODELS_DIR").strip()),
        model_name=model_name,
        connect_retries=_from_env(env, "MLFLOW_CONNECT_RETRIES", retries),
        connect_backoff=_from_env(env, "MLFLOW_CONNECT_BACKOFF_SECONDS", backoff),
        table_max_cells=_from_env(env, "TABLE_MAX_CELLS", table_cells),
    )


def check_models_dir(models_dir: Path) -> None:
    """Fail before training when the export target cannot be written."""
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"MODELS_DIR {str(models_dir)!r} cannot be created: {exc.strerror or exc}") from None
    if not os.access(models_dir, os.W_OK | os.X_OK):
        raise ConfigError(
            f"MODELS_DIR {str(models_dir)!r} is not writable by uid {os.getuid()} "
            "(the stack chowns the storage directory to 10001:10001)"
        )


def _short_error(exc: BaseException) -> str:
    """'ConnectionError: [Errno 111] Connection refused' instead of urllib3's nested repr."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        text = errno.group(0).strip()
    elif len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}"


def wait_for_tracking_server(
    uri: str, retries: int, backoff: float, sleep: Callable[[float], None] = time.sleep
) -> None:
    """GET <uri>/health until it answers 200: ``retries`` attempts, backoff doubling up to 30 s."""
    import requests

    started = time.monotonic()
    delay = backoff
    last_error = "no attempt made"
    for attempt in range(1, retries + 1):
        try:
            response = requests.get(f"{uri}/health", timeout=5)
            if response.status_code == 200:
                if attempt > 1:
                    log(f"MLflow at {uri} answered on attempt {attempt}")
                return
            last_error = f"HTTP {response.status_code} from /health"
        except requests.RequestException as exc:
            last_error = _short_error(exc)
        if attempt < retries:
            log(f"MLflow at {uri} not reachable (attempt {attempt}/{retries}: {last_error}); retrying in {delay:g}s")
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
    elapsed = time.monotonic() - started
    raise TrackingUnavailable(
        f"MLflow tracking server at {uri} is unreachable after {retries} attempts over {elapsed:.0f}s "
        f"(last error: {last_error}). Check MLFLOW_TRACKING_URI and that the mlflow-server Deployment is ready."
    )


def _bound_mlflow_client_retries(env: dict[str, str]) -> None:
    # MLflow's own HTTP client retries for ~4 minutes by default; keep a failure mid-run bounded.
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")


def describe_compiled(compiled: dict) -> str:
    """One log line: how serving will answer with this model (table or tree walk) and why."""
    grid = f"{compiled['table_cells']:,} cells"
    if compiled["table"]:
        return (
            f"model.npz: decision-region table of {grid} ({compiled['table_distinct_rows']:,} distinct "
            f"probability rows) over {compiled['n_trees']} trees"
        )
    return (
        f"model.npz: no table ({grid} > TABLE_MAX_CELLS={compiled['table_max_cells']:,}); serving walks the "
        f"{compiled['n_trees']} trees ({compiled['n_nodes']:,} nodes, depth {compiled['max_depth']})"
    )


def _is_better(candidate: dict[str, float], champion: dict[str, float]) -> bool:
    """Strictly better accuracy, or equal accuracy and strictly better macro F1."""
    return (candidate["accuracy"], candidate["f1_macro"]) > (champion["accuracy"], champion["f1_macro"])


def run(config: Config) -> dict:
    """Train, log, register, promote and export. Returns a summary dict."""
    check_models_dir(config.models_dir)
    log(f"checking MLflow at {config.tracking_uri}")
    wait_for_tracking_server(config.tracking_uri, config.connect_retries, config.connect_backoff)

    _bound_mlflow_client_retries(os.environ)
    import mlflow
    import mlflow.sklearn
    import numpy as np
    import sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from trainer import plots, tracking
    from trainer.export import make_metadata, publish_model
    from trainer.model import evaluate, train_model

    mlflow.set_tracking_uri(config.tracking_uri)
    experiment = mlflow.set_experiment(config.experiment_name)
    client = MlflowClient(config.tracking_uri)
    # Kind tag (the UI opens the experiment on its runs), description and the saved "Training metrics" view.
    tracking.prepare_experiment(
        client, client.get_experiment(experiment.experiment_id), config.model_name, int(time.time() * 1000)
    )
    log(f"experiment {config.experiment_name!r} (id {experiment.experiment_id})")
    log(f"runs with their metrics: {tracking.runs_view_url(config.tracking_uri, experiment.experiment_id)}")

    log(f"training RandomForest n_estimators={config.n_estimators} max_depth={config.max_depth} on Iris")
    result = train_model(config.n_estimators, config.max_depth, seed=DEFAULT_SEED)
    log(f"held-out accuracy {result.metrics['accuracy']:.4f}, macro F1 {result.metrics['f1_macro']:.4f}")

    summary: dict = {
        "status": "succeeded",
        "run_name": config.run_name,
        "n_estimators": config.n_estimators,
        "max_depth": config.max_depth,
        "accuracy": round(float(result.metrics["accuracy"]), 4),
        "f1_macro": round(float(result.metrics["f1_macro"]), 4),
        "promoted": False,
        "exported_to": None,
    }
    # The context manager ends the run FINISHED only when the block completes; any exception
    # inside marks it FAILED, so a run is never recorded as finished halfway.
    with mlflow.start_run(run_name=config.run_name) as active:
        run_id = active.info.run_id
        summary["run_id"] = run_id
        summary["experiment_id"] = experiment.experiment_id
        summary["run_url"] = tracking.run_url(config.tracking_uri, experiment.experiment_id, run_id)
        log(f"MLflow run {run_id} ({config.run_name!r}) started: {summary['run_url']}")
        params = {
            "n_estimators": config.n_estimators,
            "max_depth": config.max_depth,
            "seed": DEFAULT_SEED,
            "test_size": TEST_SIZE,
            "promotion_policy": config.promotion_policy,
        }
        mlflow.log_params(params)
        mlflow.log_metrics(result.metrics)
        mlflow.set_tags({"model_name": config.model_name, "dataset": "iris (scikit-learn bundled)"})
        # The splits as dataset inputs: the Datasets column, the run's lineage, and the digests below.
        digests = tracking.log_split_datasets(result)
        log("logged inputs " + ", ".join(f"{name} (digest {digest})" for name, digest in digests.items()))

        for artifact, fig in (
            ("plots/confusion_matrix.png", plots.confusion_matrix_figure(result.confusion, result.class_names)),
            (
                "plots/feature_importance.png",
                plots.feature_importance_figure(result.model.feature_importances_, result.feature_names),
            ),
        ):
            mlflow.log_figure(fig, artifact)
            plots.close(fig)
        log("logged params, metrics, plots/confusion_matrix.png and plots/feature_importance.png")

        signature = infer_signature(result.X_train, result.model.predict(result.X_train))
        info = mlflow.sklearn.log_model(
            result.model,
            name="model",
            signature=signature,
            input_example=result.X_train[:3],
            registered_model_name=config.model_name,
            # skops (MLflow's default safe format) must be told the forest's node storage type.
            skops_trusted_types=["sklearn.tree._tree.Tree"],
            pip_requirements=[
                f"skops=={importlib.metadata.version('skops')}",
                f"scikit-learn=={sklearn.__version__}",
                f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )
        version = str(info.registered_model_version)
        summary["version"] = version
        log(f"model logged and registered as {config.model_name!r} version {version}")

        def describe_version(promotion: str | None = None) -> None:
            description = tracking.version_description(
                run_name=config.run_name,
                run_id=run_id,
                params=params,
                metrics=result.metrics,
                datasets=digests,
                promotion=promotion,
            )
            client.update_model_version(config.model_name, version, description=description)

        describe_version()
        if not (client.get_registered_model(config.model_name).description or "").strip():
            client.update_registered_model(config.model_name, description=tracking.MODEL_DESCRIPTION)

        previous = None
        try:
            previous = client.get_model_version_by_alias(config.model_name, ALIAS)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(exc).lower():
                raise

        if config.promotion_policy == "always":
            promote = True
            reason = "policy 'always'"
        elif previous is None:
            promote = True
            reason = f"policy 'better' and no {ALIAS!r} yet"
        else:
            champion_model = mlflow.sklearn.load_model(f"models:/{config.model_name}/{previous.version}")
            champion_metrics = evaluate(champion_model, result.X_test, result.y_test, result.class_names)
            mlflow.log_metrics({f"champion_{k}": v for k, v in champion_metrics.items()})
            promote = _is_better(result.metrics, champion_metrics)
            comparison = (
                f"accuracy {result.metrics['accuracy']:.4f} vs {champion_metrics['accuracy']:.4f}, "
                f"macro F1 {result.metrics['f1_macro']:.4f} vs {champion_metrics['f1_macro']:.4f} "
                f"(champion version {previous.version})"
            )
            reason = f"policy 'better': {'beats' if promote else 'does not beat'} the champion: {comparison}"

        client.set_model_version_tag(config.model_name, version, "promoted", str(promote).lower())
        describe_version(f"{'promoted to' if promote else 'not promoted to'} {ALIAS!r} ({reason})")
        mlflow.set_tag(  # the run's description on its page
            tracking.NOTE_TAG,
            f"n_estimators={config.n_estimators}, max_depth={config.max_depth}: accuracy "
            f"{result.metrics['accuracy']:.4f}, macro F1 {result.metrics['f1_macro']:.4f}; registered as "
            f"{config.model_name} version {version}, {'promoted to' if promote else 'not promoted to'} {ALIAS!r}.",
        )
        mlflow.set_tags({"promoted": str(promote).lower(), "model_version": version, "promotion_reason": reason})
        summary["promotion_reason"] = reason
        if not promote:
            log(f"version {version} NOT promoted: {reason}; {ALIAS!r} stays at version {previous.version}")
        else:
            client.set_registered_model_alias(config.model_name, ALIAS, version)
            summary["promoted"] = True
            log(f"version {version} promoted to {ALIAS!r} ({reason})")
            try:
                metadata = make_metadata(
                    result, version=version, run_id=run_id, run_name=config.run_name, name=config.model_name
                )
                version_dir = publish_model(
                    config.models_dir, config.model_name, result.model, metadata, table_max_cells=config.table_max_cells
                )
            except BaseException:
                # Keep the alias and the served model in agreement: put the alias back.
                try:
                    if previous is not None:
                        client.set_registered_model_alias(config.model_name, ALIAS, previous.version)
                    else:
                        client.delete_registered_model_alias(config.model_name, ALIAS)
                except Exception as rollback_error:  # noqa: BLE001 - reported, the original error wins
                    log(f"could not restore alias {ALIAS!r}: {rollback_error}")
                raise
            summary["exported_to"] = str(version_dir)
            mlflow.set_tag("exported_to", str(version_dir))
            log(f"exported to {version_dir} and published {config.models_dir / config.model_name / 'current.json'}")
            log(describe_compiled(json.loads((version_dir / "metadata.json").read_text())["compiled"]))
    log(
        f"run {run_id} finished: version {version} "
        + (f"promoted and exported to {summary['exported_to']}" if summary["promoted"] else "registered, not promoted")
    )
    return summary


#: The variable naming the file that receives the run's result as one JSON object: the Job sets it to
#: the container's termination message (/dev/termination-log), which Kubernetes keeps in the pod's
#: status whatever happens to the logs, and `pulumi up` turns into the stack output trainingRuns.
RESULT_FILE_ENV = "TRAINER_RESULT_FILE"
#: Kubernetes keeps at most 4096 bytes of a termination message.
RESULT_MAX_BYTES = 4096


def write_result(env: Mapping[str, str], result: dict) -> None:
    """Writes `result` as JSON to $TRAINER_RESULT_FILE when set (never fails the run)."""
    path = env.get(RESULT_FILE_ENV, "").strip()
    if not path:
        return
    text = json.dumps(result, sort_keys=True)
    if len(text.encode()) > RESULT_MAX_BYTES:
        text = json.dumps({k: result[k] for k in ("status", "run_name", "reason") if k in result})[:RESULT_MAX_BYTES]
    try:
        Path(path).write_text(text)
    except OSError as exc:
        log(f"could not write the result to {path}: {exc}")


def _fail(env: Mapping[str, str], message: str, config: Config | None = None) -> None:
    print(f"[trainer] error: {message}", file=sys.stderr, flush=True)
    write_result(env, {"status": "failed", "reason": message, **({"run_name": config.run_name} if config else {})})


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        _fail(os.environ, str(exc))
        return EXIT_CONFIG
    try:
        summary = run(config)
    except ConfigError as exc:
        _fail(os.environ, str(exc), config)
        return EXIT_CONFIG
    except TrackingUnavailable as exc:
        _fail(os.environ, str(exc), config)
        return EXIT_UNREACHABLE
    except Exception as exc:  # noqa: BLE001 - one-line reason for `kubectl logs`, details below it
        import traceback

        traceback.print_exc(file=sys.stderr)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(os.environ, f"run failed ({type(exc).__name__}: {reason}); MLflow at {config.tracking_uri}", config)
        return EXIT_FAILED
    write_result(os.environ, summary)
    return 0
