"""The compiled forest (``model.npz``, written by images/training/trainer/forest_npz.py): load, check, predict.

numpy only: no scikit-learn, and ``allow_pickle=False``, so a file on the models volume is data,
never code. Two inference paths, both giving what scikit-learn's ``predict_proba`` gives:

- ``table``: a decision-region table. Per feature, the cell of a row is the number of split
  thresholds (as float32 floors) strictly below its float32 value (``searchsorted``, side left);
  the cells of the features index one precomputed probability row. A few microseconds per row.
- ``trees``: every tree walked at once, vectorized over rows and trees, ``max_depth`` steps (for a
  forest whose table would exceed the trainer's budget).
"""

from __future__ import annotations

import math
import random
import zipfile
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

NPZ_FORMAT = "forest-npz-v1"

_NODE_ARRAYS = {
    "tree_roots": np.int64,
    "left": np.int32,
    "right": np.int32,
    "feature": np.int32,
    "threshold": np.float64,
    "value": np.float64,
    "max_depth": np.int64,
    "n_features": np.int64,
}
_TABLE_ARRAYS = {
    "table_edges": np.float32,
    "table_edge_counts": np.int64,
    "table_cells": (np.uint16, np.uint32),
    "table_values": np.float64,
}
_CHECK_SEED = 20240611
_CHECK_ROWS = 256
SMALL_BATCH = 4
"""Up to this many rows the table is searched with bisect on Python floats (~3 us a row); above, with numpy."""


class ForestFormatError(ValueError):
    """model.npz is unreadable or its arrays do not form a valid forest."""


def _arrays(file: str | Path | BinaryIO) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ForestFormatError(f"not a readable numpy .npz file: {exc!r}") from exc


def _take(arrays: dict, spec: dict, optional: bool = False) -> dict[str, np.ndarray] | None:
    present = [k for k in spec if k in arrays]
    if optional and not present:
        return None
    missing = [k for k in spec if k not in arrays]
    if missing:
        raise ForestFormatError(f"arrays {missing} are missing")
    out = {}
    for name, dtypes in spec.items():
        a = arrays[name]
        allowed = dtypes if isinstance(dtypes, tuple) else (dtypes,)
        if a.dtype not in [np.dtype(d) for d in allowed]:
            raise ForestFormatError(f"array {name!r} has dtype {a.dtype}, expected {' or '.join(map(str, allowed))}")
        out[name] = a
    return out


class Forest:
    """A checked, immutable compiled forest; ``predict_proba(rows)`` with rows float64 of shape (n, n_features)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        nodes = _take(arrays, _NODE_ARRAYS)
        self.n_features = int(nodes["n_features"])
        self.roots = nodes["tree_roots"].astype(np.intp)
        self.left = nodes["left"].astype(np.intp)
        self.right = nodes["right"].astype(np.intp)
        self.feature = nodes["feature"].astype(np.intp)
        self.threshold = nodes["threshold"]
        self.value = nodes["value"]
        self.depth = int(nodes["max_depth"])
        self._check_nodes()
        self.n_trees = len(self.roots)
        self.n_classes = self.value.shape[1]
        self.table = _take(arrays, _TABLE_ARRAYS, optional=True)
        if self.table is not None:
            self._prepare_table()
        self.inference = "table" if self.table is not None else "trees"
        self.predict_proba: Callable[[np.ndarray], np.ndarray] = (
            self._table_proba if self.table is not None else self.trees_proba
        )
        if self.table is not None:
            self._check_table_against_trees()

    @classmethod
    def load(cls, file: str | Path | BinaryIO) -> Forest:
        """From a path or an open binary file (the server passes the bytes it checksummed)."""
        return cls(_arrays(file))

    # -- checks: every index in range, every tree reaches a leaf within max_depth steps --------------
    def _check_nodes(self) -> None:
        n = len(self.left)
        if self.n_features < 1:
            raise ForestFormatError(f"n_features is {self.n_features}")
        for name in ("left", "right", "feature", "threshold"):
            if getattr(self, name).shape != (n,):
                raise ForestFormatError(f"array {name!r} has shape {getattr(self, name).shape}, expected ({n},)")
        if n == 0 or self.value.ndim != 2 or self.value.shape[0] != n or self.value.shape[1] < 1:
            raise ForestFormatError(f"array 'value' has shape {self.value.shape}, expected ({n}, n_classes)")
        if self.roots.ndim != 1 or len(self.roots) == 0:
            raise ForestFormatError("no trees")
        if not 0 <= self.depth <= 10_000:
            raise ForestFormatError(f"max_depth is {self.depth}")
        for name in ("roots", "left", "right"):
            a = getattr(self, name)
            if a.min() < 0 or a.max() >= n:
                raise ForestFormatError(f"array {name!r} indexes outside the {n} nodes")
        if self.feature.min() < 0 or self.feature.max() >= self.n_features:
            raise ForestFormatError(f"array 'feature' names a feature outside 0..{self.n_features - 1}")
        if np.isnan(self.threshold).any() or not np.isfinite(self.value).all():
            raise ForestFormatError("thresholds or leaf values are not finite numbers")
        leaf = self.left == np.arange(n)
        if not np.array_equal(leaf, self.right == np.arange(n)):
            raise ForestFormatError("a node is a leaf on one side only")
        # Trees: every child comes after its parent (so no cycles), and every node but a root has
        # exactly one parent. Then a walk from the roots ends on leaves; within max_depth steps?
        inner = np.flatnonzero(~leaf)
        children = np.concatenate([self.left[inner], self.right[inner]])
        parents = np.bincount(np.concatenate([children, self.roots]), minlength=n)
        if (children <= np.concatenate([inner, inner])).any() or (parents != 1).any():
            raise ForestFormatError("the nodes do not form trees (a child before its parent, or two parents)")
        frontier = self.roots
        for _ in range(self.depth):
            frontier = frontier[~leaf[frontier]]
            frontier = np.concatenate([self.left[frontier], self.right[frontier]])
        if not leaf[frontier].all():
            raise ForestFormatError(f"a tree is deeper than max_depth={self.depth}")
        leaf_values = self.value[leaf]
        if (leaf_values < 0).any() or not np.allclose(leaf_values.sum(axis=1), 1.0, atol=1e-6):
            raise ForestFormatError("leaf values are not probabilities summing to 1")

    def _prepare_table(self) -> None:
        t = self.table
        counts = t["table_edge_counts"]
        if counts.shape != (self.n_features,) or counts.min() < 0 or counts.sum() != len(t["table_edges"]):
            raise ForestFormatError(f"table_edge_counts {counts.tolist()} do not match {len(t['table_edges'])} edges")
        self.edges = [np.ascontiguousarray(e) for e in np.split(t["table_edges"], np.cumsum(counts)[:-1])]
        if any(not np.all(np.diff(e) > 0) for e in self.edges) or np.isnan(t["table_edges"]).any():
            raise ForestFormatError("table_edges are not strictly increasing per feature")
        shape = [len(e) + 1 for e in self.edges]
        if t["table_cells"].shape != (math.prod(shape),):
            raise ForestFormatError(f"table_cells has shape {t['table_cells'].shape}, expected ({math.prod(shape)},)")
        values = t["table_values"]
        if values.ndim != 2 or values.shape[1] != self.n_classes or len(values) == 0:
            raise ForestFormatError(f"table_values has shape {values.shape}, expected (n, {self.n_classes})")
        if int(t["table_cells"].max()) >= len(values) or not np.isfinite(values).all():
            raise ForestFormatError("table_cells index outside table_values, or values not finite")
        # C-order strides of the grid: flat = sum(cell_f * stride_f)
        strides = np.cumprod([1, *shape[::-1]])[:-1][::-1]
        self._strides = [int(s) for s in strides]
        self._cells = t["table_cells"]
        self._values = values
        # The same edges as Python floats (float32 values are exact doubles) for the small-batch path.
        self._edge_lists = [e.tolist() for e in self.edges]
        self._feature_steps = list(zip(self._edge_lists, self._strides, strict=True))

    def _check_table_against_trees(self) -> None:
        """The table must answer like the trees: on every edge, just above it, and on seeded random rows."""
        # Python's generator, not numpy's: numpy.random would cost every worker ~6 MiB of memory for this alone.
        rng = random.Random(_CHECK_SEED)
        cols = []
        for e in self.edges:
            if len(e) == 0:
                cols.append([0.0] * _CHECK_ROWS)
                continue
            candidates = np.concatenate([e, np.nextafter(e, np.float32(np.inf))]).astype(np.float64).tolist()
            lo, hi = float(e[0]) - 1.0, float(e[-1]) + 1.0
            picks = rng.choices(candidates, k=_CHECK_ROWS // 2)
            picks += [rng.uniform(lo, hi) for _ in range(_CHECK_ROWS // 2)]
            rng.shuffle(picks)
            cols.append(picks)
        rows = np.ascontiguousarray(np.array(cols, dtype=np.float64).T)
        trees = self.trees_proba(rows)
        small = np.concatenate([self._table_proba_small(rows[i : i + 1]) for i in range(0, len(rows), 16)])
        if not (
            np.allclose(self._table_proba_numpy(rows), trees, rtol=0, atol=1e-9)
            and np.allclose(small, trees[::16], rtol=0, atol=1e-9)
        ):
            raise ForestFormatError("the decision-region table disagrees with the trees")

    # -- inference -------------------------------------------------------------------------------
    def _check_rows(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows must have shape (n, {self.n_features}), got {rows.shape}")

    def _table_proba(self, rows: np.ndarray) -> np.ndarray:
        self._check_rows(rows)
        if len(rows) <= SMALL_BATCH:
            return self._table_proba_small(rows)
        return self._table_proba_numpy(rows)

    def _table_proba_small(self, rows: np.ndarray) -> np.ndarray:
        flat = []
        for row in rows.astype(np.float32).tolist():
            cell = 0
            for (edges, stride), v in zip(self._feature_steps, row, strict=False):  # shape checked
                cell += bisect_left(edges, v) * stride
            flat.append(cell)
        return self._values[self._cells[flat]]

    def _table_proba_numpy(self, rows: np.ndarray) -> np.ndarray:
        x = rows.astype(np.float32)
        flat = np.searchsorted(self.edges[0], x[:, 0]) * self._strides[0]
        for f in range(1, self.n_features):
            flat += np.searchsorted(self.edges[f], x[:, f]) * self._strides[f]
        return self._values[self._cells[flat]]

    def trees_proba(self, rows: np.ndarray) -> np.ndarray:
        """Walk all trees for all rows at once; scikit-learn's float32 input against float64 thresholds."""
        self._check_rows(rows)
        x = rows.astype(np.float32).astype(np.float64)
        node = np.repeat(self.roots[np.newaxis, :], len(x), axis=0)  # (rows, trees)
        for _ in range(self.depth):
            go_left = np.take_along_axis(x, self.feature[node], axis=1) <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        # (trees, rows, classes), summed over trees in order from the first, as predict_proba adds them
        acc = self.value[node.T].sum(axis=0)
        acc /= self.n_trees
        return acc
