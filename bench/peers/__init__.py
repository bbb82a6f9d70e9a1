"""The bench's virtualenvs: the peers MLServer and KServe, each from its pinned requirements file here,
and the serving app's, from images/serving/requirements.txt installed as the image's Dockerfile does
(``--no-deps``; that file pins every package), so the bench measures the image's packages, not the
dev environment's.

``mlserver.txt`` and ``kserve.txt`` pin every package (``pip freeze`` of a fresh virtualenv, see
docs/testing.md, "Benchmark"); scikit-learn is the trainer's version (images/training/requirements.txt)
so both load the trainer's ``model.joblib``. The virtualenvs live outside the repository, under
``$OPS_DEMO_CACHE/bench-venvs`` (default /var/cache/ops-demo when writable, else
~/.cache/ops-demo-bench), and are created on first use; a changed requirements file recreates its
virtualenv (the file's SHA-256 is kept in the virtualenv).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = {"mlserver": HERE / "mlserver.txt", "kserve": HERE / "kserve.txt"}
SERVING = HERE.parents[1] / "images" / "serving" / "requirements.txt"
VENVS = {**PEERS, "serving": SERVING}
NO_DEPS = {"serving"}
STAMP = ".requirements.sha256"


def cache_dir() -> Path:
    """Where the peers' virtualenvs live: $OPS_DEMO_CACHE/bench-venvs, /var/cache/ops-demo/bench-venvs or ~/.cache."""
    base = os.environ.get("OPS_DEMO_CACHE")
    if base:
        return Path(base) / "bench-venvs"
    default = Path("/var/cache/ops-demo")
    if os.access(default, os.W_OK) or (not default.exists() and os.access(default.parent, os.W_OK)):
        return default / "bench-venvs"
    return Path.home() / ".cache" / "ops-demo-bench" / "venvs"


def requirements_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_python() -> str:
    """The interpreter the virtualenvs are made from: the base of the running one (3.11, as the images use)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def venv(name: str, log: Callable[[str], None] = print) -> Path:
    """The named virtualenv (its directory), created or updated from its requirements file when needed."""
    requirements = VENVS[name]
    target = cache_dir() / name
    wanted = requirements_hash(requirements)
    stamp = target / STAMP
    if stamp.exists() and stamp.read_text().strip() == wanted and (target / "bin" / "python").exists():
        return target
    log(f"creating the {name} virtualenv {target} from {requirements.relative_to(HERE.parents[1])} (once)")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([base_python(), "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    no_deps = ["--no-deps"] if name in NO_DEPS else []
    proc = subprocess.run([*pip, *no_deps, "-r", str(requirements)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install -r {requirements} failed:\n{(proc.stderr or proc.stdout)[-2000:]}")
    stamp.write_text(wanted + "\n")
    return target
