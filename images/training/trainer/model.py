"""Training and evaluation of the Iris classifier (numpy and scikit-learn only).

This module never imports MLflow or matplotlib, so the serving tests can use it to fit real
models without the tracking stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score
from sklearn.model_selection import train_test_split

FEATURE_NAMES: list[str] = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASS_NAMES: list[str] = ["setosa", "versicolor", "virginica"]
TEST_SIZE = 0.3
DEFAULT_SEED = 42


@dataclass(frozen=True)
class Split:
    """The Iris data split into a stratified train and held-out test set."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass
class TrainResult:
    """A fitted model with its held-out evaluation."""

    model: RandomForestClassifier
    metrics: dict[str, float]
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    feature_names: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    params: dict[str, int] = field(default_factory=dict)
    confusion: np.ndarray | None = None


def _check_positive_int(name: str, value: object) -> int:
    # bool is an int subclass; True is not a tree count.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def load_split(seed: int = DEFAULT_SEED, test_size: float = TEST_SIZE) -> Split:
    """Iris from scikit-learn's bundled copy (no download), stratified split with a fixed seed."""
    data = load_iris()
    X = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    return Split(X_train, X_test, y_train, y_test)


def evaluate(model, X_test: np.ndarray, y_test: np.ndarray, class_names: list[str] | None = None) -> dict[str, float]:
    """Accuracy, macro F1 and per-class precision and recall on a held-out set.

    Works with anything that has ``predict`` (a scikit-learn estimator or an MLflow pyfunc model).
    """
    names = list(class_names or CLASS_NAMES)
    y_pred = np.asarray(model.predict(X_test)).astype(np.int64).ravel()
    labels = list(range(len(names)))
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(y_test, y_pred)),
        "f1_macro": float(f1_score(y_test, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    precision = precision_score(y_test, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_test, y_pred, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(names):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
    return metrics


def train_model(n_estimators: int, max_depth: int, seed: int = DEFAULT_SEED) -> TrainResult:
    """Fit a RandomForestClassifier on the Iris training split and evaluate it on the test split."""
    n_estimators = _check_positive_int("n_estimators", n_estimators)
    max_depth = _check_positive_int("max_depth", max_depth)
    split = load_split(seed)
    model = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=1)
    model.fit(split.X_train, split.y_train)
    metrics = evaluate(model, split.X_test, split.y_test)
    confusion = confusion_matrix(split.y_test, model.predict(split.X_test), labels=list(range(len(CLASS_NAMES))))
    return TrainResult(
        model=model,
        metrics=metrics,
        X_train=split.X_train,
        X_test=split.X_test,
        y_train=split.y_train,
        y_test=split.y_test,
        params={"n_estimators": n_estimators, "max_depth": max_depth, "seed": seed},
        confusion=confusion,
    )
