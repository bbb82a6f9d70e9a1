"""The production command (python -m app.serve, 2 workers) as a real process on a loopback port."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from serving_helpers import GUIDE_REQUEST, metric_value, wait_for

SERVING_DIR = Path(__file__).resolve().parents[1]
BODY = json.dumps(GUIDE_REQUEST).encode()
HEADERS = {"Content-Type": "application/json"}


class Client(threading.Thread):
    """Posts the guide's request over one keep-alive connection (one worker) until stopped."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = stop
        self.versions: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop_event.is_set():
                try:
                    conn.request("POST", "/predict", body=BODY, headers=HEADERS)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    return
                if resp.status != 200:
                    self.failures.append(f"{resp.status}: {data[:200]!r}")
                    continue
                body = json.loads(data)
                if body["class_name"] != "setosa":
                    self.failures.append(f"unexpected answer {body}")
                self.versions.append(body["model_version"])
        finally:
            conn.close()

    def count(self, version: str) -> int:
        return self.versions.count(version)


def test_hot_swap_under_concurrent_requests_with_two_workers(
    start_server, publish, publish_broken, trained, models_dir
):
    first_dir = publish(trained["small"], 1)

    def snapshot():
        return sorted((str(p.relative_to(models_dir)), p.stat().st_mtime_ns) for p in models_dir.rglob("*"))

    server = start_server()

    def loads() -> float:
        text = server.request("GET", "/metrics")[2].decode()
        return metric_value(text, "serving_model_reloads_total", result="loaded") or 0

    def refusals() -> float:
        text = server.request("GET", "/metrics")[2].decode()
        return metric_value(text, "serving_model_reloads_total", result="refused") or 0

    # Both workers up with v1 (a worker can start seconds after the other on a busy machine).
    wait_for(lambda: loads() == 2, timeout=60, interval=0.1, what="both workers to load v1")

    stop = threading.Event()
    clients = [Client(server.port, stop) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        wait_for(lambda: all(c.count("1") >= 5 or c.failures for c in clients), timeout=30, what="traffic on v1")
        publish(trained["big"], 2)
        wait_for(lambda: all(c.count("2") >= 20 or c.failures for c in clients), timeout=30, what="traffic on v2")

        wait_for(lambda: loads() == 4, timeout=30, interval=0.1, what="both workers to load v2")

        # A corrupt model published now is refused by both workers; v2 keeps answering.
        publish_broken(first_dir, 3, lambda d: (d / "model.npz").write_bytes(b"PK\x03\x04truncated"))
        published = snapshot()
        wait_for(lambda: refusals() == 2, timeout=30, what="both workers to refuse v3")
        assert server.logs().count("refused model 3") == 2
        seen = [len(c.versions) for c in clients]
        wait_for(
            lambda: all(len(c.versions) >= n + 10 or c.failures for c, n in zip(clients, seen, strict=True)),
            timeout=30,
            what="more traffic after the refusal",
        )
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=20)

    assert [c.failures for c in clients] == [[]] * len(clients)
    for c in clients:
        # Old, then new, never back; the corrupt v3 never answered.
        first_new = c.versions.index("2")
        assert set(c.versions[:first_new]) == {"1"}
        assert set(c.versions[first_new:]) == {"2"}, "a client went back to the old version or saw v3"

    served = sum(len(c.versions) for c in clients)

    def predict_count() -> float | None:
        status, _, body = server.request("GET", "/metrics")
        assert status == 200
        return metric_value(body.decode(), "serving_http_requests_total", endpoint="/predict", status="200")

    # Aggregated over both workers: every client request is counted once. The middleware counts a
    # request after its response is sent, so the last one may land a moment after the client has it.
    wait_for(lambda: predict_count() == served, timeout=10, what=f"{served} predictions counted")
    assert predict_count() == served
    text = server.request("GET", "/metrics")[2].decode()
    assert metric_value(text, "serving_predictions_total", class_name="setosa") == served
    assert metric_value(text, "serving_model_info", version="2", run_id="run-2") == 1
    assert metric_value(text, "serving_model_info", version="1", run_id="run-1") == 0
    assert metric_value(text, "serving_model_reloads_total", result="loaded") == 4  # 2 workers x 2 versions
    assert metric_value(text, "serving_model_reloads_total", result="refused") == 2
    assert metric_value(text, "serving_model_loaded") == 1
    assert snapshot() == published  # the server never writes into MODELS_DIR

    assert server.stop() == 0
    assert "Traceback" not in server.logs()
    assert "died" not in server.logs()  # no worker was killed and restarted by the supervisor


def test_starts_without_a_model_and_becomes_ready_when_one_is_published(start_server, publish, trained):
    server = start_server(WORKERS="1")
    status, headers, _ = server.request("GET", "/ready")
    assert status == 503
    status, headers, body = server.request("POST", "/predict", BODY)
    assert status == 503
    assert headers["Retry-After"] == "1"
    publish(trained["small"], 1)
    wait_for(lambda: server.request("GET", "/ready")[0] == 200, timeout=30, what="readiness after publishing")
    status, _, body = server.request("POST", "/predict", BODY)
    assert json.loads(body)["class_name"] == "setosa"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("WORKERS", "two", "valid integer"),
        ("WORKERS", "0", "greater than or equal to 1"),
        ("PORT", "70000", "less than or equal to 65535"),
        ("RELOAD_INTERVAL_SECONDS", "-1", "greater than 0"),
        ("MODEL_NAME", "../etc", "plain directory name"),
        ("WORKER_HEALTHCHECK_TIMEOUT_SECONDS", "0.5", "valid integer"),
    ],
)
def test_bad_setting_fails_fast_naming_it(tmp_path, name, value, reason):
    env = {**os.environ, "PYTHONPATH": str(SERVING_DIR), "MODELS_DIR": str(tmp_path), name: value}
    proc = subprocess.run(
        [sys.executable, "-m", "app.serve"], cwd=SERVING_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"invalid setting {name}={value!r}" in proc.stderr
    assert reason in proc.stderr
