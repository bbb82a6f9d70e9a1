"""The image's pins and Dockerfile shape (the image itself is built and run by the e2e tier)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SERVING_DIR = Path(__file__).resolve().parents[1]
ROOT = SERVING_DIR.parents[1]
# uvicorn with the two of its "standard" extras the app runs on (httptools, uvloop); not watchfiles
# (reload), websockets (no WebSocket routes) or PyYAML (YAML log configs): every worker imported them.
ROOTS = [
    "fastapi",
    "uvicorn",
    "httptools",
    "uvloop",
    "pydantic-settings",
    "prometheus-client",
    "numpy",
    "swagger-ui-bundle-v2",
]
# The server reads model.npz with numpy alone: no scikit-learn, and nothing that unpickles.
FORBIDDEN = {
    "mlflow",
    "mlflow-skinny",
    "matplotlib",
    "pandas",
    "pyarrow",
    "flask",
    "sqlalchemy",
    "scikit-learn",
    "scipy",
    "joblib",
    "cloudpickle",
    "skops",
}


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not pinned exactly (name==version)"
            out[canonicalize_name(name)] = version
    return out


def closure(roots: list[str]) -> set[str]:
    """Every distribution the roots need in this (requirements-dev) environment."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    done_extras: set[tuple[str, str]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in seen and all((name, e) in done_extras for e in extras):
            continue
        seen.add(name)
        done_extras |= {(name, e) for e in extras}
        for spec in md.distribution(name).requires or []:
            dep = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append(dep)
    return seen


def test_requirements_are_the_dev_pins_and_complete():
    image = pins(SERVING_DIR / "requirements.txt")
    dev = pins(ROOT / "requirements-dev.txt")
    wrong = {n: (v, dev.get(n)) for n, v in image.items() if dev.get(n) != v}
    assert not wrong, f"pins differing from requirements-dev.txt (image, dev): {wrong}"
    assert set(image) == closure(ROOTS), "requirements.txt is not exactly the dependency closure of the image"
    assert not FORBIDDEN & set(image)


def test_dockerfile_shape():
    text = (SERVING_DIR / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert lines[1] == "FROM ${BASE_IMAGE} AS build"
    assert "ARG PIP_NO_INDEX" in lines
    assert "FROM ${BASE_IMAGE}" in lines
    assert "USER 10001:10001" in lines
    cmd = [ln for ln in lines if ln.startswith("CMD ")]
    assert len(cmd) == 1 and json.loads(cmd[0][4:]) == ["python", "-m", "app.serve"]
    # dependencies before source
    assert text.index("COPY requirements.txt") < text.index("COPY --from=build") < text.index("COPY app/")
    assert not re.search(r"RUN --mount|<<", text), "the legacy builder has no RUN --mount and no heredocs"


def test_dockerignore_keeps_tests_and_caches_out():
    ignored = set((SERVING_DIR / ".dockerignore").read_text().split())
    assert {"tests/", "**/__pycache__/", ".venv/", ".pytest_cache/"} <= ignored
    assert (SERVING_DIR / "wheels" / ".gitkeep").exists()


def test_the_app_imports_neither_scikit_learn_nor_an_unpickler():
    """Loading the app and its server entry point pulls in none of what the image leaves out."""
    code = (
        "import sys, app.main, app.serve, app.forest; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'joblib', 'cloudpickle', 'skops'}))"
    )
    env = {**os.environ, "MODELS_DIR": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], cwd=SERVING_DIR, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
