"""``python -m bench`` (``npm run bench``): the serving benchmark, end to end.

1. An MLflow server on loopback (the documented command, as the trainer tests start it).
2. One model from the trainer's production command (300 trees, depth 15, run "optimized"),
   registered in MLflow and exported to a temporary models directory.
3. Model inference alone: the serving app's path against scikit-learn's predict_proba.
4. Cold starts: the serving app's command started ``--cold-starts`` times, time to /ready 200, RSS.
5. Interleaved rounds on 127.0.0.1, 2 workers each (A, B, C, A, B, C, ...): the serving app
   (``python -m app.serve``; /predict, V2 /v2/models/<name>/infer and MLflow /invocations), the
   FastAPI floor (bench/floor.py), the Go floor (bench/gofloor), MLServer and KServe's model
   server (bench/peers, own virtualenvs) and ``mlflow models serve``. Each is started anew in
   every round, answers the guide's row correctly before wrk loads it, and is pinned to the
   servers' CPUs (wrk to its own); per process CPU, context switches and wrk's connections are read.
6. docs/benchmarks.md (generated section) and docs/benchmarks.png; the same tables on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import procs, report, wrk
from bench.inference import GUIDE_ROW, REPO, SERVING_DIR, batch_rows, load_serving_path, measure
from bench.procs import cpu_count

TRAINING_DIR = REPO / "images" / "training"
GOFLOOR_DIR = REPO / "bench" / "gofloor"
KSERVE_SCRIPT = REPO / "bench" / "peers" / "kserve_server.py"
MODEL_NAME = "iris-classifier"
WORKERS = 2
N_ESTIMATORS, MAX_DEPTH, RUN_NAME = 300, 15, "optimized"
START_DEADLINE_S = 180.0
FEATURE_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    rows: int
    connections: int


SCENARIOS = (
    Scenario("row-c1", "1 row, c=1", 1, 1),
    Scenario("row-c32", "1 row, c=32", 1, 32),
    Scenario("batch-c8", "100 rows, c=8", 100, 8),
)


@dataclass
class Endpoint:
    """One thing wrk loads: a path of a server with its body and the check of its answer."""

    key: str
    label: str
    path: str
    body: Callable[[list[list[float]]], dict]
    check: Callable[[dict, int], str | None]  # (answer, rows) -> problem or None


@dataclass
class Server:
    key: str
    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    ready_path: str
    endpoints: list[Endpoint]
    port: int = 0
    shown: str = ""
    note: str = ""
    setup: Callable[[], None] | None = field(default=None, repr=False)  # venv, go build: once, before round 1
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# The order of a round: the serving app first, then the floors, the peers, mlflow.
SERVER_ORDER = ("serving", "floor", "gofloor", "mlserver", "kserve", "mlflow")
ENDPOINT_KEYS = ("serving", "serving-v2", "serving-invocations", "floor", "gofloor", "mlserver", "kserve", "mlflow")


def schedule(server_keys: list[str], rounds: int) -> list[tuple[int, str]]:
    """Interleaved rounds: every server once per round, in the same order (A, B, C, A, B, C, ...)."""
    return [(n, key) for n in range(1, rounds + 1) for key in server_keys]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(server: Server, logs: Path, cpus: str | None = None) -> float:
    """Start the server (pinned to ``cpus`` with taskset when given); returns seconds from exec to the first 200."""
    log_path = logs / f"{server.key}.log"
    argv = (["taskset", "-c", cpus] if cpus else []) + server.argv
    with open(log_path, "ab") as out:
        t0 = time.monotonic()
        server.proc = subprocess.Popen(
            argv, cwd=server.cwd, env=server.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = t0 + START_DEADLINE_S
    ready_s = None
    streak = 0
    while streak < 10:  # consecutive answers on fresh connections: both workers are likely up
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with {server.proc.returncode}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready within {START_DEADLINE_S:.0f}s:\n{log_tail(log_path)}")
        try:
            status, _ = http(server.base_url + server.ready_path, timeout=2)
        except OSError:
            status = 0
        if status == 200 and ready_s is None:
            ready_s = time.monotonic() - t0
        streak = streak + 1 if status == 200 else 0
        time.sleep(0.05 if status == 200 else 0.01)
    return ready_s or 0.0


def stop(server: Server) -> None:
    """SIGTERM the server's process group (its own session), SIGKILL if it lingers."""
    import signal

    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def check_answers(server: Server, endpoint: Endpoint, batch: list[list[float]]) -> None:
    url = server.base_url + endpoint.path
    for rows in ([GUIDE_ROW], batch):
        status, raw = http(url, endpoint.body(rows))
        if status != 200:
            raise RuntimeError(f"POST {url} ({len(rows)} rows) answered {status}: {raw[:300]!r}")
        problem = endpoint.check(json.loads(raw), len(rows))
        if problem:
            raise RuntimeError(f"POST {url} ({len(rows)} rows): {problem}; answer {raw[:300]!r}")


# -- bodies and checks of the protocols ----------------------------------------------------------------
def project_body(rows: list[list[float]]) -> dict:
    return {"features": rows[0]} if len(rows) == 1 else {"instances": rows}


def mlflow_body(rows: list[list[float]]) -> dict:
    return {"inputs": rows}


def dataframe_split_body(rows: list[list[float]]) -> dict:
    return {"dataframe_split": {"columns": FEATURE_COLUMNS, "data": rows}}


def v1_body(rows: list[list[float]]) -> dict:
    return {"instances": rows}


def v2_body(rows: list[list[float]]) -> dict:
    """One FP64 tensor [n, 4], data flat and row-major (the Open Inference Protocol's canonical form)."""
    flat = [x for row in rows for x in row]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": flat}]}


def check_project(answer: dict, rows: int) -> str | None:
    first = answer if rows == 1 else (answer.get("predictions") or [{}])[0]
    if rows > 1 and len(answer.get("predictions", [])) != rows:
        return f"expected {rows} predictions"
    if first.get("class_name") != "setosa":
        return "the guide's row is not classified as setosa"
    return None


def check_mlflow(answer: dict, rows: int) -> str | None:
    """{"predictions": [class ids]}: mlflow models serve, the serving app's /invocations, KServe V1."""
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != rows:
        return f"expected {rows} predictions"
    if predictions[0] != 0:
        return "the guide's row is not class 0 (setosa)"
    return None


def check_v2(answer: dict, rows: int) -> str | None:
    """A V2 answer whose 'predict' output (or only output) holds the class ids."""
    outputs = answer.get("outputs") or []
    named = [o for o in outputs if o.get("name") == "predict"] or outputs[:1]
    if not named:
        return "no outputs"
    data = named[0].get("data") or []
    if len(data) != rows:
        return f"expected {rows} class ids in output {named[0].get('name')!r}"
    if data[0] != 0:
        return "the guide's row is not class 0 (setosa)"
    return None


# -- the machine, the versions --------------------------------------------------------------------------
def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_kib / 2**20,
        "kernel": platform.release(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions() -> dict:
    out = {"Python": platform.python_version()}
    for dist in (
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pydantic",
        "numpy",
        "scikit-learn",
        "mlflow",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["wrk"] = wrk.wrk_version().removeprefix("wrk ")
    return out


def pinned_versions(requirements: Path, names: tuple[str, ...]) -> str:
    pins = {}
    for line in requirements.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    return ", ".join(f"{n} {pins.get(n, '?')}" for n in names)


# -- CPU pinning ----------------------------------------------------------------------------------------
def plan_pinning(spec: str, cores: int, have_taskset: bool) -> tuple[str | None, str | None, str]:
    """``--pin``: (servers' CPU list, wrk's CPU list, the sentence for the report).

    auto: servers on CPUs 0..n-2, wrk on the last CPU (2 CPUs: servers on 0, wrk on 1); none: nothing
    pinned; SERVERS:WRK: explicit taskset lists. Without taskset or with one CPU nothing is pinned.
    """
    if spec == "none":
        return None, None, "Nothing was pinned (--pin none): servers and wrk share every CPU."
    if not have_taskset or cores < 2:
        why = "no taskset" if not have_taskset else "a single CPU"
        return None, None, f"Nothing was pinned ({why}): servers and wrk share every CPU, so wrk competes with them."
    if spec == "auto":
        servers_cpus = "0" if cores == 2 else f"0-{cores - 2}"
        wrk_cpu = str(cores - 1)
    else:
        servers_cpus, sep, wrk_cpu = spec.partition(":")
        if not sep or not servers_cpus or not wrk_cpu:
            raise ValueError(f"--pin must be auto, none or SERVER_CPUS:WRK_CPUS (e.g. 0:1), got {spec!r}")
        cpu_count(servers_cpus), cpu_count(wrk_cpu)  # noqa: B018 - validates the lists
    return (
        servers_cpus,
        wrk_cpu,
        f"Servers (every process and thread of each) pinned to CPU {servers_cpus} and wrk (1 thread) to CPU "
        f"{wrk_cpu} with taskset, so the client does not take CPU from the server it measures.",
    )


# -- the model ------------------------------------------------------------------------------------------
def train_argv() -> list[str]:
    """The trainer's production command (docs/interfaces.md) with the guide's "optimized" run."""
    n, depth = str(N_ESTIMATORS), str(MAX_DEPTH)
    return [sys.executable, "-m", "trainer", "--n-estimators", n, "--max-depth", depth, "--run-name", RUN_NAME]


def train(tracking_uri: str, models_dir: Path, logs: Path) -> dict:
    """The trainer's production command; returns current.json plus the version directory."""
    argv = train_argv()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MODELS_DIR": str(models_dir), "MODEL_NAME": MODEL_NAME}
    with open(logs / "trainer.log", "wb") as out:
        proc = subprocess.run(argv, cwd=TRAINING_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the trainer exited with {proc.returncode}:\n{log_tail(logs / 'trainer.log')}")
    pointer = json.loads((models_dir / MODEL_NAME / "current.json").read_text())
    pointer["path"] = models_dir / MODEL_NAME / "versions" / pointer["dir"]
    return pointer


# -- the servers ----------------------------------------------------------------------------------------
def serving_argv(override: str | None, port: int, python: str) -> list[str]:
    """``python -m app.serve``, or ``--serving-cmd``/SERVING_CMD with {host}, {port}, {workers}, {python}."""
    if not override:
        return [python, "-m", "app.serve"]
    text = override.format(host="127.0.0.1", port=port, workers=WORKERS, python=python)
    return shlex.split(text)


def serving_server(
    models_dir: Path, work: Path, python: str, override: str | None = None, key: str = "serving"
) -> Server:
    """The serving app's command, run by ``python`` (the virtualenv of the image's requirements.txt)."""
    bin_dir = str(Path(python).parent)
    port = free_port()
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "MODELS_DIR": str(models_dir),
        "MODEL_NAME": MODEL_NAME,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(WORKERS),
        "PROMETHEUS_MULTIPROC_DIR": str(work / f"prometheus-multiproc-{key}"),
    }
    argv = serving_argv(override, port, python)
    return Server(
        key,
        "serving app",
        argv,
        SERVING_DIR,
        env,
        "/ready",
        [
            Endpoint("serving", "serving app", "/predict", project_body, check_project),
            Endpoint("serving-v2", "serving app V2", f"/v2/models/{MODEL_NAME}/infer", v2_body, check_v2),
            Endpoint(
                "serving-invocations", "serving app /invocations", "/invocations", dataframe_split_body, check_mlflow
            ),
        ],
        port=port,
        shown="python -m app.serve" if not override else override,
        note="(env as in docs/interfaces.md: WORKERS=2, MODELS_DIR=<tmp>, HOST=127.0.0.1)",
    )


def servers(
    models_dir: Path,
    version_dir: Path,
    model_uri: str,
    tracking_uri: str,
    work: Path,
    *,
    server_cpus: str | None,
    serving_python: str,
    serving_cmd: str | None = None,
) -> list[Server]:
    from bench import peers

    bin_dir = str(Path(sys.executable).parent)
    base_env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    gomaxprocs = cpu_count(server_cpus) if server_cpus else (os.cpu_count() or 1)
    venvs: dict[str, Path] = {}
    gofloor_bin = work / "gofloor"

    # MLServer: a settings.json for the server and a model-settings.json for the model (mlserver-sklearn).
    mlserver_dir = work / "mlserver"
    mlserver_port, mlserver_grpc, mlserver_metrics = free_port(), free_port(), free_port()

    def setup_mlserver() -> None:
        venvs["mlserver"] = peers.venv("mlserver", log)
        (mlserver_dir / MODEL_NAME).mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": mlserver_port,
            "grpc_port": mlserver_grpc,
            "metrics_port": mlserver_metrics,
            "parallel_workers": WORKERS,
        }
        (mlserver_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        model_settings = {
            "name": MODEL_NAME,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(version_dir / "model.joblib"), "version": "bench"},
        }
        (mlserver_dir / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        mlserver.argv[0] = str(venvs["mlserver"] / "bin" / "mlserver")

    def setup_kserve() -> None:
        venvs["kserve"] = peers.venv("kserve", log)
        kserve.argv[0] = str(venvs["kserve"] / "bin" / "python")

    def setup_gofloor() -> None:
        if not shutil.which("go"):
            raise RuntimeError("Go is not installed (https://go.dev/dl/)")
        proc = subprocess.run(
            ["go", "build", "-o", str(gofloor_bin), "."],
            cwd=GOFLOOR_DIR,
            env={**os.environ, "GOTOOLCHAIN": "local"},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go build failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    floor_port, gofloor_port, kserve_port, mlflow_port = (free_port() for _ in range(4))
    floor_argv = ["uvicorn", "bench.floor:app", "--workers", str(WORKERS), "--no-access-log"]
    mlflow_argv = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-w", str(WORKERS)]
    mlserver = Server(
        "mlserver",
        "MLServer",
        ["mlserver", "start", str(mlserver_dir)],
        work,
        {**os.environ},
        "/v2/health/ready",
        [Endpoint("mlserver", "MLServer", f"/v2/models/{MODEL_NAME}/infer", v2_body, check_v2)],
        port=mlserver_port,
        shown=f"mlserver start <dir> (parallel_workers: {WORKERS}, mlserver_sklearn.SKLearnModel on model.joblib)",
        note=f"({pinned_versions(peers.PEERS['mlserver'], ('mlserver', 'mlserver-sklearn', 'uvloop'))}; "
        "V2 body as for the serving app's V2; answers class ids)",
        setup=setup_mlserver,
    )
    kserve = Server(
        "kserve",
        "KServe",
        [
            "python",
            str(KSERVE_SCRIPT),
            "--model_dir",
            str(version_dir),
            "--model_name",
            MODEL_NAME,
            "--http_port",
            str(kserve_port),
            "--grpc_port",
            str(free_port()),
            "--workers",
            str(WORKERS),
            "--enable_grpc",
            "false",
        ],
        work,
        {**os.environ},
        f"/v1/models/{MODEL_NAME}",
        [Endpoint("kserve", "KServe", f"/v1/models/{MODEL_NAME}:predict", v1_body, check_mlflow)],
        port=kserve_port,
        shown=f"python bench/peers/kserve_server.py --workers {WORKERS} --enable_grpc false",
        note=f"(kserve {pinned_versions(peers.PEERS['kserve'], ('kserve',)).split()[-1]}: a kserve.Model loading "
        "model.joblib and calling predict as its sklearnserver does; V1 :predict with "
        '{"instances": [...]}, answers class ids; other settings kserve\'s defaults)',
        setup=setup_kserve,
    )
    return [
        serving_server(models_dir, work, serving_python, serving_cmd),
        Server(
            "floor",
            "FastAPI floor",
            # in the serving app's virtualenv: the same fastapi, pydantic, uvicorn, uvloop and httptools
            [serving_python, "-m", *floor_argv, "--host", "127.0.0.1", "--port", str(floor_port)],
            REPO,
            {**base_env, "PYTHONPATH": str(REPO)},
            "/health",
            [Endpoint("floor", "FastAPI floor", "/predict", project_body, check_project)],
            port=floor_port,
            shown=f"python -m {' '.join(floor_argv)}",
        ),
        Server(
            "gofloor",
            "Go floor",
            [str(gofloor_bin), "-addr", f"127.0.0.1:{gofloor_port}"],
            work,
            {**os.environ, "GOMAXPROCS": str(gomaxprocs)},
            "/health",
            [Endpoint("gofloor", "Go floor", "/predict", project_body, check_project)],
            port=gofloor_port,
            shown=f"GOMAXPROCS={gomaxprocs} bench/gofloor (net/http, encoding/json; go build at bench time)",
            note="(one process; GOMAXPROCS = the servers' CPUs)",
            setup=setup_gofloor,
        ),
        mlserver,
        kserve,
        Server(
            "mlflow",
            "mlflow models serve",
            [bin_dir + "/mlflow", *mlflow_argv[1:], "-h", "127.0.0.1", "-p", str(mlflow_port)],
            work,
            {**base_env, "MLFLOW_TRACKING_URI": tracking_uri},
            "/ping",
            [Endpoint("mlflow", "mlflow models serve", "/invocations", mlflow_body, check_mlflow)],
            port=mlflow_port,
            shown=" ".join(mlflow_argv),
        ),
    ]


def select(specs: list[Server], wanted: list[str]) -> list[Server]:
    """Only the endpoints named in ``--servers`` (the serving app's /predict always), servers without any dropped."""
    keep = set(wanted) | {"serving"}
    out = []
    for server in specs:
        server.endpoints = [e for e in server.endpoints if e.key in keep]
        if server.endpoints:
            out.append(server)
    return out


# -- measuring ------------------------------------------------------------------------------------------
def run_wrk(server: Server, argv: list[str], duration: float) -> tuple[wrk.WrkResult, str, dict]:
    """One measured wrk run with the server's processes read before and after, its connections mid-run."""
    pid = server.proc.pid if server.proc else 0
    before = procs.snapshot(pid) if pid else {}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=min(duration / 2, duration - 0.5) if duration > 1 else 0.5)
    except subprocess.TimeoutExpired:
        conns = procs.connections_by_pid(server.port)
        out, err = proc.communicate()
    else:
        conns = {}
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{out}\n{err}")
    after = procs.snapshot(pid) if pid else {}
    result = wrk.parse_output(out)
    return result, out, procs.split(before, after, conns, result.requests, root=pid)


def load_scenario(
    server: Server,
    endpoint: Endpoint,
    sc: Scenario,
    batch: list[list[float]],
    args,
    work: Path,
    cpu: str | None,
    round_no: int,
) -> dict:
    """One scenario on one path of a started server: wrk's result and where the CPU went."""
    url = server.base_url + endpoint.path
    script = scenario_script(endpoint, sc, batch, work)
    if args.warmup > 0:
        wrk.run(wrk.command(url, script, sc.connections, args.warmup, cpu=cpu))
    argv = wrk.command(url, script, sc.connections, args.duration, cpu=cpu)
    result, raw, split = run_wrk(server, argv, args.duration)
    (work / f"{endpoint.key}-{sc.key}-round{round_no}.wrk.txt").write_text(raw)
    log(
        f"{endpoint.label:26} {sc.label:14} {result.rps:10.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  {procs.describe_split(split)}"
    )
    return {**result.to_dict(), "procs": split}


def scenario_script(endpoint: Endpoint, sc: Scenario, batch: list[list[float]], work: Path) -> Path:
    """The wrk script that POSTs the scenario's rows (the guide's row, or the batch) in the path's protocol."""
    rows = [GUIDE_ROW] if sc.rows == 1 else batch
    return wrk.lua_script(endpoint.body(rows), work / f"{endpoint.key}-{sc.key}.lua")


def endpoint_order(endpoints: list[Endpoint], round_no: int) -> list[Endpoint]:
    """A server's paths in the order they are driven in a round: rotated by one every round.

    The paths of one server (the serving app's /predict, V2 and /invocations) are compared with
    each other, so they run scenario by scenario back to back (seconds apart, not minutes), and no
    path is always the first after a start or the last.
    """
    if not endpoints:
        return []
    k = (round_no - 1) % len(endpoints)
    return endpoints[k:] + endpoints[:k]


def parity_cycles(
    server: Server,
    endpoints: list[Endpoint],
    batch: list[list[float]],
    args,
    work: Path,
    cpu: str | None,
    round_no: int,
) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Each path's requests/s over /predict's in short runs of a server's paths in turn (A, B, C, A, B, C...).

    The load scenarios give each path one run of ``--duration`` s per round; on a shared machine two
    such runs seconds apart differ by 20% or more, and each wrk run splits its connections between
    the two workers anew. Here each scenario runs ``--parity-slices`` cycles of one
    ``--parity-seconds`` run per path, the order rotated every cycle, and every cycle gives one
    ratio per path: ({scenario: {path key: [ratio per cycle]}}, failures). A run that fails or
    gets an error response gives no ratio for its path in that cycle (and is listed in failures);
    a cycle whose /predict run failed gives none at all.
    """
    if "serving" not in {e.key for e in endpoints} or len(endpoints) < 2:
        return {}, []
    out: dict[str, dict[str, list[float]]] = {}
    failures: list[str] = []
    for sc in SCENARIOS:
        scripts = {e.key: scenario_script(e, sc, batch, work) for e in endpoints}
        for cycle in range(args.parity_slices):
            got: dict[str, float] = {}
            for e in endpoint_order(endpoints, round_no + cycle):
                argv = wrk.command(
                    server.base_url + e.path, scripts[e.key], sc.connections, args.parity_seconds, cpu=cpu
                )
                try:
                    result, _ = wrk.run(argv)
                except (RuntimeError, wrk.WrkOutputError) as exc:
                    failures.append(f"{e.label} {sc.label} cycle {cycle + 1}: {str(exc).strip().splitlines()[0]}")
                    log(f"parity FAILED: {failures[-1]}")
                    continue
                if result.errors or result.rps <= 0:
                    failures.append(f"{e.label} {sc.label} cycle {cycle + 1}: {result.errors} errors, left out")
                    log(f"parity FAILED: {failures[-1]}")
                    continue
                got[e.key] = result.rps
            if "serving" in got:
                for key, rate in got.items():
                    if key != "serving":
                        out.setdefault(sc.key, {}).setdefault(key, []).append(rate / got["serving"])
        shown = ", ".join(
            f"{k} {min(v):.0%}-{max(v):.0%} of /predict ({len(v)} cycles)" for k, v in out.get(sc.key, {}).items()
        )
        log(f"parity {sc.label}: {shown or 'no complete cycle'}")
    return out, failures


def memory_of(server: Server) -> dict:
    snap = procs.snapshot(server.proc.pid) if server.proc else {}
    out = procs.memory(snap)
    root = server.proc.pid if server.proc else None
    out["workers_rss_mib"] = sum(p["rss_kib"] for pid, p in snap.items() if pid != root) / 1024
    return out


def cold_starts(models_dir: Path, work: Path, logs: Path, count: int, python: str, serving_cmd: str | None) -> dict:
    """The serving app's command started ``count`` times (not pinned, nothing else running): exec -> /ready 200."""
    runs = []
    for i in range(1, count + 1):
        server = serving_server(models_dir, work, python, serving_cmd, key="serving-cold")
        try:
            ready_s = start(server, logs)
            runs.append({"ready_s": round(ready_s, 3), **memory_of(server)})
            log(f"cold start {i}/{count}: ready in {ready_s:.2f} s, RSS {runs[-1]['rss_mib']:.0f} MiB")
        except Exception as exc:  # noqa: BLE001 - reported, the benchmark goes on
            log(f"cold start {i}/{count} FAILED: {exc}")
            runs.append({"failed": str(exc).strip().splitlines()[0][:200]})
        finally:
            stop(server)
    return {"command": serving_server(models_dir, work, python, serving_cmd).shown, "runs": runs}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="npm run bench --", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per scenario, discarded (default 2)")
    parser.add_argument(
        "--parity-slices",
        type=int,
        default=4,
        help="per round and scenario, cycles of short runs of the serving app's paths in turn, for their ratios "
        "to /predict (default 4; 0: ratios from the load runs)",
    )
    parser.add_argument("--parity-seconds", type=int, default=2, help="seconds of each of those runs (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds: every server started anew in each round, in turn; medians reported (default 3)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(ENDPOINT_KEYS),
        help="comma-separated endpoints to measure (the serving app's /predict always): " + ", ".join(ENDPOINT_KEYS),
    )
    parser.add_argument(
        "--pin",
        default="auto",
        help="CPU pinning: auto (servers on CPUs 0..n-2, wrk on the last; default), none, or SERVER_CPUS:WRK_CPUS",
    )
    parser.add_argument(
        "--cold-starts", type=int, default=5, help="starts of the serving app timed to /ready, RSS read (default 5)"
    )
    parser.add_argument(
        "--serving-cmd",
        default=os.environ.get("SERVING_CMD") or None,
        help="start the serving app with this command instead of python -m app.serve (in images/serving, its env; "
        "{host}, {port}, {workers}, {python} replaced), e.g. granian; default $SERVING_CMD",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timeit rounds for inference alone (default 7)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown file to update")
    parser.add_argument("--json", type=Path, help="also write every measurement (each round) to this JSON file")
    parser.add_argument(
        "--image",
        default="auto",
        help="serving image to measure (size, start -> ready): a reference, 'auto' (the image the stack declares "
        "for this tree, if it is built and a Docker engine answers; default) or 'none'",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only; leave docs/ alone")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, raw wrk output)")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error(f"--duration must be between 1 and 600 seconds, got {args.duration:g}")
    if not 0 <= args.warmup <= 60:
        parser.error(f"--warmup must be between 0 and 60 seconds, got {args.warmup:g}")
    if not 0 <= args.parity_slices <= 20:
        parser.error(f"--parity-slices must be between 0 and 20, got {args.parity_slices}")
    if not 1 <= args.parity_seconds <= 60:
        parser.error(
            f"--parity-seconds must be between 1 and 60 (whole seconds, as wrk takes them), got {args.parity_seconds}"
        )
    if not 1 <= args.rounds <= 10:
        parser.error(f"--rounds must be between 1 and 10, got {args.rounds}")
    if not 0 <= args.cold_starts <= 50:
        parser.error(f"--cold-starts must be between 0 and 50, got {args.cold_starts}")
    if not 1 <= args.repeats <= 100:
        parser.error(f"--repeats must be between 1 and 100, got {args.repeats}")
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(args.servers) - set(ENDPOINT_KEYS))
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)} (allowed: {', '.join(ENDPOINT_KEYS)})")
    try:
        plan_pinning(args.pin, 2, True)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print(
            "bench: wrk is not installed (Debian: apt-get install -y wrk; scripts/bench does it as root)",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    results: dict = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "scenarios": [{"key": s.key, "label": s.label} for s in SCENARIOS],
        "load": {},
        "rounds": {},
        "starts": {},
    }
    server_cpus, wrk_cpu, pinning = plan_pinning(args.pin, os.cpu_count() or 1, shutil.which("taskset") is not None)
    failed = False
    keep = args.keep
    work = Path(tempfile.mkdtemp(prefix="ops-demo-bench-"))
    logs = work / "logs"
    logs.mkdir()
    log(f"work directory {work}")
    log(pinning)

    sys.path.insert(0, str(TRAINING_DIR / "tests"))
    from trainer_testlib import running_mlflow_server  # the documented `mlflow server` command on loopback

    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # as the training image sets it
    try:
        with ExitStack() as stack:
            log("starting an MLflow server on loopback")
            mlflow_server, _ = stack.enter_context(running_mlflow_server(work / "data"))
            models_dir = work / "models"
            log(f"training: python {' '.join(train_argv()[1:])}")
            t0 = time.monotonic()
            pointer = train(mlflow_server.uri, models_dir, logs)
            model_uri = f"models:/{MODEL_NAME}/{pointer['version']}"
            log(f"trained in {time.monotonic() - t0:.0f} s: {model_uri}, exported to {pointer['path']}")

            import mlflow.sklearn

            mlflow.set_tracking_uri(mlflow_server.uri)
            sklearn_model = mlflow.sklearn.load_model(model_uri)
            serving_model = load_serving_path(pointer["path"])
            log(f"inference alone: serving path '{serving_model.inference}' vs scikit-learn predict_proba")
            results["inference"] = measure(serving_model, sklearn_model, repeats=args.repeats)
            for key in ("serving", "sklearn"):
                r = results["inference"][key]
                row, hundred = r["row"], r["batch100"]
                log(
                    f"  {key:8} 1 row {row['us_per_call']:9.1f} us   100 rows {hundred['us_per_call']:9.1f} us"
                    f" ({hundred['us_per_row']:.2f} us/row)"
                )
            del sklearn_model, serving_model
            from bench import peers

            # The serving app (and the FastAPI floor) run in a virtualenv of exactly the image's packages.
            serving_python = str(peers.venv("serving", log) / "bin" / "python")

            if args.cold_starts:
                log(f"cold starts of the serving app ({args.cold_starts}, not pinned)")
                results["cold_starts"] = cold_starts(
                    models_dir, work, logs, args.cold_starts, serving_python, args.serving_cmd
                )

            batch = [[round(float(x), 1) for x in row] for row in batch_rows(100)]
            specs = servers(
                models_dir,
                pointer["path"],
                model_uri,
                mlflow_server.uri,
                work,
                server_cpus=server_cpus,
                serving_python=serving_python,
                serving_cmd=args.serving_cmd,
            )
            specs = select(specs, args.servers)
            by_key = {s.key: s for s in specs}
            endpoints = [e for s in specs for e in s.endpoints]
            rounds: dict[str, list[dict]] = {e.key: [] for e in endpoints}
            parity: dict[str, dict[str, list[float]]] = {}
            unusable: dict[str, str] = {}
            for server in specs:
                if server.setup is None:
                    continue
                try:
                    server.setup()
                except Exception as exc:  # noqa: BLE001 - a peer that cannot be set up must not hide the others
                    failed = True
                    unusable[server.key] = "setup: " + str(exc).strip().splitlines()[0][:200]
                    log(f"{server.label} cannot run: {exc}")
            for n, key in schedule([s.key for s in specs], args.rounds):
                server = by_key[key]
                if key in unusable:
                    for e in server.endpoints:
                        rounds[e.key].append({s.key: {"failed": unusable[key]} for s in SCENARIOS})
                    continue
                log(f"round {n}/{args.rounds}: starting {server.label}: {shlex.join(server.argv)}")
                done: set[str] = set()
                try:
                    ready_s = start(server, logs, server_cpus)
                    usable = []
                    for endpoint in server.endpoints:
                        try:  # one path answering wrongly must not hide the server's other paths
                            check_answers(server, endpoint, batch)
                            usable.append(endpoint)
                        except Exception as exc:  # noqa: BLE001
                            failed = keep = True
                            log(f"{endpoint.label} FAILED: {exc}")
                            reason = str(exc).strip().splitlines()[0][:200]
                            rounds[endpoint.key].append({s.key: {"failed": reason} for s in SCENARIOS})
                            done.add(endpoint.key)
                    measured: dict[str, dict] = {e.key: {} for e in usable}
                    for sc in SCENARIOS:
                        for endpoint in endpoint_order(usable, n):
                            try:
                                measured[endpoint.key][sc.key] = load_scenario(
                                    server, endpoint, sc, batch, args, work, wrk_cpu, n
                                )
                            except Exception as exc:  # noqa: BLE001
                                failed = keep = True
                                log(f"{endpoint.label} {sc.label} FAILED: {exc}")
                                measured[endpoint.key][sc.key] = {"failed": str(exc).strip().splitlines()[0][:200]}
                    for endpoint in usable:
                        rounds[endpoint.key].append(measured[endpoint.key])
                        done.add(endpoint.key)
                    if args.parity_slices > 0:
                        cycles, failures = parity_cycles(server, usable, batch, args, work, wrk_cpu, n)
                        if failures:
                            failed = keep = True
                        for sc_key, per_path in cycles.items():
                            for path_key, ratios in per_path.items():
                                parity.setdefault(sc_key, {}).setdefault(path_key, []).extend(ratios)
                    memory = memory_of(server)
                    results["starts"].setdefault(key, []).append({"ready_s": round(ready_s, 3), **memory})
                    log(f"{server.label}: ready {ready_s:.2f} s after exec, RSS after load {memory['rss_mib']:.0f} MiB")
                except Exception as exc:  # noqa: BLE001 - one server failing must not hide the others
                    failed = keep = True
                    reason = str(exc).strip().splitlines()[0][:200]
                    log(f"{server.label} FAILED: {exc}")
                    for e in server.endpoints:
                        if e.key not in done:
                            rounds[e.key].append({s.key: {"failed": reason} for s in SCENARIOS})
                finally:
                    stop(server)
            for endpoint in endpoints:
                results["load"][endpoint.key] = {
                    sc.key: report.combine_rounds([r[sc.key] for r in rounds[endpoint.key]]) for sc in SCENARIOS
                }
            results["rounds"] = rounds
            if parity:
                results["parity"] = {"slices": args.parity_slices, "seconds": args.parity_seconds, "ratios": parity}
            results["servers"] = [
                {
                    "key": e.key,
                    "label": e.label,
                    "server": s.key,
                    "path": e.path,
                    "command": s.shown,
                    "shared": e is not s.endpoints[0],  # another path of the process listed before it
                    "note": s.note if e is s.endpoints[0] else "",
                }
                for s in specs
                for e in s.endpoints
            ]

            from bench.image import measure_image

            results["image"] = measure_image(args.image, models_dir, log, REPO)
    except Exception:
        keep = True
        raise
    finally:
        if keep:
            log(f"kept {work} (logs/, raw wrk output)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["elapsed_s"] = time.monotonic() - started
    extra = [] if argv is None else argv
    results["command"] = "npm run bench" + (" -- " + " ".join(shlex.quote(a) for a in extra) if extra else "")
    results["settings"] = {
        "n_estimators": N_ESTIMATORS,
        "max_depth": MAX_DEPTH,
        "run_name": RUN_NAME,
        "model_uri": model_uri,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "parity_slices": args.parity_slices,
        "parity_seconds": args.parity_seconds,
        "rounds": args.rounds,
        "pinning": pinning,
        "server_cpus": server_cpus,
        "wrk_cpu": wrk_cpu,
        "wrk_example": " ".join(
            wrk.command("http://127.0.0.1:PORT/predict", Path("row.lua"), 32, args.duration, cpu=wrk_cpu)
        ),
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
        log(f"wrote {args.json}")
    section = report.render_section(results, plot_name=None if args.no_write else "benchmarks.png")
    print("\n" + section.replace(report.BEGIN + "\n", "").replace(report.END + "\n", ""))
    if not args.no_write:
        report.write_markdown(args.out, section)
        report.write_plot(results, args.out.with_suffix(".png"))
        log(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 1 if failed else 0
