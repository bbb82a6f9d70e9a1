"""The compiler of model.npz (trainer/forest_npz.py): exact float32 semantics, the table, what it refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from trainer.forest_npz import (
    MAX_TABLE_MAX_CELLS,
    UnsupportedModel,
    compile_model,
    float32_floor,
    lookup,
    npz_bytes,
)

IRIS = load_iris()


def test_float32_floor_is_the_largest_float32_not_above():
    rng = np.random.default_rng(1)
    t = np.concatenate(
        [
            rng.uniform(-10, 10, 5000),
            rng.uniform(0, 10, 1000).astype(np.float32).astype(np.float64),  # exactly representable
            [0.0, -0.0, 1e-45, -1e-45, 3.5e38, 1e39, -1e39, 2.45, 0.8],
        ]
    )
    floor = float32_floor(t)
    assert floor.dtype == np.float32
    assert (floor.astype(np.float64) <= t).all()
    with np.errstate(over="ignore"):  # the float32 above the largest one is inf
        assert (np.nextafter(floor, np.float32(np.inf)).astype(np.float64) > t).all()


def rows_around_thresholds(model, n=3000):
    """Random Iris-range rows, half of their values moved onto a split threshold or the float just above."""
    rng = np.random.default_rng(2)
    lo, hi = IRIS.data.min(axis=0), IRIS.data.max(axis=0)
    rows = rng.uniform(lo, hi, size=(n, 4))
    estimators = getattr(model, "estimators_", [model])
    for i in range(0, n, 2):
        tree = estimators[rng.integers(len(estimators))].tree_
        inner = np.flatnonzero(tree.children_left >= 0)
        node = inner[rng.integers(len(inner))]
        t = tree.threshold[node]
        rows[i, tree.feature[node]] = (t, np.nextafter(t, np.inf), float(float32_floor(np.array([t]))[0]))[i % 3]
    return rows


@pytest.mark.parametrize(
    "model",
    [
        RandomForestClassifier(n_estimators=40, max_depth=6, random_state=0),
        ExtraTreesClassifier(n_estimators=12, max_depth=5, random_state=0),  # random thresholds, not midpoints
        DecisionTreeClassifier(random_state=0),
    ],
    ids=["random-forest", "extra-trees", "one-tree"],
)
def test_the_table_is_bitwise_predict_proba(model):
    model.fit(IRIS.data, IRIS.target)
    arrays, summary = compile_model(model)
    assert summary["table"] is True
    edges = np.split(arrays["table_edges"], np.cumsum(arrays["table_edge_counts"])[:-1])
    rows = np.vstack([IRIS.data, rows_around_thresholds(model)])
    table = lookup(edges, arrays["table_cells"], arrays["table_values"], rows)
    np.testing.assert_array_equal(table, model.predict_proba(rows))


def test_the_budget_decides_whether_a_table_is_written():
    model = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0).fit(IRIS.data, IRIS.target)
    cells = compile_model(model)[1]["table_cells"]
    at_budget, summary = compile_model(model, table_max_cells=cells)
    assert summary["table"] is True and "table_cells" in at_budget
    below, summary = compile_model(model, table_max_cells=cells - 1)
    assert summary["table"] is False
    assert not any(name.startswith("table_") for name in below)
    assert {"left", "right", "feature", "threshold", "value", "tree_roots", "max_depth", "n_features"} <= set(below)


def test_the_file_holds_no_pickle():
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS.data, IRIS.target)
    with np.load(io.BytesIO(npz_bytes(compile_model(model)[0])), allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)


class Calibrated(RandomForestClassifier):
    def predict_proba(self, X):
        p = super().predict_proba(X) ** 2
        return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("model", "y", "message"),
    [
        (LogisticRegression(max_iter=300), IRIS.target, "not a fitted tree ensemble"),
        (Calibrated(n_estimators=3, random_state=0), IRIS.target, "not a scikit-learn forest"),
        (RandomForestClassifier(n_estimators=3, random_state=0), IRIS.target + 1, "classes must be 0..2"),
        (
            RandomForestClassifier(n_estimators=3, random_state=0),
            np.stack([IRIS.target, IRIS.target], axis=1),
            "2 outputs",
        ),
    ],
    ids=["linear", "forest-subclass", "classes-1-to-3", "two-outputs"],
)
def test_models_serving_could_not_answer_like_predict_proba_are_refused(model, y, message):
    model.fit(IRIS.data, y)
    with pytest.raises(UnsupportedModel, match=message):
        compile_model(model)


@pytest.mark.parametrize("budget", [-1, MAX_TABLE_MAX_CELLS + 1, True, 2.5])
def test_a_bad_budget_is_refused(budget):
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(IRIS.data, IRIS.target)
    with pytest.raises(ValueError, match="table_max_cells"):
        compile_model(model, table_max_cells=budget)
