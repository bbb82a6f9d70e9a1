"""Compile a fitted scikit-learn tree ensemble into ``model.npz``: plain numpy arrays, no pickle.

Serving reads this file with ``numpy.load(allow_pickle=False)`` and needs neither scikit-learn nor
joblib (docs/interfaces.md, "model.npz"). It always holds the forest's nodes, and, when the
ensemble is small enough, a decision-region table that answers a row with a few binary searches.

Why the table is exact. scikit-learn converts each input to float32 and sends it left at a node
when ``float32(x) <= threshold`` (threshold a float64). For a float32 x that is the same test as
``x <= c`` with ``c`` the largest float32 not above the threshold. Per feature, the sorted distinct
``c`` of all nodes cut the float32 line into cells ``edges[k-1] < x <= edges[k]`` in which every node
test on that feature, hence every tree's leaf, is the same; the cell of x is
``searchsorted(edges, x, side="left")``. The ensemble is constant on each cell of the grid those
cells make. The table holds, per grid cell, the average of the trees' leaf values, accumulated in
tree order from zero and divided by the tree count at the end: the same float operations, in the
same order, as ``ForestClassifier.predict_proba``, so the probabilities are bitwise equal.
"""

from __future__ import annotations

import io
import math

import numpy as np

NPZ_FILE = "model.npz"
NPZ_FORMAT = "forest-npz-v1"
DEFAULT_TABLE_MAX_CELLS = 4_194_304
"""Grid cells above which no table is written (the forest is then served by traversing its nodes).

At most 16 MiB of cell ids per serving worker (uint32; uint16 when there are at most 65,535
distinct probability rows). Compiling 3 classes peaks at ~115 bytes per cell (measured: 3.3M cells,
570 MB and 7 s; 11.9M cells, 1.6 GB and 34 s), so the default stays far below the training Job's
2Gi limit.
"""
MAX_TABLE_MAX_CELLS = 8_388_608
"""Upper bound of TABLE_MAX_CELLS: ~1 GB while compiling, 32 MiB of cell ids per serving worker."""


class UnsupportedModel(ValueError):
    """The estimator is not a single-output tree ensemble classifier this format can hold."""


def _trees(model) -> list:
    """The fitted decision trees of a forest classifier (or a lone tree), checked for one output."""
    estimators = getattr(model, "estimators_", None)
    if estimators is None and hasattr(model, "tree_"):
        estimators = [model]
    if not estimators or not all(hasattr(e, "tree_") for e in estimators):
        raise UnsupportedModel(f"{type(model).__name__} is not a fitted tree ensemble (no estimators_ with tree_)")
    if getattr(model, "n_outputs_", 1) != 1:
        raise UnsupportedModel(f"{type(model).__name__} has {model.n_outputs_} outputs; only 1 is supported")
    n_classes = int(model.n_classes_)
    for est in estimators:
        if int(est.n_classes_) != n_classes or est.tree_.value.shape[1] != 1:
            raise UnsupportedModel("every tree must predict the same classes with one output")
    # predict_proba of a forest is the plain mean of its trees' predict_proba; a subclass may differ.
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    if type(model) not in (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier, ExtraTreeClassifier):
        raise UnsupportedModel(f"{type(model).__name__} is not a scikit-learn forest or tree classifier")
    return [e.tree_ for e in estimators]


def float32_floor(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold (so float32 x <= t  <=>  x <= result)."""
    t = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(over="ignore"):
        f = t.astype(np.float32)
    above = f.astype(np.float64) > t
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


def node_arrays(trees: list) -> dict[str, np.ndarray]:
    """All trees' nodes concatenated; children as global indices, leaves point at themselves."""
    sizes = [t.node_count for t in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    left, right, feature, threshold, value = [], [], [], [], []
    for off, t in zip(offsets[:-1], trees, strict=True):
        own = np.arange(t.node_count, dtype=np.int64) + off
        leaf = t.children_left < 0
        left.append(np.where(leaf, own, t.children_left + off))
        right.append(np.where(leaf, own, t.children_right + off))
        feature.append(np.where(leaf, 0, t.feature))
        threshold.append(np.where(leaf, np.inf, t.threshold))
        value.append(t.value[:, 0, :])
    return {
        "tree_roots": offsets[:-1],
        "left": np.concatenate(left).astype(np.int32),
        "right": np.concatenate(right).astype(np.int32),
        "feature": np.concatenate(feature).astype(np.int32),
        "threshold": np.concatenate(threshold).astype(np.float64),
        "value": np.ascontiguousarray(np.concatenate(value), dtype=np.float64),
        "max_depth": np.int64(max(t.max_depth for t in trees)),
    }


def table_edges(trees: list, n_features: int) -> list[np.ndarray]:
    """Per feature: the sorted distinct float32 floors of every split threshold on it."""
    feats = np.concatenate([t.feature[t.children_left >= 0] for t in trees])
    thr = np.concatenate([t.threshold[t.children_left >= 0] for t in trees])
    floors = float32_floor(thr)
    return [np.unique(floors[feats == f]) for f in range(n_features)]


def table_cells(edges: list[np.ndarray]) -> int:
    return math.prod(len(e) + 1 for e in edges)


def build_table(trees: list, edges: list[np.ndarray], n_classes: int) -> np.ndarray:
    """The mean leaf value of the trees on every grid cell, shape (len(e)+1 for e in edges) + (n_classes,).

    Each tree's leaves partition the grid into boxes; a leaf's value is added to its box, tree by
    tree in the forest's order, then the sum is divided by the tree count (as predict_proba does).
    """
    shape = tuple(len(e) + 1 for e in edges)
    # Class-major while filling: a box's innermost run is then along a feature, not 3 classes long.
    acc = np.zeros((n_classes, *shape), dtype=np.float64)
    for t in trees:
        left, right, feat = t.children_left, t.children_right, t.feature
        floors = float32_floor(t.threshold)
        value = t.value[:, 0, :]
        stack = [(0, (0,) * len(shape), shape)]
        while stack:
            node, lo, hi = stack.pop()
            if left[node] < 0:
                box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
                for c in range(n_classes):
                    acc[(c, *box)] += value[node, c]
                continue
            f = feat[node]
            cut = int(np.searchsorted(edges[f], floors[node])) + 1  # cells < cut go left
            if lo[f] < min(hi[f], cut):
                stack.append((left[node], lo, hi[:f] + (min(hi[f], cut),) + hi[f + 1 :]))
            if max(lo[f], cut) < hi[f]:
                stack.append((right[node], lo[:f] + (max(lo[f], cut),) + lo[f + 1 :], hi))
    acc /= len(trees)
    return np.moveaxis(acc, 0, -1)


def lookup(edges: list[np.ndarray], cells: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Table lookup (the same computation serving does): probabilities of float64 rows."""
    x = np.asarray(rows, dtype=np.float64).astype(np.float32)
    flat = np.zeros(len(x), dtype=np.intp)
    for f, e in enumerate(edges):
        flat = flat * (len(e) + 1) + np.searchsorted(e, x[:, f], side="left")
    return values[cells[flat]]


def compile_model(model, table_max_cells: int = DEFAULT_TABLE_MAX_CELLS) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of model.npz and a summary for metadata.json; raises UnsupportedModel."""
    if isinstance(table_max_cells, bool) or not isinstance(table_max_cells, int):
        raise ValueError(f"table_max_cells must be an integer, got {table_max_cells!r}")
    if not 0 <= table_max_cells <= MAX_TABLE_MAX_CELLS:
        raise ValueError(f"table_max_cells must be between 0 and {MAX_TABLE_MAX_CELLS}, got {table_max_cells}")
    trees = _trees(model)
    n_features = int(model.n_features_in_)
    n_classes = int(model.n_classes_)
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    if classes != list(range(n_classes)):
        raise UnsupportedModel(f"classes must be 0..{n_classes - 1}, got {classes}")
    arrays = node_arrays(trees)
    arrays["n_features"] = np.int64(n_features)
    edges = table_edges(trees, n_features)
    cells = table_cells(edges)
    summary = {
        "n_trees": len(trees),
        "n_nodes": int(len(arrays["left"])),
        "max_depth": int(arrays["max_depth"]),
        "table_cells": cells,
        "table_max_cells": table_max_cells,
        "table": False,
    }
    if cells <= table_max_cells:
        acc = build_table(trees, edges, n_classes)
        values, inverse = np.unique(acc.reshape(-1, n_classes), axis=0, return_inverse=True)
        cell_dtype = np.uint16 if len(values) <= np.iinfo(np.uint16).max else np.uint32
        arrays["table_edges"] = np.concatenate(edges).astype(np.float32)
        arrays["table_edge_counts"] = np.array([len(e) for e in edges], dtype=np.int64)
        arrays["table_cells"] = inverse.reshape(-1).astype(cell_dtype)
        arrays["table_values"] = np.ascontiguousarray(values)
        summary.update(table=True, table_distinct_rows=int(len(values)))
    return arrays, summary


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The file's bytes (zip-compressed: a table is mostly runs of the same few ids)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
