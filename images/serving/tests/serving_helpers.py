"""Helpers shared by the serving tests (a uniquely named module: the trainer's tests have a conftest too)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

GUIDE_REQUEST = {"features": [5.1, 3.5, 1.4, 0.2]}


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until predicate() is truthy; fail after a bounded deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def rewrite_npz(version_dir: Path, change: Callable[[dict], dict]) -> None:
    """Replace model.npz by change(its arrays) and record the new file's sha256 in metadata.json.

    The checksum then passes, so the server's own checks of the arrays are what is tested.
    """
    path = version_dir / "model.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    buf = io.BytesIO()
    np.savez(buf, **change(arrays))
    path.write_bytes(buf.getvalue())
    meta = json.loads((version_dir / "metadata.json").read_text())
    meta["files"]["model.npz"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (version_dir / "metadata.json").write_text(json.dumps(meta))
