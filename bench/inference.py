"""Model inference alone (no HTTP): the serving app's inference path against plain scikit-learn.

The serving app's path is imported in ONE place, :func:`load_serving_path`: the function that
images/serving/README.md documents ("Inference from Python") and that POST /predict uses.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SERVING_DIR = REPO / "images" / "serving"

GUIDE_ROW = [5.1, 3.5, 1.4, 0.2]


def load_serving_path(version_dir: Path):
    """The serving app's inference path for one exported version directory.

    Returns an object with ``predict_proba(rows)`` (float64 (n, 4) -> (n, n_classes)) and
    ``inference`` (the path's name, as GET /model reports it).
    """
    if str(SERVING_DIR) not in sys.path:
        sys.path.insert(0, str(SERVING_DIR))
    from app.model import load_model  # the single place to change if the serving app's API moves

    return load_model(version_dir)


@dataclass(frozen=True)
class Timing:
    """Median seconds per call over ``repeats`` rounds of ``number`` calls."""

    median_s: float
    best_s: float
    number: int
    repeats: int
    rows: int

    @property
    def us_per_call(self) -> float:
        return self.median_s * 1e6

    @property
    def us_per_row(self) -> float:
        return self.median_s * 1e6 / self.rows

    def to_dict(self) -> dict:
        return {**asdict(self), "us_per_call": self.us_per_call, "us_per_row": self.us_per_row}


def time_call(fn: Callable[[], object], rows: int, *, repeats: int = 7, target_s: float = 0.2) -> Timing:
    """timeit with a number of calls chosen so each round takes about ``target_s``; median of the rounds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()  # >= 0.2 s per round
    number = max(1, int(number * target_s / 0.2))
    rounds = [t / number for t in timer.repeat(repeat=repeats, number=number)]
    return Timing(statistics.median(rounds), min(rounds), number, repeats, rows)


def batch_rows(n: int, seed: int = 0) -> np.ndarray:
    """n rows drawn uniformly within the Iris feature ranges (fixed seed)."""
    lo = np.array([4.3, 2.0, 1.0, 0.1])
    hi = np.array([7.9, 4.4, 6.9, 2.5])
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, 4))


def measure(serving_model, sklearn_model, *, repeats: int = 7) -> dict:
    """Time both paths on one row and on a 100-row batch; also their agreement on the Iris rows."""
    import sklearn
    from sklearn.datasets import load_iris

    one = np.array([GUIDE_ROW], dtype=np.float64)
    hundred = batch_rows(100)
    iris = load_iris().data.astype(np.float64)

    # app.model may switch scikit-learn's global config (assume_finite); the baseline is plain predict_proba.
    with sklearn.config_context(assume_finite=False):
        reference = sklearn_model.predict_proba(np.vstack([iris, batch_rows(1000, seed=1)]))
        sk_one = time_call(lambda: sklearn_model.predict_proba(one), 1, repeats=repeats)
        sk_100 = time_call(lambda: sklearn_model.predict_proba(hundred), 100, repeats=repeats)
    mine = np.asarray(serving_model.predict_proba(np.vstack([iris, batch_rows(1000, seed=1)])))
    sv_one = time_call(lambda: serving_model.predict_proba(one), 1, repeats=repeats)
    sv_100 = time_call(lambda: serving_model.predict_proba(hundred), 100, repeats=repeats)
    return {
        "serving_path": getattr(serving_model, "inference", type(serving_model).__name__),
        "serving": {"row": sv_one.to_dict(), "batch100": sv_100.to_dict()},
        "sklearn": {"row": sk_one.to_dict(), "batch100": sk_100.to_dict()},
        "parity": {
            "rows": int(len(reference)),
            "same_class": bool((mine.argmax(axis=1) == reference.argmax(axis=1)).all()),
            "max_abs_diff": float(np.abs(mine - reference).max()),
        },
    }
