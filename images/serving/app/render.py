"""JSON bodies of /predict answers, rendered from a per-model template (the hot path of big batches).

Building one dict per row and serialising it costs ~8 us a row; filling a format string made
once per model costs ~1 us (mostly ``repr`` of the floats); taking the row from a cache of rows
already rendered costs ~0.1 us. The output is the same JSON that json.dumps would give for
``{"class_id", "class_name", "probabilities": {name: p, ...}}`` (tests compare them).
"""

from __future__ import annotations

import json

import numpy as np

CACHED_ROWS = 4096
"""Rendered rows a Renderer keeps per form (~1 MB at most). A forest answers from a finite set of probability
rows (the table's distinct rows), and real traffic hits far fewer, so most rows come from the cache."""

CACHED_ANSWERS = 1024
"""Whole one-row answers (and their class ids, and the other protocols' answer frames) a Renderer keeps per
kind: ~0.5 MB each at most, so that the worker's memory stays near its budget whatever rows traffic brings."""


class Renderer:
    """Renders predictions for one model version (its class names and version are baked in)."""

    def __init__(self, class_names: tuple[str, ...], version: str) -> None:
        names = [json.dumps(n) for n in class_names]
        probs = ",".join(f"{n}:{{!r}}" for n in names)
        # e.g. {"class_id":{},"class_name":{},"probabilities":{"setosa":{!r},"versicolor":{!r},...}}
        self.row_format = '{{"class_id":{},"class_name":{},"probabilities":{{' + probs + "}}}}"
        self.names = names
        self.version = json.dumps(version)
        self._rows: dict[bytes, str] = {}
        self._values: dict[bytes, str] = {}
        self._singles: dict[bytes, tuple[bytes, np.ndarray]] = {}
        self._ids: dict[bytes, np.ndarray] = {}
        self.memo: dict[tuple, object] = {}
        """Answer parts the other protocols keep for this model version (keyed by them, at most CACHED_ANSWERS)."""

    def rows(self, proba: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Per row, ``{"class_id":..,"class_name":..,"probabilities":{..}}``; and the class ids."""
        ids = _finite_class_ids(proba)
        fmt, names = self.row_format.format, self.names

        def render(n: int, p: list[float]) -> str:
            i = int(ids[n])
            return fmt(i, names[i], *p)

        return _cached(self._rows, proba, render), ids

    def class_ids(self, proba: np.ndarray) -> np.ndarray:
        """Each row's class id (argmax), once the rows are known to be finite (else ValueError, as ``rows``).

        One row answered before: from a cache keyed by its bytes (it was finite then), skipping the
        finiteness check and argmax. The cached arrays are shared, so they are read-only.
        """
        if len(proba) != 1:
            return _finite_class_ids(proba)
        return remember(self._ids, row_key(proba), _read_only_class_ids, proba)

    def values(self, proba: np.ndarray) -> list[str]:
        """Per row, its probabilities as JSON numbers joined by commas (``1.0,0.0,0.0``), as json.dumps writes them."""
        return _cached(self._values, proba, lambda n, p: ",".join(map(float.__repr__, p)))

    def single(self, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The answer to a one-row request and its class ids, whole from a cache when the row was answered before.

        Keyed like the rows (the row's bytes): a row found there was finite when it was rendered,
        so the finiteness check, argmax and assembly are all skipped (~3 us of a one-row request).
        The ids array is shared between the answers of a row, so it is read-only.
        """
        return remember(self._singles, row_key(proba), self._single, proba)

    def _single(self, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
        rows, ids = self.rows(proba)
        ids.setflags(write=False)
        return (rows[0][:-1] + ',"model_version":' + self.version + "}").encode(), ids

    def batch(self, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
        rows, ids = self.rows(proba)
        return ('{"predictions":[' + ",".join(rows) + '],"model_version":' + self.version + "}").encode(), ids


def _finite_class_ids(proba: np.ndarray) -> np.ndarray:
    """Each row's class id (argmax); ValueError if a probability is not finite."""
    if not np.isfinite(proba).all():
        raise ValueError("the model returned non-finite probabilities")
    return proba.argmax(axis=1)


def _read_only_class_ids(proba: np.ndarray) -> np.ndarray:
    ids = _finite_class_ids(proba)
    ids.setflags(write=False)
    return ids


def row_key(proba: np.ndarray) -> bytes:
    """The cache key of a one-row answer: the row's float64 bytes (0.0 and -0.0 differ, as their JSON does)."""
    return np.ascontiguousarray(proba, dtype=np.float64).tobytes()


def remember(cache: dict, key, build, *args):
    """``cache[key]``; else ``build(*args)``, kept while the cache holds fewer than CACHED_ANSWERS entries.

    The one-row answers' memos (here and in app/protocols.py): what ``build`` returns is shared by
    later answers, so the class ids in it must be read-only. A value that raises (non-finite
    probabilities) is never kept.
    """
    value = cache.get(key)
    if value is None:
        value = build(*args)
        if len(cache) < CACHED_ANSWERS:
            cache[key] = value
    return value


def _cached(cache: dict[bytes, str], proba: np.ndarray, render) -> list[str]:
    """``render(n, row n as floats)`` for every row of proba, rows rendered before taken from cache."""
    proba = np.ascontiguousarray(proba, dtype=np.float64)
    # Keyed by each row's bytes, not its floats (0.0 and -0.0 are equal floats with different
    # JSON): viewed as one opaque (void) value per row, numpy hands out all the keys at once.
    keys = proba.view(f"V{proba.shape[1] * 8}").ravel().tolist()
    out = list(map(cache.get, keys))
    if None in out:
        for n, text in enumerate(out):
            if text is None:
                out[n] = text = render(n, proba[n].tolist())
                if len(cache) < CACHED_ROWS:
                    cache[keys[n]] = text
    return out
