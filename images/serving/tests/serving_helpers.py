"""Helpers shared by the serving tests (a uniquely named module: the trainer's tests have a conftest too)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

GUIDE_REQUEST = {"features": [5.1, 3.5, 1.4, 0.2]}
SERVING_DIR = Path(__file__).resolve().parents[1]
HEADERS = {"Content-Type": "application/json"}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp_path: Path, models_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.multiproc_dir = tmp_path / f"prom-{self.port}"
        full_env = {
            **os.environ,
            "PYTHONPATH": str(SERVING_DIR),
            "MODELS_DIR": str(models_dir),
            "MODEL_NAME": "iris-classifier",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": "2",
            "RELOAD_INTERVAL_SECONDS": "0.2",
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            **env,
        }
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.serve"], cwd=SERVING_DIR, env=full_env, stdout=self.log, stderr=self.log
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=HEADERS if body else {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def wait_until_up(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return self.request("GET", "/health")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=timeout, interval=0.1, what=f"the server on port {self.port}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode
