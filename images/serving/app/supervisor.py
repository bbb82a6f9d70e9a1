"""The process ``python -m app.serve`` becomes: WORKERS workers on one listening socket, kept alive.

``app.serve`` checks the settings, binds the socket and then replaces itself (``exec``, same
PID) with this module. It imports only ``os``, ``select``, ``signal``, ``sys`` and ``time``: a
supervisor that holds no web framework, no pydantic and no numpy costs ~10 MiB, where uvicorn's own
(it imports uvicorn and the settings) cost ~39 MiB plus ~12 MiB for the resource tracker that
multiprocessing's ``spawn`` starts beside it. The pod's memory limit is shared by all of them.

Each worker (``python -m app.worker``) inherits the listening socket and the write end of a pipe.
It writes ``r`` once its server has started (app loaded, lifespan done) and ``.`` every second
from a thread, as uvicorn's workers answer their supervisor's pings from a thread:

- a worker that exits is replaced (at most one start per slot per ``RESTART_INTERVAL_SECONDS``);
  one that exits with 2 (invalid settings) or 3 (uvicorn's startup failure) before it was ever
  ready stops the supervisor with that code, since every replacement would fail the same way;
- a worker silent for ``--healthcheck-timeout`` seconds is killed and replaced;
- SIGTERM or SIGINT: every worker gets SIGTERM (uvicorn finishes its requests, at most 10 s), any
  still running after ``STOP_GRACE_SECONDS`` gets SIGKILL; exit 0;
- SIGHUP: the workers are replaced one by one, each new one ready before the old one stops.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

READY = b"r"
STARTUP_FAILURES = {2: "invalid settings", 3: "the app failed to start"}
STOP_GRACE_SECONDS = 15.0
"""After SIGTERM a worker gets this long (uvicorn's graceful shutdown is 10 s) before SIGKILL."""
RESTART_INTERVAL_SECONDS = 1.0
"""A slot whose worker keeps dying is restarted at most this often."""
TICK_SECONDS = 0.5
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_level = LEVELS["info"]


def python_module(module: str) -> list[str]:
    """``python [-B] -m app.<module>``: this interpreter, keeping -B (no bytecode written) if it runs with it."""
    return [sys.executable, *(["-B"] if sys.dont_write_bytecode else []), "-m", f"{__package__}.{module}"]


def log(level: str, message: str) -> None:
    """One line to stderr in the workers' log format (app/serve.py, log_config), without the logging package."""
    if LEVELS[level] < _level:
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    sys.stderr.write(f"{stamp} {level.upper()} [{os.getpid()}] app.supervisor: {message}\n")
    sys.stderr.flush()


class Worker:
    """One worker process and the read end of its health pipe."""

    def __init__(self, argv: list[str]) -> None:
        read_fd, write_fd = os.pipe()  # both close-on-exec; the write end is opened to the worker below
        try:
            os.set_inheritable(write_fd, True)
            self.pid = os.posix_spawn(argv[0], [*argv, "--health-fd", str(write_fd)], os.environ)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.health_fd = read_fd
        self.ready = False
        self.returncode: int | None = None
        self.last_seen = time.monotonic()

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal) once the process has ended, else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def read_health(self) -> None:
        try:
            data = os.read(self.health_fd, 4096)
        except BlockingIOError:
            return
        if data:
            self.last_seen = time.monotonic()
            if READY in data:
                self.ready = True
        else:  # end of file: the worker has exited (or closed its end); never select on it again
            self.close()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_seen

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.health_fd >= 0:
            os.close(self.health_fd)
            self.health_fd = -1


class Supervisor:
    def __init__(self, worker_argv: list[str], workers: int, healthcheck_timeout: float) -> None:
        self.worker_argv = worker_argv
        self.size = workers
        self.healthcheck_timeout = healthcheck_timeout
        self.slots: list[Worker | None] = [None] * workers
        self.retiring: list[Worker] = []  # replaced by a SIGHUP restart, told to stop, not yet reaped
        self.next_start = [0.0] * workers
        self.signals: list[int] = []
        self.exit_code: int | None = None
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- signals ------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w)  # a signal wakes select() at once
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _frame: self.signals.append(s))

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def stop_requested(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    # -- the loop -----------------------------------------------------------------------------------
    def wait(self, timeout: float, extra: Worker | None = None) -> None:
        """Sleep until a worker writes, a signal arrives or ``timeout`` passes; take in what was written."""
        workers = [w for w in [*self.slots, extra] if w is not None and w.health_fd >= 0]
        fds = [w.health_fd for w in workers] + [self._wake_r]
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self._wake_r in readable:
            self._drain_wakeups()
        for w in workers:
            if w.health_fd in readable:
                w.read_health()

    def start(self, slot: int) -> Worker | None:
        self.next_start[slot] = time.monotonic() + RESTART_INTERVAL_SECONDS
        try:
            worker = Worker(self.worker_argv)
        except OSError as exc:  # e.g. EAGAIN at the pod's pids limit: the slot is tried again later
            log("error", f"cannot start a worker in slot {slot}: {exc}; retrying in {RESTART_INTERVAL_SECONDS:g} s")
            self.slots[slot] = None
            return None
        self.slots[slot] = worker
        log("debug", f"started worker [{worker.pid}] in slot {slot}")
        return worker

    def run(self, url: str) -> int:
        self.install_signals()
        log("info", f"supervisor [{os.getpid()}]: {self.size} worker(s) serving {url}")
        try:
            for slot in range(self.size):
                self.start(slot)
            while self.exit_code is None:
                self.wait(TICK_SECONDS)
                self.handle_signals()
                if self.exit_code is None:
                    self.check_workers()
        finally:  # whatever happens here, no worker outlives the supervisor
            self.stop_all()
        log("info", f"stopped supervisor [{os.getpid()}]")
        return self.exit_code

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                log("info", f"received {signal.Signals(sig).name}: stopping the workers")
                self.exit_code = 0
                return
            if sig == signal.SIGHUP:
                log("info", "received SIGHUP: replacing the workers one by one")
                self.restart_all()

    def check_workers(self) -> None:
        now = time.monotonic()
        for slot, worker in enumerate(self.slots):
            if worker is None:
                if now >= self.next_start[slot]:
                    self.start(slot)
                continue
            code = worker.poll()
            if code is None and worker.silent_for() > self.healthcheck_timeout:
                log("error", f"worker [{worker.pid}] sent no health beat for {worker.silent_for():.0f} s: killing it")
                worker.signal(signal.SIGKILL)
                code = worker.wait()
            if code is None:
                continue
            worker.close()
            self.slots[slot] = None
            if not worker.ready and code in STARTUP_FAILURES:
                reason = STARTUP_FAILURES[code]
                log("error", f"worker [{worker.pid}] exited with {code} before it was ready ({reason}): stopping")
                self.exit_code = code
                return
            log("warning", f"worker [{worker.pid}] died (exit code {code}); starting another")
            if now >= self.next_start[slot]:
                self.start(slot)

    # -- stopping and replacing ---------------------------------------------------------------------
    def stop_workers(self, workers: list[Worker], grace: float, *, exiting: bool = False) -> None:
        """SIGTERM, then SIGKILL for whatever still runs after ``grace`` seconds; reaps them all.

        ``exiting``: the supervisor is stopping, and a second SIGTERM/SIGINT is passed on to the
        workers. Otherwise (a SIGHUP restart retiring a worker) signals stay queued for the main
        loop, and a stop request ends the wait at once: the workers still running are left to
        ``stop_all`` (``self.retiring``), which stops them with all the others.
        """
        for w in workers:
            w.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            if not exiting and self.stop_requested():
                self.retiring += [w for w in workers if w.poll() is None]
                for w in workers:
                    if w.poll() is not None:
                        w.close()
                return
            self.wait(min(0.1, deadline - time.monotonic()))
            while exiting and self.signals:
                sig = self.signals.pop(0)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    for w in workers:
                        w.signal(sig)
        for w in workers:
            if w.poll() is None:
                log("warning", f"worker [{w.pid}] still running {grace:.0f} s after SIGTERM: killing it")
                w.signal(signal.SIGKILL)
            w.wait()
            w.close()

    def stop_all(self) -> None:
        workers = [w for w in self.slots if w is not None] + self.retiring
        self.slots = [None] * self.size
        self.retiring = []
        self.stop_workers(workers, STOP_GRACE_SECONDS, exiting=True)

    def restart_all(self) -> None:
        for slot in range(self.size):
            old = self.slots[slot]
            try:
                new = Worker(self.worker_argv)
            except OSError as exc:
                log("error", f"cannot start a worker: {exc}; keeping the old workers")
                return
            deadline = time.monotonic() + self.healthcheck_timeout
            while not new.ready and new.poll() is None and time.monotonic() < deadline:
                self.wait(min(0.1, deadline - time.monotonic()), extra=new)
                if self.stop_requested():
                    self.stop_workers([new], STOP_GRACE_SECONDS)
                    return  # the main loop stops the others
            if not new.ready:
                code = new.poll()
                why = "was not ready in time" if code is None else f"exited with {code} before it was ready"
                log("error", f"worker [{new.pid}] {why}: keeping the old workers")
                new.signal(signal.SIGKILL)
                new.wait()
                new.close()
                return
            self.slots[slot] = new
            if old is not None:
                self.stop_workers([old], STOP_GRACE_SECONDS)
            if self.stop_requested():
                return  # the main loop stops everything


def main(argv: list[str] | None = None) -> int:
    """``--fd N --workers N --healthcheck-timeout S --log-level L --url U``, as app.serve passes them."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) % 2:
        raise SystemExit(f"usage: python -m {__spec__.name} --fd N --workers N --healthcheck-timeout S ...")
    opts = dict(zip(args[::2], args[1::2], strict=True))
    global _level
    _level = LEVELS[opts.get("--log-level", "info")]
    worker_argv = [*python_module("worker"), "--fd", opts["--fd"]]
    supervisor = Supervisor(worker_argv, int(opts["--workers"]), float(opts["--healthcheck-timeout"]))
    return supervisor.run(opts.get("--url", ""))


if __name__ == "__main__":
    sys.exit(main())
