"""JSON bodies of /predict answers, rendered from a per-model template (the hot path of big batches).

Building one dict per row and serialising it costs ~8 us a row; filling a format string made
once per model costs ~1 us. The output is the same JSON that json.dumps would give for
``{"class_id", "class_name", "probabilities": {name: p, ...}}`` (tests compare them).
"""

from __future__ import annotations

import json

import numpy as np


class Renderer:
    """Renders predictions for one model version (its class names and version are baked in)."""

    def __init__(self, class_names: tuple[str, ...], version: str) -> None:
        names = [json.dumps(n) for n in class_names]
        probs = ",".join(f"{n}:{{!r}}" for n in names)
        # e.g. {"class_id":{},"class_name":{},"probabilities":{"setosa":{!r},"versicolor":{!r},...}}
        self.row_format = '{{"class_id":{},"class_name":{},"probabilities":{{' + probs + "}}}}"
        self.names = names
        self.version = json.dumps(version)

    def rows(self, proba: np.ndarray) -> tuple[list[str], np.ndarray]:
        if not np.isfinite(proba).all():
            raise ValueError("the model returned non-finite probabilities")
        ids = proba.argmax(axis=1)
        fmt, names = self.row_format.format, self.names
        return [fmt(i, names[i], *p) for i, p in zip(ids.tolist(), proba.tolist(), strict=True)], ids

    def single(self, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
        rows, ids = self.rows(proba)
        return (rows[0][:-1] + ',"model_version":' + self.version + "}").encode(), ids

    def batch(self, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
        rows, ids = self.rows(proba)
        return ('{"predictions":[' + ",".join(rows) + '],"model_version":' + self.version + "}").encode(), ids
