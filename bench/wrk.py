"""wrk as the load generator: the Lua script for a JSON POST, the command line, and its output parsed.

wrk (https://github.com/wg/wrk, Debian package ``wrk``) is a C load generator; a Python client
would be the bottleneck long before the servers are. ``--latency`` prints the 50/75/90/99th
percentiles, which :func:`parse_output` reads together with requests/s and the error lines.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^([0-9.]+)(us|ms|s|m|h)$")
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkOutputError(ValueError):
    """wrk's output lacks a line the benchmark needs (it failed, or its format changed)."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (milliseconds) and errors."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0
    timeouts: int = 0

    @property
    def errors(self) -> int:
        """Failed requests: non-2xx (wrk counts 3xx with them) plus connect/read/write errors and timeouts."""
        return self.non_2xx + self.socket_errors + self.timeouts

    def to_dict(self) -> dict:
        return {**asdict(self), "errors": self.errors}


def duration_ms(text: str) -> float:
    """wrk's duration format ("812.00us", "1.23ms", "2.00s", "1.50m") in milliseconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise WrkOutputError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_output(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output; raises WrkOutputError naming what is missing."""
    percentiles = {int(p): duration_ms(v) for p, v in _PERCENTILE.findall(text)}
    missing = [f"{p}%" for p in (50, 75, 90, 99) if p not in percentiles]
    if missing:
        raise WrkOutputError(f"no latency percentile(s) {', '.join(missing)} in wrk output (was --latency given?)")
    total = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if not total or not rps:
        raise WrkOutputError("no 'N requests in T' or 'Requests/sec:' line in wrk output")
    socket = _SOCKET.search(text)
    connect, read, write, timeout = (int(x) for x in socket.groups()) if socket else (0, 0, 0, 0)
    non2xx = _NON2XX.search(text)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=duration_ms(total.group(2) + total.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=connect + read + write,
        timeouts=timeout,
    )


def lua_script(body: dict | list, path: Path) -> Path:
    """Write a wrk Lua script that POSTs ``body`` as JSON; returns its path."""
    text = json.dumps(body, separators=(",", ":"))
    path.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {lua_string(text)}\n'
    )
    return path


def lua_string(text: str) -> str:
    """A Lua long-bracket string literal holding ``text`` verbatim (no escapes are interpreted)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def wrk_version() -> str:
    path = shutil.which("wrk")
    if not path:
        return "not installed"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout + out.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def command(
    url: str, script: Path, connections: int, seconds: float, *, threads: int = 1, cpu: int | None = None
) -> list[str]:
    """The wrk command line (pinned to ``cpu`` with taskset when given)."""
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv


def run(argv: list[str]) -> tuple[WrkResult, str]:
    """Run wrk; returns the parsed result and its raw output. Raises RuntimeError when wrk fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return parse_output(proc.stdout), proc.stdout
