"""Fixtures: real models trained and exported by the trainer (images/training), served from tmp_path."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SERVING_DIR = Path(__file__).resolve().parents[1]
TRAINING_DIR = SERVING_DIR.parent / "training"
for p in (SERVING_DIR, TRAINING_DIR):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from fastapi.testclient import TestClient  # noqa: E402
from serving_helpers import Server  # noqa: E402
from trainer.export import make_metadata, publish_model, write_pointer  # noqa: E402
from trainer.model import TrainResult, train_model  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

MODEL_NAME = "iris-classifier"


@pytest.fixture(scope="session")
def trained() -> dict[str, TrainResult]:
    """Two real, different models (small, so the suite stays fast)."""
    return {"small": train_model(n_estimators=10, max_depth=3), "big": train_model(n_estimators=30, max_depth=5)}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def publish(models_dir: Path) -> Callable[..., Path]:
    """publish(result, version) exports a trained model the way the trainer does; returns its directory."""

    def _publish(result: TrainResult, version: int | str, run_id: str | None = None) -> Path:
        meta = make_metadata(result, version=version, run_id=run_id or f"run-{version}", run_name=f"test-{version}")
        return publish_model(models_dir, MODEL_NAME, result.model, meta)

    return _publish


@pytest.fixture
def publish_broken(models_dir: Path) -> Callable[..., Path]:
    """publish_broken(good_dir, version, damage) copies a published version, damages the copy, points at it."""

    def _publish(good_dir: Path, version: int | str, damage: Callable[[Path], None]) -> Path:
        bad = good_dir.parent / f"broken-{version}"
        shutil.copytree(good_dir, bad)
        meta = json.loads((bad / "metadata.json").read_text())
        (bad / "metadata.json").write_text(json.dumps({**meta, "version": str(version), "run_id": f"run-{version}"}))
        damage(bad)
        pointer = {"dir": bad.name, "version": str(version), "run_id": f"run-{version}", "published_at": "now"}
        write_pointer(models_dir / MODEL_NAME, pointer)
        return bad

    return _publish


@pytest.fixture
def make_client(models_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """make_client() -> a TestClient entered as a context manager (lifespan ran); closed at teardown."""
    with contextlib.ExitStack() as stack:

        def _make(**overrides) -> TestClient:
            # swap_delay_seconds=0: each test app swaps as soon as it loads (test_serving_swap.py covers the delay)
            values = {
                "models_dir": models_dir,
                "model_name": MODEL_NAME,
                "reload_interval_seconds": 0.05,
                "swap_delay_seconds": 0,
                **overrides,
            }
            settings = Settings(**values)
            return stack.enter_context(TestClient(create_app(settings)))

        yield _make


@pytest.fixture
def client(make_client, publish, trained) -> TestClient:
    """A client over a published model version 1 (the small one)."""
    publish(trained["small"], 1)
    return make_client()


@pytest.fixture
def start_server(tmp_path, models_dir):
    servers: list[Server] = []

    def _start(**env: str) -> Server:
        server = Server(tmp_path, models_dir, **env)
        servers.append(server)
        server.wait_until_up()
        return server

    yield _start
    for server in servers:
        server.stop()
