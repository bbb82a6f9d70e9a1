"""The template renderer gives exactly what json.dumps of the plain dicts would."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.render import Renderer

NAMES = ("setosa", 'qu"ote\\d', "ünïcode", "new\nline")


def plain(names, proba):
    return [
        {"class_id": int(i), "class_name": names[i], "probabilities": dict(zip(names, map(float, p), strict=True))}
        for i, p in zip(proba.argmax(axis=1), proba, strict=True)
    ]


def test_batch_and_single_equal_the_plain_json():
    rng = np.random.default_rng(7)
    proba = rng.random((50, len(NAMES)))
    proba[3] = [1.0, 0.0, 0.0, 0.0]
    proba[4] = [1e-300, 5e-324, 0.5, 1 / 3]
    proba /= proba.sum(axis=1, keepdims=True)
    r = Renderer(NAMES, "7")
    body, ids = r.batch(proba)
    assert json.loads(body) == {"predictions": plain(NAMES, proba), "model_version": "7"}
    assert ids.tolist() == proba.argmax(axis=1).tolist()
    one, ids = r.single(proba[:1])
    assert json.loads(one) == {**plain(NAMES, proba[:1])[0], "model_version": "7"}
    assert ids.tolist() == [int(proba[0].argmax())]


def test_non_finite_probabilities_are_not_rendered():
    with pytest.raises(ValueError, match="non-finite"):
        Renderer(NAMES, "1").batch(np.array([[np.nan, 0.5, 0.25, 0.25]]))


def test_class_ids_are_the_argmax_of_finite_rows_from_the_cache_when_seen():
    r = Renderer(("a", "b", "c"), "1")
    for _ in range(2):  # computed, then from the cache
        for row in ([0.2, 0.5, 0.3], [-0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]):
            ids = r.class_ids(np.array([row]))
            assert ids.tolist() == [int(np.argmax(row))]
    batch = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    assert r.class_ids(batch).tolist() == [1, 0]
    for bad in ([[np.nan, 0.5, 0.5]], [[0.2, 0.5, 0.3], [np.inf, 0.0, 0.0]]):
        with pytest.raises(ValueError, match="non-finite"):
            r.class_ids(np.array(bad))
    with pytest.raises(ValueError):
        r.class_ids(np.array([[0.2, 0.5, 0.3]]))[0] = 2  # shared between answers: read-only
