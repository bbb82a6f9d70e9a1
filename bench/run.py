"""``python -m bench`` (``npm run bench``): the serving benchmark, end to end.

1. An MLflow server on loopback (the documented command, as the trainer tests start it).
2. One model from the trainer's production command (300 trees, depth 15, run "optimized"),
   registered in MLflow and exported to a temporary models directory.
3. Model inference alone: the serving app's path against scikit-learn's predict_proba.
4. Three servers one after another on 127.0.0.1, 2 worker processes each: the serving app
   (``python -m app.serve``), ``mlflow models serve`` on the registered model, and the HTTP floor
   (bench/floor.py). Each answers the guide's row correctly before wrk loads it.
5. docs/benchmarks.md (generated section) and docs/benchmarks.png; the same tables on stdout.
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

from bench import report, wrk
from bench.inference import GUIDE_ROW, REPO, SERVING_DIR, batch_rows, load_serving_path, measure

TRAINING_DIR = REPO / "images" / "training"
MODEL_NAME = "iris-classifier"
WORKERS = 2
N_ESTIMATORS, MAX_DEPTH, RUN_NAME = 300, 15, "optimized"
START_DEADLINE_S = 180.0


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
class Server:
    key: str
    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    ready_path: str
    predict_path: str
    body: Callable[[list[list[float]]], dict]
    check: Callable[[dict, int], str | None]  # (answer, rows) -> problem or None
    shown: str = ""
    note: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)


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


def start(server: Server, logs: Path) -> None:
    log_path = logs / f"{server.key}.log"
    with open(log_path, "ab") as out:
        server.proc = subprocess.Popen(
            server.argv, cwd=server.cwd, env=server.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = server.env["BENCH_BASE_URL"]
    deadline = time.monotonic() + START_DEADLINE_S
    streak = 0
    while streak < 10:  # consecutive answers on fresh connections: both workers are likely up
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with {server.proc.returncode}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready within {START_DEADLINE_S:.0f}s:\n{log_tail(log_path)}")
        try:
            status, _ = http(base + server.ready_path, timeout=2)
        except OSError:
            status = 0
        streak = streak + 1 if status == 200 else 0
        time.sleep(0.05 if status == 200 else 0.25)


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


def check_answers(server: Server, batch: list[list[float]]) -> None:
    url = server.env["BENCH_BASE_URL"] + server.predict_path
    for rows in ([GUIDE_ROW], batch):
        status, raw = http(url, server.body(rows))
        if status != 200:
            raise RuntimeError(f"POST {url} ({len(rows)} rows) answered {status}: {raw[:300]!r}")
        problem = server.check(json.loads(raw), len(rows))
        if problem:
            raise RuntimeError(f"POST {url} ({len(rows)} rows): {problem}; answer {raw[:300]!r}")


def project_body(rows: list[list[float]]) -> dict:
    return {"features": rows[0]} if len(rows) == 1 else {"instances": rows}


def mlflow_body(rows: list[list[float]]) -> dict:
    return {"inputs": rows}


def check_project(answer: dict, rows: int) -> str | None:
    first = answer if rows == 1 else (answer.get("predictions") or [{}])[0]
    if rows > 1 and len(answer.get("predictions", [])) != rows:
        return f"expected {rows} predictions"
    if first.get("class_name") != "setosa":
        return "the guide's row is not classified as setosa"
    return None


def check_mlflow(answer: dict, rows: int) -> str | None:
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != rows:
        return f"expected {rows} predictions"
    if predictions[0] != 0:
        return "the guide's row is not class 0 (setosa)"
    return None


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


def servers(models_dir: Path, model_uri: str, tracking_uri: str, work: Path) -> list[Server]:
    bin_dir = str(Path(sys.executable).parent)
    base_env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    ports = {key: free_port() for key in ("serving", "mlflow", "floor")}

    def env(key: str, **extra: str) -> dict[str, str]:
        return {**base_env, **extra, "BENCH_BASE_URL": f"http://127.0.0.1:{ports[key]}"}

    serving_env = {
        "MODELS_DIR": str(models_dir),
        "MODEL_NAME": MODEL_NAME,
        "HOST": "127.0.0.1",
        "PORT": str(ports["serving"]),
        "WORKERS": str(WORKERS),
        "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus-multiproc"),
    }
    mlflow_argv = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-w", str(WORKERS)]
    floor_argv = ["uvicorn", "bench.floor:app", "--workers", str(WORKERS), "--no-access-log"]
    return [
        Server(
            "serving",
            "serving app",
            [sys.executable, "-m", "app.serve"],
            SERVING_DIR,
            env("serving", **serving_env),
            "/ready",
            "/predict",
            project_body,
            check_project,
            shown="python -m app.serve",
            note="(env as in docs/interfaces.md: WORKERS=2, MODELS_DIR=<tmp>, HOST=127.0.0.1)",
        ),
        Server(
            "mlflow",
            "mlflow models serve",
            [bin_dir + "/mlflow", *mlflow_argv[1:], "-h", "127.0.0.1", "-p", str(ports["mlflow"])],
            work,
            env("mlflow", MLFLOW_TRACKING_URI=tracking_uri),
            "/ping",
            "/invocations",
            mlflow_body,
            check_mlflow,
            shown=" ".join(mlflow_argv),
        ),
        Server(
            "floor",
            "HTTP floor",
            [sys.executable, "-m", *floor_argv, "--host", "127.0.0.1", "--port", str(ports["floor"])],
            REPO,
            env("floor", PYTHONPATH=str(REPO)),
            "/health",
            "/predict",
            project_body,
            check_project,
            shown=f"python -m {' '.join(floor_argv)}",
        ),
    ]


def load_test(server: Server, batch: list[list[float]], args, work: Path, cpu: int | None, round_no: int) -> dict:
    results = {}
    url = server.env["BENCH_BASE_URL"] + server.predict_path
    for sc in SCENARIOS:
        rows = [GUIDE_ROW] if sc.rows == 1 else batch
        script = wrk.lua_script(server.body(rows), work / f"{server.key}-{sc.key}.lua")
        if args.warmup > 0:
            wrk.run(wrk.command(url, script, sc.connections, args.warmup, cpu=cpu))
        result, raw = wrk.run(wrk.command(url, script, sc.connections, args.duration, cpu=cpu))
        (work / f"{server.key}-{sc.key}-round{round_no}.wrk.txt").write_text(raw)
        results[sc.key] = result.to_dict()
        log(
            f"{server.label:20} {sc.label:14} {result.rps:10.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
        )
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="npm run bench --", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per scenario, discarded (default 2)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="start every server this many times in turn; medians reported (default 1)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timeit rounds for inference alone (default 7)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown file to update")
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
    if not 1 <= args.rounds <= 10:
        parser.error(f"--rounds must be between 1 and 10, got {args.rounds}")
    if not 1 <= args.repeats <= 100:
        parser.error(f"--repeats must be between 1 and 100, got {args.repeats}")
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
    }
    cpu = None
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cpu = (os.cpu_count() or 1) - 1
        pinning = (
            f"wrk ran as 1 thread pinned to CPU {cpu} (`taskset -c {cpu}`); the servers were not pinned, so their "
            f"{WORKERS} workers use every CPU and compete with wrk for CPU {cpu}."
        )
    else:
        pinning = "wrk ran as 1 thread, not pinned (no taskset or a single CPU)."
    failed = False
    keep = args.keep
    work = Path(tempfile.mkdtemp(prefix="ops-demo-bench-"))
    logs = work / "logs"
    logs.mkdir()
    log(f"work directory {work}")

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

            batch = [[round(float(x), 1) for x in row] for row in batch_rows(100)]
            specs = servers(models_dir, model_uri, mlflow_server.uri, work)
            rounds: dict[str, list[dict]] = {s.key: [] for s in specs}
            for n in range(1, args.rounds + 1):
                for server in specs:
                    log(f"round {n}/{args.rounds}: starting {server.label}: {shlex.join(server.argv)}")
                    try:
                        start(server, logs)
                        check_answers(server, batch)
                        rounds[server.key].append(load_test(server, batch, args, work, cpu, n))
                    except Exception as exc:  # noqa: BLE001 - one server failing must not hide the others
                        failed = keep = True
                        reason = str(exc).strip().splitlines()[0][:200]
                        log(f"{server.label} FAILED: {exc}")
                        rounds[server.key].append({s.key: {"failed": reason} for s in SCENARIOS})
                    finally:
                        stop(server)
            for server in specs:
                results["load"][server.key] = {
                    sc.key: report.combine_rounds([r[sc.key] for r in rounds[server.key]]) for sc in SCENARIOS
                }
            results["servers"] = [{"key": s.key, "label": s.label, "command": s.shown, "note": s.note} for s in specs]

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
        "rounds": args.rounds,
        "pinning": pinning,
        "wrk_example": " ".join(
            wrk.command("http://127.0.0.1:PORT/predict", Path("row.lua"), 32, args.duration, cpu=cpu)
        ),
    }
    section = report.render_section(results, plot_name=None if args.no_write else "benchmarks.png")
    print("\n" + section.replace(report.BEGIN + "\n", "").replace(report.END + "\n", ""))
    if not args.no_write:
        report.write_markdown(args.out, section)
        report.write_plot(results, args.out.with_suffix(".png"))
        log(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 1 if failed else 0
