"""One serving worker, started by app.supervisor: uvicorn's server for app.main on an inherited socket.

``--fd``: the listening socket (bound once by ``app.serve``, shared by every worker: the kernel
hands each new connection to one of them). ``--health-fd``: a pipe to the supervisor; a thread
writes ``r`` once the server has started and ``.`` every second (``HEARTBEAT_SECONDS``). If the
supervisor is gone (the pipe is broken) the worker sends itself SIGTERM: uvicorn shuts down
gracefully, and a worker still loading (no handler yet) ends at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import socket
import sys
import threading
import time

HEARTBEAT_SECONDS = 1.0
STARTING_POLL_SECONDS = 0.05


class Heartbeat(threading.Thread):
    """Tells the supervisor this process lives (``.``), and when its server has started (``r``)."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.fd = fd
        self.server = None  # uvicorn.Server, once created

    def run(self) -> None:
        told_ready = False
        while True:
            ready = self.server is not None and self.server.started
            try:
                os.write(self.fd, b"r" if ready and not told_ready else b".")
            except OSError:  # the supervisor is gone: stop as on SIGTERM (while loading: at once)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            told_ready = told_ready or ready
            time.sleep(HEARTBEAT_SECONDS if told_ready else STARTING_POLL_SECONDS)


def uvicorn_server() -> tuple[type, type]:
    """uvicorn's ``Config`` and ``Server``, without running ``uvicorn/__init__.py`` if uvicorn is not imported yet.

    The package's ``__init__`` imports ``uvicorn.main``, the command line (click) and with it the
    supervisors (multiprocessing, tempfile, watchfiles when installed): ~1.5 MiB in every worker
    for code a worker never runs. Here the package module is made from its spec without executing
    it, and given the two names its own submodules import from it (``from uvicorn import Config``).
    """
    if "uvicorn" not in sys.modules:
        spec = importlib.util.find_spec("uvicorn")
        if spec is None:
            raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")
        package = importlib.util.module_from_spec(spec)
        sys.modules["uvicorn"] = package
        package.Config = importlib.import_module("uvicorn.config").Config  # before uvicorn.server needs it
        package.Server = importlib.import_module("uvicorn.server").Server
    from uvicorn.config import Config
    from uvicorn.server import Server

    return Config, Server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.worker")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket (inherited)")
    parser.add_argument("--health-fd", type=int, required=True, help="the pipe to the supervisor (inherited)")
    args = parser.parse_args(argv)

    heartbeat = Heartbeat(args.health_fd)
    heartbeat.start()  # beats while the app is imported and loads its model, too

    from pydantic import ValidationError

    from .config import Settings, describe_errors

    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe_errors(exc), file=sys.stderr)
        return 2

    from .serve import log_config

    Config, Server = uvicorn_server()  # noqa: N806 - classes
    config = Config(
        f"{__package__}.main:app",
        # httptools with bounded headers, read deadlines and a connection cap (app/protocol.py)
        http=f"{__package__}.protocol:LimitedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        log_config=log_config(settings.log_level),
        access_log=settings.access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        ws="none",  # no WebSocket routes: uvicorn would otherwise import the websockets package in every worker
    )
    server = Server(config)
    heartbeat.server = server
    server.run(sockets=[socket.socket(fileno=args.fd)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
