"""Production entry point: ``python -m app.serve`` runs uvicorn with WORKERS processes on PORT.

Each worker imports app.main and holds its own model (loaded in lifespan, hot-reloaded).
Metrics from all workers are aggregated through PROMETHEUS_MULTIPROC_DIR (default
/tmp/prometheus-multiproc, emptied at start: /tmp is the only writable path in the container).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DEFAULT_MULTIPROC_DIR = "/tmp/prometheus-multiproc"


def prepare_multiproc_dir() -> Path:
    """Set PROMETHEUS_MULTIPROC_DIR (before prometheus_client is imported anywhere) and empty it."""
    path = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", DEFAULT_MULTIPROC_DIR))
    if path.exists():
        # Files of a previous run would be added to this run's counters.
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_config(level: str) -> dict:
    fmt = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "app": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


def main() -> int:
    from pydantic import ValidationError

    from .config import Settings, describe_errors

    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe_errors(exc), file=sys.stderr)
        return 2
    try:
        prepare_multiproc_dir()
    except OSError as exc:
        print(f"cannot prepare PROMETHEUS_MULTIPROC_DIR: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    uvicorn.run(
        "app.main:app",
        # httptools with bounded headers, read deadlines and a connection cap (app/protocol.py)
        http="app.protocol:LimitedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config(settings.log_level),
        access_log=settings.access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        timeout_worker_healthcheck=settings.worker_healthcheck_timeout_seconds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
