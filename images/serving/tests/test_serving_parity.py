"""Parity: the server's numpy inference (app/forest.py) answers what scikit-learn's predict_proba answers.

The model is the guide's "optimized" run (300 trees, depth 15) trained by the real trainer code,
exported by the real exporter, and loaded through the server's loader (app.model.load_model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from trainer.export import make_metadata, publish_model
from trainer.forest_npz import float32_floor
from trainer.model import train_model

from app.forest import SMALL_BATCH
from app.model import load_model

TOLERANCE = 1e-5
N_RANDOM = 10_000


@pytest.fixture(scope="module")
def optimized():
    return train_model(n_estimators=300, max_depth=15)


@pytest.fixture(scope="module")
def exported(optimized, tmp_path_factory) -> dict[str, Path]:
    """The optimized model exported twice: with its table, and with a budget too small for one."""
    root = tmp_path_factory.mktemp("models")
    meta = make_metadata(optimized, version=1, run_id="run-1", run_name="optimized")
    return {
        "table": publish_model(root / "with-table", "iris-classifier", optimized.model, meta),
        "trees": publish_model(root / "no-table", "iris-classifier", optimized.model, meta, table_max_cells=1000),
    }


def iris_and_random_rows() -> np.ndarray:
    iris = load_iris().data
    lo, hi = iris.min(axis=0), iris.max(axis=0)
    rng = np.random.default_rng(5)
    return np.vstack([iris, rng.uniform(lo, hi, size=(N_RANDOM, 4))])


def boundary_rows(model) -> np.ndarray:
    """Iris rows with one feature moved onto a split threshold, its float32 floor, and the floats either side."""
    iris = load_iris().data
    rng = np.random.default_rng(6)
    rows = []
    for est in model.estimators_[:60]:
        tree = est.tree_
        for node in np.flatnonzero(tree.children_left >= 0):
            f, t = tree.feature[node], tree.threshold[node]
            floor = float32_floor(np.array([t]))[0]
            above = np.nextafter(floor, np.float32(np.inf))
            for v in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf), floor, above):
                row = iris[rng.integers(len(iris))].copy()
                row[f] = v
                rows.append(row)
    return np.array(rows, dtype=np.float64)


def assert_parity(mine: np.ndarray, theirs: np.ndarray) -> None:
    assert mine.shape == theirs.shape
    worst = float(np.abs(mine - theirs).max())
    assert worst <= TOLERANCE, f"max |difference| {worst}"
    differ = np.flatnonzero(mine.argmax(axis=1) != theirs.argmax(axis=1))
    assert len(differ) == 0, f"{len(differ)} rows get another class, first {differ[:5]}"


@pytest.mark.parametrize("path", ["table", "trees"])
def test_every_iris_row_and_10000_random_rows_match_predict_proba(optimized, exported, path):
    model = load_model(exported[path])
    assert model.inference == path
    rows = iris_and_random_rows()
    expected = optimized.model.predict_proba(rows)
    assert_parity(model.predict_proba(rows), expected)  # one batch
    for start in range(0, len(rows), 100):  # the batch sizes the API sees
        assert_parity(model.predict_proba(rows[start : start + 100]), expected[start : start + 100])
    if path == "table":  # single rows take the bisect path; check every one
        singles = np.vstack([model.predict_proba(rows[i : i + 1]) for i in range(len(rows))])
        assert_parity(singles, expected)


@pytest.mark.parametrize("path", ["table", "trees"])
def test_rows_on_and_around_every_threshold_match_predict_proba(optimized, exported, path):
    model = load_model(exported[path])
    rows = boundary_rows(optimized.model)
    assert len(rows) > 1000
    expected = optimized.model.predict_proba(rows)
    assert_parity(model.predict_proba(rows), expected)
    small = np.vstack([model.predict_proba(rows[i : i + SMALL_BATCH]) for i in range(0, len(rows), SMALL_BATCH)])
    assert_parity(small, expected)


def test_the_rounding_case_is_exercised(optimized):
    """Some split thresholds round up to float32: a lookup on float32(threshold) would put x on the wrong side."""
    t = np.concatenate([e.tree_.threshold[e.tree_.children_left >= 0] for e in optimized.model.estimators_])
    assert (t.astype(np.float32).astype(np.float64) > t).any()
    floors = float32_floor(t)
    assert (floors.astype(np.float64) <= t).all()
    assert (np.nextafter(floors, np.float32(np.inf)).astype(np.float64) > t).all()


def test_the_export_records_what_serving_will_do(exported):
    table = json.loads((exported["table"] / "metadata.json").read_text())["compiled"]
    trees = json.loads((exported["trees"] / "metadata.json").read_text())["compiled"]
    assert table["table"] is True and table["table_cells"] <= table["table_max_cells"]
    assert trees["table"] is False and trees["table_cells"] > trees["table_max_cells"] == 1000
    assert table["n_trees"] == trees["n_trees"] == 300
    with np.load(exported["trees"] / "model.npz", allow_pickle=False) as npz:
        assert "table_cells" not in npz.files
