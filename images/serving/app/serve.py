"""Production entry point: ``python -m app.serve`` serves the app with WORKERS processes on PORT.

It checks the settings (an invalid one: exit 2 naming the variable, the value and what is
allowed), empties the metrics directory, binds the listening socket and then replaces itself
(``exec``, same PID) with ``app.supervisor``, a standard-library-only process that starts the
workers (``app.worker``: uvicorn with app.main, each with its own model holder, hot-reloaded) on
that socket and keeps them alive. Metrics from all workers are aggregated through
PROMETHEUS_MULTIPROC_DIR (default /tmp/prometheus-multiproc, emptied at start: /tmp is the only
writable path in the container).
"""

from __future__ import annotations

import os
import shutil
import socket
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


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker shares, inherited across exec (as uvicorn binds it)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


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

    try:
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        print(f"cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    from .supervisor import python_module  # standard library only

    argv = [*python_module("supervisor"), "--fd", str(sock.fileno())]
    argv += ["--workers", str(settings.workers)]
    argv += ["--healthcheck-timeout", str(settings.worker_healthcheck_timeout_seconds)]
    argv += ["--log-level", settings.log_level]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    argv += ["--url", f"http://{host}:{settings.port}"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
