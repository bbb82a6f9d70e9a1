"""Prometheus metrics, aggregated over all worker processes when PROMETHEUS_MULTIPROC_DIR is set.

prometheus_client picks multiprocess mode when it is imported, so app.serve sets
PROMETHEUS_MULTIPROC_DIR before any worker imports this module.
"""

from __future__ import annotations

import os
import time

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The app's metrics in their own registry (one per app, so tests do not share counters)."""

    def __init__(self) -> None:
        if path := multiprocess_dir():
            os.makedirs(path, exist_ok=True)  # app.serve empties it; plain `uvicorn app.main:app` may not
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "serving_http_requests",
            "HTTP requests by endpoint (route template), method and status code",
            ["endpoint", "method", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "serving_http_request_duration_seconds",
            "HTTP request latency by endpoint and status code",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.predictions = Counter(
            "serving_predictions", "Predictions returned, by predicted class", ["class_name"], registry=reg
        )
        self.model_info = Gauge(
            "serving_model_info",
            "1 for the model version a worker serves (0 once replaced)",
            ["version", "run_id"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.model_loaded = Gauge(
            "serving_model_loaded",
            "1 when a model is loaded (minimum over workers)",
            registry=reg,
            multiprocess_mode="livemin",
        )
        self.reloads = Counter(
            "serving_model_reloads",
            "Newly published models picked up, by result (loaded or refused)",
            ["result"],
            registry=reg,
        )
        self.model_loaded.set(0)
        self._children: dict[tuple, tuple] = {}
        self._prediction_children: dict[str, object] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            code = str(status)
            children = (self.requests.labels(endpoint, method, code), self.latency.labels(endpoint, code))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_predictions(self, class_names: tuple[str, ...], ids: np.ndarray) -> None:
        """Count the predicted class ids of one request (index i is class_names[i])."""
        if len(ids) == 1:
            self._prediction_child(class_names[int(ids[0])]).inc()
            return
        for name, n in zip(class_names, np.bincount(ids, minlength=len(class_names)).tolist(), strict=True):
            if n:
                self._prediction_child(name).inc(n)

    def _prediction_child(self, class_name: str):
        # labels() costs a lock and a tuple per call: look each series up once. Created on first use,
        # so a class never predicted has no series (as before).
        child = self._prediction_children.get(class_name)
        if child is None:
            child = self._prediction_children[class_name] = self.predictions.labels(class_name)
        return child

    def model_swapped(self, old, new) -> None:
        if old is not None:
            self.model_info.labels(old.version, old.run_id or "").set(0)
        self.model_info.labels(new.version, new.run_id or "").set(1)
        self.model_loaded.set(1)

    def render(self) -> tuple[bytes, str]:
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def worker_exiting() -> None:
    """Drop this process's live gauges from the aggregate (called at a worker's shutdown)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request by route template and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # Unknown paths share one label so scanners cannot blow up the series count.
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - start)
