"""What a server's processes do, read from /proc (Linux) and ``ss``: CPU, memory, context switches, connections.

A server is a process tree (uvicorn's supervisor and its workers, gunicorn's arbiter and workers,
MLServer and its inference workers, one Go process). :func:`snapshot` reads every process of the
tree; two snapshots around a wrk run give each process's share of the CPU, its context switches
and (sampled mid-run by :func:`connections_by_pid`) how many of wrk's connections it holds.
Where /proc or ``ss`` are missing the values are simply absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SS_PID = re.compile(r"pid=(\d+)")


def cpu_count(cpus: str) -> int:
    """Number of CPUs in a taskset list ("0", "0-2", "0,2-3")."""
    n = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in (PROC / str(pid) / "task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (breadth first)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        if p in pids or not (PROC / str(p)).exists():
            continue
        pids.append(p)
        todo += children(p)
    return pids


def _status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    except OSError:
        pass
    return out


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def process(pid: int) -> dict | None:
    """One process: cpu seconds (user+system), RSS/PSS (KiB), threads, context switches of all its threads."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)
    status = _status(pid)
    pss = None
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = _kib(line.split(":", 1)[1])
    except OSError:
        pass
    switches = 0
    for task in (PROC / str(pid) / "task").glob("*"):
        st = {}
        try:
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches") or "ctxt_switches:" in line:
                    key, _, value = line.partition(":")
                    st[key] = int(value)
        except (OSError, ValueError):
            continue
        switches += st.get("voluntary_ctxt_switches", 0) + st.get("nonvoluntary_ctxt_switches", 0)
    return {
        "pid": pid,
        "name": status.get("Name", "?"),
        "cpu_s": cpu_s,
        "rss_kib": _kib(status.get("VmRSS")),
        "pss_kib": pss,
        "threads": int(status.get("Threads", "1")),
        "ctxsw": switches,
    }


def snapshot(pid: int) -> dict[int, dict]:
    """Every process of the tree rooted at ``pid``."""
    out = {}
    for p in tree(pid):
        info = process(p)
        if info:
            out[p] = info
    return out


def memory(snap: dict[int, dict]) -> dict:
    """RSS and PSS of a whole tree in MiB, and the number of processes."""
    rss = sum(p["rss_kib"] for p in snap.values()) / 1024
    pss_values = [p["pss_kib"] for p in snap.values() if p["pss_kib"] is not None]
    pss = sum(pss_values) / 1024 if len(pss_values) == len(snap) else None
    return {"rss_mib": rss, "pss_mib": pss, "processes": len(snap)}


def connections_by_pid(port: int) -> dict[int, int]:
    """Established TCP connections to local ``port`` per owning process (``ss -tnp``; root sees every process)."""
    if not shutil.which("ss"):
        return {}
    proc = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    )
    return parse_ss(proc.stdout)


def parse_ss(text: str) -> dict[int, int]:
    """Connections per owning pid; those no process has accepted yet (still in the listen queue) under pid 0."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        pids = {int(p) for p in _SS_PID.findall(line)} or {0}
        for p in pids:  # a socket shared by several processes counts for each (inherited listeners only)
            out[p] = out.get(p, 0) + 1
    return out


def split(
    before: dict[int, dict], after: dict[int, dict], conns: dict[int, int], requests: int, root: int | None = None
) -> dict:
    """Per-process CPU seconds, context switches and connections over one run, busiest first.

    ``cpu_share`` is each process's share of the tree's CPU time in the run; ``ctxsw_per_request``
    the context switches of the whole tree per request.
    """
    rows = []
    for pid, end in after.items():
        start = before.get(pid)
        if start is None:
            continue
        rows.append(
            {
                "pid": pid,
                "name": end["name"],
                "cpu_s": round(end["cpu_s"] - start["cpu_s"], 3),
                "ctxsw": end["ctxsw"] - start["ctxsw"],
                "threads": end["threads"],
                "conns": conns.get(pid, 0),
                "root": pid == root,  # the process that was started (supervisor, arbiter), not a worker
            }
        )
    total_cpu = sum(r["cpu_s"] for r in rows)
    for r in rows:
        r["cpu_share"] = round(r["cpu_s"] / total_cpu, 3) if total_cpu > 0 else 0.0
    rows.sort(key=lambda r: (-r["cpu_s"], r["pid"]))
    busy = [r for r in rows if r["cpu_s"] > 0.02 * total_cpu or r["conns"]]
    return {
        "processes": busy,
        "queued": conns.get(0, 0),  # wrk's connections not accepted by any process halfway through the run
        "cpu_s": round(total_cpu, 3),
        "cpu_ms_per_request": round(1000 * total_cpu / requests, 4) if requests else None,
        "ctxsw_per_request": round(sum(r["ctxsw"] for r in rows) / requests, 3) if requests else None,
    }


def describe_split(procs: dict) -> str:
    """ "conns 6/2, CPU 75/25%" over the processes that served (busiest first); the started process (supervisor,
    arbiter: ``root``) is named apart when it used CPU: "CPU 60/37%, supervisor 3%". A process of the server that
    used CPU but held none of wrk's connections shows as a 0 (MLServer's inference workers, say)."""
    rows = procs.get("processes") or []
    if not rows:
        return "n/a"
    workers = [r for r in rows if not r.get("root")] or rows
    root = [r for r in rows if r.get("root") and r is not workers[0]]
    parts = []
    if any(r["conns"] for r in rows):
        held = sorted(
            (r for r in rows if r["conns"] or (r in workers and r["cpu_share"] > 0.1)), key=lambda r: -r["conns"]
        )
        parts.append("conns " + "/".join(str(r["conns"]) for r in held))
    if procs.get("queued"):
        parts.append(f"{procs['queued']} not accepted")
    shares = [f"{100 * r['cpu_share']:.0f}" for r in workers if r["cpu_share"] >= 0.01]
    text = "CPU " + "/".join(shares) + "%"
    if root and root[0]["cpu_share"] >= 0.01:
        text += f", supervisor {100 * root[0]['cpu_share']:.0f}%"
    parts.append(text)
    return ", ".join(parts)
