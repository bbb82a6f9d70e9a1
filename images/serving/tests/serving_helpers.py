"""Helpers shared by the serving tests (a uniquely named module: the trainer's tests have a conftest too)."""

from __future__ import annotations

import time
from collections.abc import Callable

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
