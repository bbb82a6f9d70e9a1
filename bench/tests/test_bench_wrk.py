"""The wrk side of the benchmark: its output parsed, its Lua script, its command line."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import threading

import pytest

from bench import wrk

# Real `wrk --latency` output (wrk 4.1.0), with the error lines wrk adds when there are errors.
OUTPUT_WITH_ERRORS = """\
Running 10s test @ http://127.0.0.1:41234/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.52ms    3.21ms  62.10ms   81.30%
    Req/Sec     3.05k   210.44     3.40k    70.00%
  Latency Distribution
     50%    9.87ms
     75%   11.02ms
     90%   13.40ms
     99%    1.02s
  30412 requests in 10.01s, 7.20MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 17
Requests/sec:   3038.21
Transfer/sec:    736.52KB
"""

OUTPUT_CLEAN = """\
Running 2s test @ http://127.0.0.1:18765/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  101.00us   2.10ms   90.00%
    Req/Sec     1.20k    40.00     1.30k    75.00%
  Latency Distribution
     50%  790.00us
     75%  850.00us
     90%  920.00us
     99%    1.50ms
  2401 requests in 2.00s, 1.01MB read
Requests/sec:   1200.50
Transfer/sec:    517.00KB
"""


def test_parses_throughput_percentiles_and_errors():
    r = wrk.parse_output(OUTPUT_WITH_ERRORS)
    assert (r.requests, r.seconds, r.rps) == (30412, 10.01, 3038.21)
    assert (r.p50_ms, r.p75_ms, r.p90_ms, r.p99_ms) == (9.87, 11.02, 13.4, 1020.0)
    assert (r.non_2xx, r.socket_errors, r.timeouts) == (17, 6, 4)
    assert r.errors == 27
    assert r.to_dict()["errors"] == 27


def test_microseconds_and_no_error_lines():
    r = wrk.parse_output(OUTPUT_CLEAN)
    assert r.p50_ms == pytest.approx(0.79)
    assert r.p99_ms == 1.5
    assert r.errors == 0
    assert (r.requests, r.rps) == (2401, 1200.5)


@pytest.mark.parametrize(
    ("text", "ms"), [("812.00us", 0.812), ("1.23ms", 1.23), ("2.00s", 2000.0), ("1.50m", 90_000.0), ("7ms", 7.0)]
)
def test_duration_units(text, ms):
    assert wrk.duration_ms(text) == pytest.approx(ms)


def test_output_without_latency_distribution_is_refused():
    without = "\n".join(line for line in OUTPUT_CLEAN.splitlines() if not re.match(r"\s*\d+%", line))
    with pytest.raises(wrk.WrkOutputError, match=r"50%, 75%, 90%, 99%.*--latency"):
        wrk.parse_output(without)
    with pytest.raises(wrk.WrkOutputError, match="Requests/sec"):
        wrk.parse_output(OUTPUT_CLEAN.replace("Requests/sec:", "Req:"))
    with pytest.raises(wrk.WrkOutputError, match="not a wrk duration"):
        wrk.duration_ms("12 parsecs")


def test_lua_long_string_never_closes_early():
    assert wrk.lua_string('{"a":1}') == '[[{"a":1}]]'
    assert wrk.lua_string("x]]y") == "[=[x]]y]=]"
    assert wrk.lua_string("x]]y]=]z") == "[==[x]]y]=]z]==]"


def test_command_pins_wrk_when_asked(tmp_path):
    argv = wrk.command("http://127.0.0.1:1/predict", tmp_path / "s.lua", 32, 10, cpu=1)
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[3:7] == ["wrk", "-t1", "-c32", "-d10s"]
    assert "--latency" in argv
    assert wrk.command("http://h/", tmp_path / "s.lua", 1, 2.4)[:4] == ["wrk", "-t1", "-c1", "-d2s"]


@contextlib.contextmanager
def tiny_server(answer):
    """A threaded HTTP/1.1 server on a free loopback port, yielded; every POST gets ``answer(request, body)``
    as its status and ``{}`` as its body."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else every answer waits for the client's delayed ACK (~40 ms)

        def do_POST(self):  # noqa: N802 - the stdlib's name
            status = answer(self, self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_wrk_posts_the_script_body_verbatim(tmp_path):
    """A real wrk run against a tiny server: method, content type and body arrive exactly as scripted."""
    seen: list[tuple[str, str, bytes]] = []

    def answer(request, body: bytes) -> int:
        seen.append((request.command, request.headers["Content-Type"], body))
        return 200 if len(seen) % 2 else 500  # every other answer is an error wrk must count

    with tiny_server(answer) as port:
        body = {"features": [5.1, 3.5, 1.4, 0.2], "note": "a ]] inside"}
        script = wrk.lua_script(body, tmp_path / "body.lua")
        result, raw = wrk.run(wrk.command(f"http://127.0.0.1:{port}/predict", script, 1, 1))
    assert seen, raw
    assert {(m, ct) for m, ct, _ in seen} == {("POST", "application/json")}
    assert {b for _, _, b in seen} == {json.dumps(body, separators=(",", ":")).encode()}
    assert result.requests >= 1
    assert result.non_2xx >= result.requests // 2 - 1  # the 500s were counted as errors


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_a_failing_wrk_is_reported_with_its_output():
    with pytest.raises(RuntimeError, match=r"exited with 1:[\s\S]*invalid URL: not-a-url"):
        wrk.run(["wrk", "-c1", "-d1s", "not-a-url"])


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_parity_cycles_give_each_paths_ratio_to_predict_per_cycle(tmp_path, monkeypatch):
    """Real wrk runs in turn against a tiny server: a path 4 ms slower per request reads far below /predict;
    a path answering errors gives no ratio and is listed as failed, without losing the other path's."""
    import argparse
    import time
    from pathlib import Path

    from bench import run

    def answer(request, body: bytes) -> int:
        if request.path == "/slow":
            time.sleep(0.004)
        return 500 if request.path == "/broken" else 200

    def endpoint(key: str, path: str) -> run.Endpoint:
        return run.Endpoint(key, key, path, lambda rows: {"features": rows[0]}, lambda answer, rows: None)

    monkeypatch.setattr(run, "SCENARIOS", (run.Scenario("row-c1", "1 row, c=1", 1, 1),))
    args = argparse.Namespace(parity_slices=2, parity_seconds=1)
    with tiny_server(answer) as port:
        spec = run.Server("serving", "tiny", [], Path("."), {}, "/", [], port=port)
        fast, slow, broken = endpoint("serving", "/predict"), endpoint("slow", "/slow"), endpoint("broken", "/broken")
        got, failures = run.parity_cycles(spec, [fast, slow], [[5.1, 3.5, 1.4, 0.2]], args, tmp_path, None, 1)
        assert failures == []
        assert list(got) == ["row-c1"] and list(got["row-c1"]) == ["slow"]
        ratios = got["row-c1"]["slow"]
        assert len(ratios) == 2 and all(0 < r < 0.5 for r in ratios), ratios
        got, failures = run.parity_cycles(spec, [fast, slow, broken], [[5.1]], args, tmp_path, None, 1)
        assert list(got["row-c1"]) == ["slow"] and len(got["row-c1"]["slow"]) == 2
        assert len(failures) == 2 and all(f.startswith("broken 1 row, c=1 cycle") for f in failures), failures
        assert run.parity_cycles(spec, [slow, broken], [[5.1]], args, tmp_path, None, 1) == ({}, [])  # no /predict
