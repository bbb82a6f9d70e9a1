"""Fixtures of the end-to-end tier: render the k3s stack, build its images, run its pods on Docker.

Run through tests/e2e/run (it prepares the engine, the base image and the wheelhouses first).
Environment (set by tests/e2e/run):
  E2E_BASE_IMAGE   BASE_IMAGE of both builds (default ops-demo-base:bookworm)
  PIP_SOURCE       index|wheelhouse, passed to tests/e2e/build-images.sh
  E2E_KEEP=1       keep containers, networks and the work directory after the run (for debugging)
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import Cluster  # noqa: E402
from stack import SpecError, Stack, config_keys, render  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class Report:
    """What step 6 prints: rows of (what, value)."""

    def __init__(self) -> None:
        self.sections: dict[str, list[tuple[str, str]]] = {}

    def add(self, section: str, what: str, value: str) -> None:
        self.sections.setdefault(section, []).append((what, value))

    def table(self) -> str:
        rows = [(s, w, v) for s, items in self.sections.items() for w, v in items]
        if not rows:
            return "(nothing measured)"
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{'measure':<{w0}}  {'of':<{w1}}  value", f"{'-' * w0}  {'-' * w1}  {'-' * 12}"]
        lines += [f"{s:<{w0}}  {w:<{w1}}  {v}" for s, w, v in rows]
        return "\n".join(lines)


class E2E:
    """State shared by the ordered steps of the scenario."""

    def __init__(self, workdir: Path, cluster: Cluster, report: Report):
        self.workdir = workdir
        self.cluster = cluster
        self.report = report
        self.storage_dir = workdir / "storage" / "mlops"
        self.base_image = os.environ.get("E2E_BASE_IMAGE", "ops-demo-base:bookworm")
        self.keys = config_keys(REPO)
        self.renders = 0
        self.values: dict[str, object] = {}

    def overrides(self, **extra: str) -> dict[str, str]:
        """Config for a render on this machine: the temp storageDir, no sudo, the local base image."""
        if "storageDir" not in self.keys:
            raise SpecError(f"Pulumi.yaml declares no storageDir config key (keys: {sorted(self.keys)})")
        o = {"storageDir": str(self.storage_dir)}
        if "sudo" in self.keys:
            o["sudo"] = "false"
        if "baseImage" in self.keys:
            o["baseImage"] = self.base_image
        o.update(extra)
        return o

    def render(self, **extra: str) -> Stack:
        self.renders += 1
        out = self.workdir / f"render-{self.renders}"
        return render(REPO, out, self.overrides(**extra))

    def build_images(self, stack: Stack, images: set[str]) -> None:
        """Builds every image the pods use, under exactly the names the render gives, from the
        build context the program declares for it."""
        builds = stack.image_builds()
        specs = []
        for image in sorted(images):
            if image not in builds:
                raise SpecError(f"pods use image {image!r}, which no image resource builds (built: {sorted(builds)})")
            context = builds[image].resolve()
            if context.parent != (REPO / "images").resolve():
                raise SpecError(f"image {image} builds from {context}, not from a directory under {REPO / 'images'}")
            specs.append(f"{context.name}={image}")
        timings = self.workdir / "build-timings.tsv"
        cmd = [str(HERE / "build-images.sh"), "--base", self.base_image, "--timings", str(timings), *specs]
        print(f"\n$ {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, cwd=REPO, timeout=1800)
        if proc.returncode != 0:
            raise AssertionError(f"building the images failed (exit {proc.returncode}); see the output above")
        for line in timings.read_text().splitlines():
            name, image, secs = line.split("\t")
            size = subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Size}}", image],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            self.report.add("image size", image, f"{int(size) / 2**20:.0f} MiB")
            self.report.add("build time", image, f"{secs} s")


@pytest.fixture(scope="session")
def e2e():
    if shutil.which("docker") is None:
        pytest.fail("docker is not installed: run scripts/docker-engine (tests/e2e/run does)")
    run_id = secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"ops-demo-e2e-{run_id}-", dir="/var/tmp"))
    os.chmod(workdir, 0o755)
    cluster = Cluster(run_id)
    report = Report()
    state = E2E(workdir, cluster, report)
    print(f"\ne2e run {run_id}: work directory {workdir}", flush=True)
    try:
        yield state
    finally:
        if not state.values.get("summary_printed"):  # step 6 did not get to print it
            print(f"\n===== summary so far (run {run_id}) =====\n{report.table()}", flush=True)
        if os.environ.get("E2E_KEEP") == "1":
            print(f"E2E_KEEP=1: leaving containers (label ops-demo-e2e={run_id}) and {workdir}")
        else:
            removed = cluster.teardown()
            print(f"teardown: removed {len(removed)} containers/networks of run {run_id}")
            shutil.rmtree(workdir, ignore_errors=True)


# --- ordered steps: a failed step skips the rest; a failure prints the containers' logs --------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "e2e" in item.fixturenames:
        item.session._e2e_failed = item.name  # type: ignore[attr-defined]
        state = item.funcargs.get("e2e")
        if state is not None:
            logs = state.cluster.dump_logs()
            rep.sections.append(("container logs", logs or "(no containers were started)"))


def pytest_runtest_setup(item):
    failed = getattr(item.session, "_e2e_failed", None)
    if failed and "e2e" in item.fixturenames:
        pytest.skip(f"an earlier step failed ({failed})")


@pytest.fixture
def deadline():
    """deadline(seconds) -> a function telling whether time is left."""

    def make(seconds: float):
        end = time.monotonic() + seconds
        return lambda: time.monotonic() < end

    return make
