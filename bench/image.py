"""Serving image size and container start -> ready, when a Docker engine answers and the image exists.

Nothing is built here. ``auto`` renders the stack (``npm run render``) to learn the serving
image's name for this tree (tagged with the content hash of its build context, as the e2e tier
and ``pulumi up`` build it) and measures that image only if it exists locally.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

READY_DEADLINE_S = 60.0


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def rendered_serving_image(repo: Path) -> str:
    """The serving image reference the stack declares for this tree; raises RuntimeError saying why not."""
    if not (repo / "node_modules").is_dir():
        raise RuntimeError("no node_modules to render the stack with (npm ci)")
    with tempfile.TemporaryDirectory(prefix="ops-demo-bench-render-") as out:
        proc = subprocess.run(
            ["npm", "run", "--silent", "render", "--", "--stack", "k3s", "--out", out],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm run render failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        resources = json.loads((Path(out) / "resources.json").read_text())
    names = [
        r["inputs"].get("imageName")
        for r in resources
        if r["type"] == "docker:index/image:Image"
        and str(r["inputs"].get("imageName", "")).split(":")[-1].startswith("serving")
    ]
    if len(names) != 1:
        raise RuntimeError(f"expected one serving image in the rendered stack, found {names}")
    return names[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_to_ready(ref: str, models_dir: Path) -> float:
    """Seconds from `docker run` to GET /ready answering 200, with models_dir mounted read-only at /models."""
    port = _free_port()
    argv = [
        "run", "-d", "--rm", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001",
        "-v", f"{models_dir}:/models:ro", "-p", f"127.0.0.1:{port}:8000", ref,
    ]  # fmt: skip
    t0 = time.monotonic()
    cid = docker(*argv).stdout.strip()
    try:
        while time.monotonic() - t0 < READY_DEADLINE_S:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.05)
        logs = docker("logs", "--tail", "20", cid, check=False)
        tail = (logs.stdout + logs.stderr).strip().splitlines()[-1:] or ["no log"]
        raise RuntimeError(f"{ref} not ready within {READY_DEADLINE_S:.0f}s (last log line: {tail[0][:150]})")
    finally:
        docker("rm", "-f", cid, check=False)


def measure_image(spec: str, models_dir: Path, log: Callable[[str], None], repo: Path) -> dict:
    """{"ref", "created", "size_mb", "ready_s"} or {"note": why not measured}."""
    if spec == "none":
        return {"note": "Not measured (--image none)"}
    try:
        if docker("info", check=False, timeout=20).returncode != 0:
            return {"note": "Not measured: no Docker engine answers"}
    except (OSError, subprocess.TimeoutExpired):
        return {"note": "Not measured: no Docker engine answers"}
    if spec == "auto":
        try:
            ref = rendered_serving_image(repo)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            return {"note": f"Not measured: {exc}"}
    else:
        ref = spec
    inspect = docker("image", "inspect", "-f", "{{.Size}} {{.Created}}", ref, check=False)
    if inspect.returncode != 0:
        if spec == "auto":
            return {
                "note": f"Not measured: the serving image of this tree, `{ref}`, is not built "
                "(the e2e tier builds it: `npm test -- e2e`)"
            }
        return {"note": f"Not measured: image `{ref}` does not exist locally"}
    size, created = inspect.stdout.split()
    out = {"ref": ref, "created": created[:16].replace("T", " ") + " UTC", "size_mb": int(size) / 1e6}
    log(f"image {ref}: {out['size_mb']:.0f} MB; timing container start -> ready")
    try:
        out["ready_s"] = start_to_ready(ref, models_dir)
        log(f"image {ref}: ready {out['ready_s']:.1f} s after docker run")
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out["note"] = str(exc).splitlines()[0][:200]
        log(f"image {ref}: start -> ready not measured: {exc}")
    return out
