"""The Go floor (bench/gofloor): it builds with the standard library only and answers like the FastAPI floor."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from bench.run import GOFLOOR_DIR

ROW = [5.1, 3.5, 1.4, 0.2]


def test_go_module_has_no_dependencies():
    mod = (GOFLOOR_DIR / "go.mod").read_text()
    assert "require" not in mod
    assert not (GOFLOOR_DIR / "go.sum").exists()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")
def test_go_floor_builds_and_answers(tmp_path):
    binary = tmp_path / "gofloor"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=GOFLOOR_DIR,
        env={**os.environ, "GOTOOLCHAIN": "local"},
        check=True,
        timeout=600,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(binary), "-addr", f"127.0.0.1:{port}"], env={**os.environ, "GOMAXPROCS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        status, one = post(base + "/predict", json.dumps({"features": ROW}).encode())
        assert status == 200 and one["class_name"] == "setosa"
        status, batch = post(base + "/predict", json.dumps({"instances": [ROW] * 100}).encode())
        assert status == 200 and len(batch["predictions"]) == 100
        for bad in (
            {"features": ROW[:3]},
            {"features": ROW, "instances": [ROW]},
            {},
            {"features": ROW, "extra": 1},
            {"instances": []},
            {"instances": [ROW] * 1001},
            {"features": ["5.1", 3.5, 1.4, 0.2]},
        ):
            assert post(base + "/predict", json.dumps(bad).encode())[0] == 422, bad
        assert post(base + "/predict", b"not json")[0] == 422
    finally:
        server.terminate()
        server.wait(timeout=10)
