"""The process tree of ``python -m app.serve``, as real processes: a standard-library supervisor and its workers.

The production command checks its settings, binds the socket and execs app.supervisor (same PID),
which starts ``WORKERS`` ``app.worker`` processes and keeps them alive (app/supervisor.py). Here:
what the processes are and hold, and what the supervisor does when a worker dies, hangs or fails
to start, and on SIGHUP, SIGTERM and its own death. Supervisor-only cases run it with small fake
workers (a few lines of Python) instead of the app.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from serving_helpers import GUIDE_REQUEST, wait_for

SERVING_DIR = Path(__file__).resolve().parents[1]
BODY = json.dumps(GUIDE_REQUEST).encode()


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of pid, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def workers_when(server, condition, what: str, timeout: float = 30) -> list[int]:
    """The supervisor's children, once ``condition(children)`` holds."""

    def probe() -> list[int] | None:
        found = children(server.proc.pid)
        return found if condition(found) else None

    return wait_for(probe, timeout=timeout, what=what)


def two_workers(server) -> list[int]:
    return workers_when(server, lambda w: len(w) == 2, "two workers")


@pytest.fixture
def serving(start_server, publish, trained):
    publish(trained["small"], 1)
    server = start_server()
    wait_for(lambda: server.request("GET", "/ready")[0] == 200, timeout=30, what="readiness")
    return server


def test_the_command_becomes_a_small_supervisor_with_only_its_workers(serving):
    sup = serving.proc.pid
    # exec kept the PID: the process a container runtime started (and signals) is the supervisor
    argv = cmdline(sup)
    assert argv[argv.index("-m") + 1] == "app.supervisor"
    workers = two_workers(serving)
    # no multiprocessing resource tracker or anything else beside the workers
    for pid in workers:
        assert "app.worker" in cmdline(pid)
    # the supervisor loaded none of the app's native libraries: not pydantic, numpy, uvloop or OpenSSL
    maps = mapped_files(sup)
    for lib in ("_pydantic_core", "_multiarray_umath", "uvloop", "libcrypto", "_ssl"):
        assert lib not in maps, lib
    # the workers do, but not what they never run: uvicorn's command line and reloader (watchfiles,
    # installed in the dev environment) and the websockets package (no WebSocket routes)
    for pid in workers:
        maps = mapped_files(pid)
        assert "_pydantic_core" in maps and "_multiarray_umath" in maps
        assert "_rust_notify" not in maps
        assert "websockets" not in maps
        assert "numpy/random" not in maps  # the table's self-check draws its rows with Python's random


def test_a_killed_worker_is_replaced_and_the_service_goes_on(serving):
    victim, other = two_workers(serving)
    os.kill(victim, signal.SIGKILL)
    replaced = workers_when(serving, lambda w: len(w) == 2 and victim not in w, "a replacement worker")
    assert other in replaced
    assert f"worker [{victim}] died (exit code -9); starting another" in serving.logs()
    for _ in range(20):  # both workers answer (each request on a new connection)
        assert serving.request("POST", "/predict", BODY)[0] == 200


def test_sighup_replaces_every_worker_while_requests_keep_succeeding(serving):
    old = two_workers(serving)
    stop = threading.Event()
    statuses: list[int | str] = []

    def post() -> None:
        while not stop.is_set():
            try:
                statuses.append(serving.request("POST", "/predict", BODY)[0])
            except OSError as exc:
                statuses.append(f"{type(exc).__name__}: {exc}")

    clients = [threading.Thread(target=post, daemon=True) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        wait_for(lambda: len(statuses) > 20, timeout=30, what="requests before SIGHUP")
        os.kill(serving.proc.pid, signal.SIGHUP)
        new = workers_when(serving, lambda w: len(w) == 2 and not set(w) & set(old), "both replaced", timeout=60)
        before = len(statuses)
        wait_for(lambda: len(statuses) > before + 20, timeout=30, what="requests after the restart")
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=15)
    assert set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert "received SIGHUP: replacing the workers one by one" in serving.logs()
    assert all(alive(pid) for pid in new)


def test_sigterm_stops_the_workers_and_exits_0(serving):
    workers = two_workers(serving)
    assert serving.stop() == 0
    assert not any(alive(pid) for pid in workers)
    assert "received SIGTERM: stopping the workers" in serving.logs()


def test_the_workers_stop_when_the_supervisor_is_killed(serving):
    workers = two_workers(serving)
    serving.proc.kill()
    serving.proc.wait(timeout=10)
    # each worker notices at its next heartbeat (the pipe is broken) and shuts down as on SIGTERM
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30, what="the orphaned workers to exit")


# -- the supervisor alone, with fake workers ---------------------------------------------------------
_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_supervisor_left_running():
    """A failed test must not leave its supervisor (and so its fake workers) running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def run_supervisor(
    tmp_path: Path, worker_code: str, *, workers: int = 2, healthcheck: float = 5, argv: list[str] | None = None
):
    """app.supervisor's Supervisor over ``python worker.py`` (worker_code) or ``argv``, in its own process."""
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(worker_code))
    log = tmp_path / "supervisor.log"
    argv = argv or [sys.executable, str(worker)]
    code = (
        "import sys; from app.supervisor import Supervisor; "
        f"sys.exit(Supervisor({argv!r}, {workers}, {healthcheck}).run('test'))"
    )
    env = {**os.environ, "PYTHONPATH": str(SERVING_DIR)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=out, stderr=out)
    _started.append(proc)
    return proc, log


def test_a_worker_failing_at_startup_stops_the_supervisor_with_its_code(tmp_path):
    proc, log = run_supervisor(tmp_path, "import sys; sys.exit(3)")
    assert proc.wait(timeout=30) == 3
    assert "exited with 3 before it was ready (the app failed to start): stopping" in log.read_text()


def test_a_worker_that_sends_no_heartbeat_is_killed_and_replaced(tmp_path):
    # starts, never writes to its health pipe, and records its PID
    proc, log = run_supervisor(
        tmp_path,
        """
        import os, pathlib, time
        pathlib.Path(f"started-{os.getpid()}").touch()
        parent = os.getppid()
        while os.getppid() == parent:  # until killed, or orphaned
            time.sleep(0.2)
        """,
        workers=1,
        healthcheck=1,
    )
    try:
        wait_for(lambda: len(list(tmp_path.glob("started-*"))) >= 2, timeout=30, what="a second worker")
        first = min(int(p.name.split("-")[1]) for p in tmp_path.glob("started-*"))
        assert f"worker [{first}] sent no health beat" in log.read_text()
        assert not alive(first)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_worker_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    # ready at once, keeps beating, ignores SIGTERM: the supervisor must not wait for it forever
    proc, log = run_supervisor(
        tmp_path,
        """
        import os, pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fd = int(sys.argv[sys.argv.index("--health-fd") + 1])
        os.write(fd, b"r")
        pathlib.Path("ignoring").touch()
        while True:
            os.write(fd, b".")
            time.sleep(0.2)
        """,
        workers=1,
    )
    wait_for(lambda: (tmp_path / "ignoring").exists(), timeout=30, what="the worker ignoring SIGTERM")
    worker = children(proc.pid)[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0  # STOP_GRACE_SECONDS (15 s), then SIGKILL
    assert not alive(worker)
    assert f"worker [{worker}] still running 15 s after SIGTERM: killing it" in log.read_text()


BEATING_WORKER = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))  # a second to shut down
fd = int(sys.argv[sys.argv.index("--health-fd") + 1])
time.sleep(0.5)  # "loading"
pathlib.Path(f"ready-{os.getpid()}").touch()
while True:
    os.write(fd, b"r")
    time.sleep(0.2)
"""


@pytest.mark.parametrize("pause", [0.0, 0.3, 1.0, 2.0, 3.0])
def test_sigterm_during_a_sighup_restart_still_stops_everything(tmp_path, pause):
    # SIGTERM at several points of the rolling restart: a new worker loading (0.5 s), an old one
    # shutting down (1 s), for either slot; it must never be lost
    proc, log = run_supervisor(tmp_path, BEATING_WORKER, workers=2)
    wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2, timeout=30, what="two workers")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "received SIGHUP" in log.read_text(), timeout=30, what="the SIGHUP")
    threading.Event().wait(pause)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    started = [int(p.name.split("-")[1]) for p in tmp_path.glob("ready-*")]
    assert not any(alive(pid) for pid in started)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_dying_during_a_sighup_restart_does_not_make_the_supervisor_spin(tmp_path):
    # workers 1 and 2 start at once; worker 2 exits when "die" appears; worker 3 (the first
    # replacement) takes 3 s to be ready. A dead worker's pipe is at end of file: the supervisor
    # must stop watching it, not wake up for it again and again while it waits for worker 3.
    proc, log = run_supervisor(
        tmp_path,
        """
        import os, pathlib, sys, time
        fd = int(sys.argv[sys.argv.index("--health-fd") + 1])
        with open("count", "a+") as f:
            f.write("x"); f.flush(); f.seek(0); me = len(f.read())
        if me == 3:
            time.sleep(3)
        pathlib.Path(f"ready-{me}").touch()
        while True:
            if me == 2 and pathlib.Path("die").exists():
                sys.exit(1)
            os.write(fd, b"r")
            time.sleep(0.1)
        """,
        workers=2,
    )
    wait_for(lambda: (tmp_path / "ready-2").exists(), timeout=30, what="two workers")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (tmp_path / "count").read_text() == "xxx", timeout=30, what="the first replacement")
    (tmp_path / "die").touch()
    before = cpu_seconds(proc.pid)
    wait_for(lambda: (tmp_path / "ready-3").exists(), timeout=30, what="the replacement ready")
    spent = cpu_seconds(proc.pid) - before
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert spent < 1.0, f"the supervisor used {spent:.2f} s of CPU in ~3 s of waiting"


def test_a_worker_that_cannot_be_started_is_retried_and_sigterm_still_stops(tmp_path):
    proc, log = run_supervisor(tmp_path, "", workers=1, argv=[str(tmp_path / "no-such-python")])
    wait_for(lambda: log.read_text().count("cannot start a worker in slot 0") >= 2, timeout=30, what="two tries")
    assert proc.poll() is None  # the supervisor stays up, trying again once a second
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_a_fresh_silent_connection_does_not_hold_up_shutdown(serving):
    import socket as socketlib

    workers = two_workers(serving)
    silent = socketlib.create_connection(("127.0.0.1", serving.port), timeout=30)
    try:
        assert serving.request("GET", "/health")[0] == 200  # the server is accepting
        serving.proc.send_signal(signal.SIGTERM)
        # closed quietly (no 408) once SHUTDOWN_FIRST_BYTE_SECONDS have passed, not kept for the header timeout
        assert silent.recv(1024) == b""
    finally:
        silent.close()
    assert serving.proc.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in workers)
