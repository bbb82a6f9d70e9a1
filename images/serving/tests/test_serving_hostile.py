"""Hostile input and clients: malformed bodies, huge batches, oversized headers, slow and stalled clients.

The in-process tests send bodies through a TestClient; the server tests run the image's command
(``python -m app.serve``) on a loopback port and talk raw sockets to it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import statistics
import time

import pytest
from serving_helpers import GUIDE_REQUEST, HEADERS, wait_for
from swagger_ui_bundle import swagger_ui_path

from app.inputs import MAX_BODY_BYTES, MAX_SEPARATORS
from app.schemas import MAX_BATCH

ROW = GUIDE_REQUEST["features"]
HUGE_BATCH = json.dumps({"instances": [[1, 1, 1, 1]] * 100_000}, separators=(",", ":")).encode()
ENDPOINTS = ("/predict", "/invocations", "/v2/models/iris-classifier/infer")

# Bodies no endpoint may answer with a 5xx (each must get a 4xx with a reason).
MALFORMED = {
    "2KB-of-[": b"[" * 2048,
    "100KB-of-[": b"[" * 100_000,
    "deep-in-a-field": b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "deep-objects": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "not-utf8": b'{"features": [\xff\xfe]}',
    "utf16-garbage": "\ufeff{".encode("utf-16"),
    "nul-bytes": b"\x00" * 64,
    "int-of-5000-digits": b'{"features": [' + b"9" * 5000 + b", 1, 1, 1]}",
    "float-overflow": b'{"features": [1e999999, 1, 1, 1]}',
    "lone-surrogate": b'{"features": ["\\ud800", 1, 1, 1]}',
    "truncated": b'{"inputs": [[5.1, 3.5',
    "empty": b"",
    "whitespace": b" \n\t ",
    "top-level-number": b"42",
    "null": b"null",
    "huge-batch": HUGE_BATCH,
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_get_a_4xx_with_a_reason(client, endpoint, name):
    resp = client.post(endpoint, content=MALFORMED[name], headers=HEADERS)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    body = resp.json()
    reason = body.get("detail") or body.get("error") or body.get("message")
    assert reason, f"no reason given: {body}"


def test_deep_nesting_names_the_reason(client):
    resp = client.post("/predict", content=b"[" * 2048, headers=HEADERS)
    assert resp.status_code == 422
    assert resp.json()["detail"][0] == {
        "field": "body",
        "loc": ["body"],
        "msg": "not valid JSON: nested too deeply",
        "type": "json_invalid",
    }
    v2 = client.post("/v2/models/iris-classifier/infer", content=b"[" * 2048, headers=HEADERS)
    assert v2.status_code == 400 and v2.json() == {"error": "body: not valid JSON: nested too deeply"}


def test_a_batch_over_the_limit_is_refused_before_it_is_parsed(client):
    resp = client.post("/predict", content=HUGE_BATCH, headers=HEADERS)
    assert resp.status_code == 413
    assert resp.headers["connection"] == "close"
    assert f"more than {MAX_SEPARATORS} values" in resp.json()["detail"]
    assert f"at most {MAX_BATCH} rows" in resp.json()["detail"]
    # The largest legal batch, even padded with whitespace and extra keys' commas, still passes.
    rows = ",\n    ".join(json.dumps([5.099999999999999, 3.5, 1.4, 0.2]) for _ in range(MAX_BATCH))
    padded = f'{{\n  "instances": [\n    {rows}\n  ]\n}}'.encode()
    assert padded.count(b",") <= MAX_SEPARATORS
    assert client.post("/predict", content=padded, headers=HEADERS).status_code == 200
    split = {"dataframe_split": {"columns": list("abcd"), "index": list(range(MAX_BATCH)), "data": [ROW] * MAX_BATCH}}
    assert client.post("/invocations", json=split).status_code == 200


def test_a_declared_content_length_over_the_limit_is_refused_unread(client):
    resp = client.post("/invocations", content=b" " * (MAX_BODY_BYTES + 1), headers=HEADERS)
    assert resp.status_code == 413
    assert resp.json()["error_code"] == "BAD_REQUEST"
    assert str(MAX_BODY_BYTES) in resp.json()["message"]


@pytest.mark.parametrize("path", ["/health", "/ready", "/v2/health/live", "/v2/health/ready", "/ping", "/model"])
def test_head_answers_like_get_without_a_body(client, path):
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_docs_work_without_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url:\s*["']([^"']+)["']""", page.text)
    assert urls, page.text
    external = [u for u in urls if "://" in u or u.startswith("//")]
    assert external == [], f"/docs loads from outside the image: {external}"
    assert "cdn" not in page.text.lower()
    fetched = {}
    for url in urls:
        resp = client.get(url)
        assert resp.status_code == 200, url
        fetched[url.rsplit("/", 1)[-1]] = resp
    assert fetched["swagger-ui-bundle.js"].headers["content-type"].startswith(("text/javascript", "application/js"))
    assert len(fetched["swagger-ui-bundle.js"].content) > 500_000
    assert fetched["swagger-ui.css"].headers["content-type"].startswith("text/css")
    assert fetched["openapi.json"].json()["openapi"].startswith("3.1")
    assert "swagger-ui-5." in str(swagger_ui_path)  # Swagger UI 5 renders OpenAPI 3.1 (4.x cannot)
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: not offered


# -- the real server --------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """What the server sent until it closed the connection (True), or until the deadline (False)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def get_on(sock: socket.socket, path: str = "/health") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    m = re.search(rb"content-length: (\d+)", data, re.I)
    return int(m.group(1)) if m else 0


@pytest.fixture
def one_worker(start_server, publish, trained):
    """The image's command with one worker (its pid is the server's), reload checks every 5 s."""
    publish(trained["small"], 1)

    def _start(**env: str):
        return start_server(WORKERS="1", RELOAD_INTERVAL_SECONDS="5", **env)

    return _start


def test_oversized_headers_get_431_and_memory_stays_bounded(one_worker):
    server = one_worker()
    pid = server.proc.pid
    before = rss_kib(pid)

    # Just over the 16 KiB limit, sent at once: a clean 431 and a closed connection.
    with connect(server.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        data, closed = read_until_closed(s, time.monotonic() + 10)
    assert closed and data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert b"exceed 16384 bytes" in data

    # Ten connections each trying to send a 32 MiB header (the attack): each is cut off
    # long before, and the worker's memory does not grow with what they send.
    chunk = b"a" * 65536
    sent_per_connection = []
    for _ in range(10):
        with connect(server.port, timeout=5) as s:
            sent = 0
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
                while sent < 32 * 1024 * 1024:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # reset or broken pipe once the server has closed, or its buffers are full
                pass
            sent_per_connection.append(sent)
            read_until_closed(s, time.monotonic() + 10)
    assert max(sent_per_connection) < 32 * 1024 * 1024, sent_per_connection
    grown_mib = (rss_kib(pid) - before) / 1024
    assert grown_mib < 16, f"the worker grew by {grown_mib:.1f} MiB"

    # 150 header fields (over the 100 allowed), each small: 431 too.
    with connect(server.port) as s:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
        data, closed = read_until_closed(s, time.monotonic() + 10)
    assert closed and data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert b"more than 100 request header fields" in data

    assert server.request("GET", "/health")[0] == 200
    assert "Traceback" not in server.logs()


def test_slow_and_stalled_clients_are_cut_off_while_normal_traffic_goes_on(one_worker):
    server = one_worker(HEADER_TIMEOUT_SECONDS="1", BODY_TIMEOUT_SECONDS="1")
    port = server.port
    silent = [connect(port) for _ in range(60)]  # connect and send nothing
    partial = [connect(port) for _ in range(60)]  # half a request line and headers, then nothing
    for s in partial:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Ty")
    stalled_body = [connect(port) for _ in range(60)]  # headers, then a tenth of the body
    for s in stalled_body:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        s.sendall(b'{"features":')
    started = time.monotonic()

    # Normal traffic meanwhile, on one keep-alive connection.
    latencies = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps(GUIDE_REQUEST)
    # A client dribbling its headers, one byte every 0.1 s: the deadline counts from its first byte.
    trickle = connect(port)
    trickle_closed_after = None
    header = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200
    trickle.setblocking(False)
    for i in range(len(header)):  # bounded: 200+ bytes at 0.1 s is far past the 1 s deadline
        t0 = time.perf_counter()
        conn.request("POST", "/predict", body=body, headers=HEADERS)
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["class_name"] == "setosa"
        latencies.append(time.perf_counter() - t0)
        try:
            trickle.send(header[i : i + 1])
            got = trickle.recv(4096)
            if got == b"" or got.startswith(b"HTTP/1.1 408 "):
                trickle_closed_after = time.monotonic() - started
                break
        except BlockingIOError:
            pass
        except OSError:
            trickle_closed_after = time.monotonic() - started
            break
        time.sleep(0.1)  # the trickle's pace, not a wait for the server
    conn.close()
    assert trickle_closed_after is not None and trickle_closed_after < 5, trickle_closed_after

    # Every stalled connection is answered 408 (or just closed) within the deadline plus slack.
    deadline = started + 1 + 5
    answers = []
    for s in silent + partial + stalled_body:
        data, closed = read_until_closed(s, deadline)
        assert closed, f"a stalled connection is still open {time.monotonic() - started:.1f} s later"
        answers.append(data.split(b"\r\n", 1)[0])
        s.close()
    trickle.close()
    assert set(answers) <= {b"HTTP/1.1 408 Request Timeout", b""}, set(answers)
    assert answers.count(b"HTTP/1.1 408 Request Timeout") >= 150
    # Normal requests kept their latency while 180 connections were stalled.
    assert statistics.median(latencies) < 0.05, statistics.median(latencies)
    assert max(latencies) < 1.0, max(latencies)
    logs = server.logs()
    assert "Traceback" not in logs and "Exception in ASGI application" not in logs


def test_connections_beyond_the_limit_get_503_and_open_ones_keep_working(one_worker):
    server = one_worker(MAX_CONNECTIONS="5", HEADER_TIMEOUT_SECONDS="30")
    # Wait until the readiness checks' connections are gone, then hold the 5 allowed ones.
    held: list[socket.socket] = []

    def hold_five() -> bool:
        for s in held:
            s.close()
        held.clear()
        for _ in range(5):
            s = connect(server.port)
            held.append(s)
            if not get_on(s).startswith(b"HTTP/1.1 200 "):
                return False
        return True

    wait_for(hold_five, timeout=20, interval=0.2, what="5 connections served")
    with connect(server.port) as sixth:
        data, closed = read_until_closed(sixth, time.monotonic() + 10)
    assert closed and data.startswith(b"HTTP/1.1 503 "), data[:200]
    assert b"retry-after: 1" in data.lower() and b"too many connections (limit 5 per worker)" in data
    for s in held:  # the open ones are still served
        assert get_on(s, "/ready").startswith(b"HTTP/1.1 200 ")
        s.close()
    assert "refused a connection: 5 open, the limit is 5" in server.logs()


def test_a_100k_row_batch_costs_the_server_little_cpu(one_worker):
    server = one_worker()
    pid = server.proc.pid
    wait_for(lambda: server.request("GET", "/ready")[0] == 200, timeout=30, what="ready")
    before = cpu_seconds(pid)
    statuses = []
    for _ in range(5):
        with connect(server.port) as s:
            head = (
                "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(HUGE_BATCH)}\r\n\r\n"
            ).encode()
            try:
                s.sendall(head + HUGE_BATCH)
            except OSError:  # the server answered and closed before taking the whole body
                pass
            data, _ = read_until_closed(s, time.monotonic() + 10)
            statuses.append(data.split(b"\r\n", 1)[0])
    used = cpu_seconds(pid) - before
    # Before this limit each such request cost ~0.23 s of CPU (parsed and validated in full).
    assert used / 5 < 0.05, f"{used / 5:.3f} s of CPU per request"
    assert set(statuses) <= {b"HTTP/1.1 413 Content Too Large", b"HTTP/1.1 413 Request Entity Too Large", b""}
    assert statuses.count(b"") < 5, statuses  # at least one answer was read before the close
    assert server.request("POST", "/predict", json.dumps(GUIDE_REQUEST).encode())[0] == 200


def test_head_and_protocols_on_the_real_server(one_worker):
    server = one_worker()
    wait_for(lambda: server.request("GET", "/ready")[0] == 200, timeout=30, what="ready")
    for path in ("/health", "/ready", "/ping", "/v2/health/ready"):
        status, _, body = server.request("HEAD", path)
        assert (status, body) == (200, b""), path
    v2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    status, _, body = server.request("POST", "/v2/models/iris-classifier/infer", json.dumps(v2).encode())
    assert status == 200 and json.loads(body)["outputs"][0] == {
        "name": "predict",
        "datatype": "INT64",
        "shape": [1],
        "data": [0],
    }
    status, _, body = server.request("POST", "/invocations", json.dumps({"inputs": [ROW]}).encode())
    assert (status, json.loads(body)) == (200, {"predictions": [0]})
