"""Per-process readings: the process tree, CPU split, connections per process, memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench import procs

SS = """\
0      0      127.0.0.1:8000     127.0.0.1:50000 users:(("python",pid=101,fd=15))
0      0      127.0.0.1:8000     127.0.0.1:50002 users:(("python",pid=101,fd=16))
0      0      127.0.0.1:8000     127.0.0.1:50004 users:(("python",pid=102,fd=15))
"""


def test_connections_per_process_from_ss():
    assert procs.parse_ss(SS) == {101: 2, 102: 1}
    assert procs.parse_ss("") == {}
    queued = SS + "0      0      127.0.0.1:8000     127.0.0.1:50006\n"
    assert procs.parse_ss(queued) == {101: 2, 102: 1, 0: 1}


def proc(pid: int, cpu: float, switches: int, name: str = "python") -> dict:
    return {"pid": pid, "name": name, "cpu_s": cpu, "rss_kib": 1024, "pss_kib": 512, "threads": 2, "ctxsw": switches}


def test_split_shares_cpu_and_counts_per_request():
    before = {1: proc(1, 1.0, 10), 101: proc(101, 2.0, 100), 102: proc(102, 2.0, 100)}
    after = {1: proc(1, 1.0, 10), 101: proc(101, 9.5, 1100), 102: proc(102, 4.5, 600), 103: proc(103, 5.0, 0)}
    split = procs.split(before, after, {101: 6, 102: 2}, requests=1000)
    assert [p["pid"] for p in split["processes"]] == [101, 102]  # idle supervisor and a newcomer left out
    assert [p["cpu_share"] for p in split["processes"]] == [0.75, 0.25]
    assert split["cpu_ms_per_request"] == 10.0
    assert split["ctxsw_per_request"] == 1.5
    assert procs.describe_split(split) == "conns 6/2, CPU 75/25%"
    assert procs.describe_split({}) == "n/a"
    split = procs.split(before, after, {101: 6, 0: 26}, requests=1000)
    assert procs.describe_split(split) == "conns 6/0, 26 not accepted, CPU 75/25%"


def test_memory_sums_the_tree():
    mem = procs.memory({1: proc(1, 0, 0), 2: proc(2, 0, 0)})
    assert mem == {"rss_mib": 2.0, "pss_mib": 1.0, "processes": 2}


def test_a_real_process_tree():
    child = "import time; time.sleep(30)"
    code = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(procs.tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = procs.snapshot(parent.pid)
        assert len(snap) == 2 and parent.pid in snap
        me = procs.process(os.getpid())
        assert me["rss_kib"] > 1000 and me["cpu_s"] > 0 and me["threads"] >= 1
    finally:
        for pid in procs.tree(parent.pid)[::-1]:
            os.kill(pid, 9)
        parent.wait()


def test_the_supervisor_is_named_apart():
    before = {1: proc(1, 1.0, 0), 101: proc(101, 2.0, 0), 102: proc(102, 2.0, 0)}
    after = {1: proc(1, 2.0, 0), 101: proc(101, 8.0, 0), 102: proc(102, 4.0, 0)}
    split = procs.split(before, after, {101: 6, 102: 2}, requests=100, root=1)
    assert [p["root"] for p in split["processes"]] == [False, False, True]
    assert procs.describe_split(split) == "conns 6/2, CPU 67/22%, supervisor 11%"
    # MLServer: the front process holds the connections, the inference workers use the CPU
    split = procs.split(before, after, {1: 8}, requests=100, root=1)
    assert procs.describe_split(split) == "conns 8/0/0, CPU 67/22%, supervisor 11%"
