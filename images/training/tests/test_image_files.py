"""The image's requirements and Dockerfile keep the shape the other parts rely on."""

from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from trainer_testlib import IMAGE_DIR, REPO_DIR


def _pins(path):
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def test_requirements_are_exact_pins_matching_requirements_dev():
    image, dev = _pins(IMAGE_DIR / "requirements.txt"), _pins(REPO_DIR / "requirements-dev.txt")
    for name in ("mlflow", "scikit-learn", "matplotlib", "skops", "joblib", "numpy", "requests"):
        assert name in image, name
    mismatched = {n: (v, dev.get(n)) for n, v in image.items() if dev.get(n) != v}
    assert mismatched == {}


def test_dockerfile_shape():
    text = (IMAGE_DIR / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert "FROM ${BASE_IMAGE} AS build" in lines and "FROM ${BASE_IMAGE}" in lines
    assert "USER 10001:10001" in lines
    assert lines[-1] == 'CMD ["python", "-m", "trainer"]'
    # dependencies before source
    assert text.index("COPY requirements.txt") < text.index("pip install") < text.index("COPY trainer/")
    assert not re.search(r"RUN --mount|<<", text), "the legacy builder has no RUN --mount or heredocs"
    ignored = (IMAGE_DIR / ".dockerignore").read_text().split()
    assert "tests/" in ignored and "**/__pycache__/" in ignored
