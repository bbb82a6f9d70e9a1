"""The scenario of issue 4: what `pulumi up` on k3s deploys, run as containers on a real Docker engine.

Steps run in order and share state (a failed step skips the rest). Every name, port, path, env,
command, user, probe, mount and Service alias comes from the rendered program; the only constants
here are the scenario's inputs and expectations (the guide's defaults, its curl payload, the
"optimized" experiment).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from cluster import Running, parse_docker_time
from stack import DEPLOYMENT, JOB, Resource, Stack, plan_pod, pod_spec, resolve_port

# The guide's request and the experiments it names.
GUIDE_PAYLOAD = {"features": [5.1, 3.5, 1.4, 0.2]}
GUIDE_CLASS = "setosa"
DEFAULT_RUN = {"runName": "baseline", "nEstimators": "100", "maxDepth": "5"}
OPTIMIZED_RUN = {"runName": "optimized", "nEstimators": "300", "maxDepth": "15"}
CHAMPION = "champion"

READY_TIMEOUT = float(os.environ.get("E2E_READY_TIMEOUT", "240"))


class Mlflow:
    """The MLflow REST API, reached through the MLflow container's published port."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=f"{base}/api/2.0/mlflow", timeout=30)

    def _ok(self, r: httpx.Response) -> dict:
        assert r.status_code == 200, f"MLflow {r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
        return r.json()

    def runs(self, filter_string: str) -> list[dict]:
        exps = self._ok(self.http.post("/experiments/search", json={"max_results": 1000})).get("experiments", [])
        ids = [e["experiment_id"] for e in exps]
        body = {"experiment_ids": ids, "filter": filter_string, "max_results": 1000}
        return self._ok(self.http.post("/runs/search", json=body)).get("runs", [])

    def versions_of_run(self, run_id: str) -> list[dict]:
        r = self.http.get("/model-versions/search", params={"filter": f"run_id='{run_id}'"})
        return self._ok(r).get("model_versions", [])

    def alias(self, model: str, alias: str) -> dict:
        r = self.http.get("/registered-models/alias", params={"name": model, "alias": alias})
        return self._ok(r)["model_version"]


def params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run.get("data", {}).get("params", [])}


def metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", [])}


def run_filter(spec: dict[str, str]) -> str:
    return f"params.n_estimators = '{spec['nEstimators']}' AND params.max_depth = '{spec['maxDepth']}'"


def docker_times(name: str) -> tuple[float, float]:
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.StartedAt}} {{.State.FinishedAt}}", name],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return parse_docker_time(out[0]), parse_docker_time(out[1])


def predict(url: str) -> dict:
    r = httpx.post(url, json=GUIDE_PAYLOAD, timeout=10)
    assert r.status_code == 200, f"POST {url} {GUIDE_PAYLOAD}: {r.status_code} {r.text[:300]}"
    return r.json()


class Roles:
    """Which workload is which, found from the wiring (not from names): the Job's env names a Service;
    the Deployment behind it is the tracking server; the other Deployment is serving."""

    def __init__(self, stack: Stack):
        jobs = stack.of_type(JOB)
        assert len(jobs) == 1, \
            f"the default config declares {len(jobs)} training Jobs, expected 1: {[str(j) for j in jobs]}"
        self.job = jobs[0]
        referenced = []
        for c in pod_spec(self.job)["containers"]:
            for e in c.get("env") or []:
                referenced += stack.services_referenced(str(e.get("value", "")), self.job.namespace)
        assert referenced, f"{self.job} names no Service in its env: how does it reach the tracking server?"
        self.tracking_service, self.tracking_port = referenced[0]
        assert self.tracking_port is not None, f"{self.job} names {self.tracking_service} without a port"
        deployments = stack.of_type(DEPLOYMENT)
        backends = [
            d for d in deployments
            if self.tracking_service in stack.services_selecting(d.namespace, _labels(d))
        ]
        assert len(backends) == 1, f"{self.tracking_service} selects {len(backends)} Deployments, expected 1"
        self.mlflow = backends[0]
        others = [d for d in deployments if d is not self.mlflow]
        assert len(others) == 1, \
            f"expected one serving Deployment besides {self.mlflow}, found {[str(o) for o in others]}"
        self.serving = others[0]
        services = stack.services_selecting(self.serving.namespace, _labels(self.serving))
        assert services, f"no Service selects the pods of {self.serving}"
        self.serving_service = services[0]


def _labels(wl: Resource) -> dict[str, str]:
    return (wl.spec.get("template", {}).get("metadata") or {}).get("labels") or {}


def plans_of(e2e, stack: Stack, wl: Resource):
    out = []
    for i in range(stack.replicas(wl) if wl.type == DEPLOYMENT else 1):
        out += plan_pod(stack, wl, i, e2e.cluster.prefix, e2e.workdir / "pods", max_cpus=float(os.cpu_count() or 1))
    return out


def run_job(e2e, stack: Stack, job: Resource) -> Running:
    (plan,) = plans_of(e2e, stack, job)
    r = e2e.cluster.start(plan)
    limit = float(job.spec.get("activeDeadlineSeconds", 1200))
    code = e2e.cluster.wait_exit(r, timeout=limit)
    started, finished = docker_times(r.name)
    e2e.report.add("training time", job.kname, f"{finished - started:.1f} s")
    if code != 0:
        others = e2e.cluster.stopped(besides=r.name)
        pytest.fail(f"training Job {job} container {r.name} exited {code}"
                    + (f"; not running meanwhile: {others}" if others else ""))
    return r


# --- the steps ---------------------------------------------------------------------------------


def test_0_render_build_and_prepare_storage(e2e):
    """Render the k3s stack, check its Service wiring, build its images, prepare the host storage."""
    os.makedirs(e2e.storage_dir, mode=0o755)  # as a k3s host has it: root-owned, before the program runs
    assert os.stat(e2e.storage_dir).st_uid == 0
    stack = e2e.render()
    e2e.values["stack"] = stack
    print("\n".join(["service references:"] + stack.check_service_references()))
    roles = Roles(stack)
    e2e.values["roles"] = roles

    commands = stack.storage_commands(str(e2e.storage_dir))
    assert commands, f"no command resource of the program prepares storageDir {e2e.storage_dir}"
    for c in commands:
        interpreter = c.inputs.get("interpreter") or ["/bin/sh", "-c"]
        env = {**os.environ, **(c.inputs.get("environment") or {})}
        p = subprocess.run([*interpreter, c.inputs["create"]], cwd=c.inputs.get("dir") or None, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"storage command {c.name} exited {p.returncode}: {p.stdout}{p.stderr}"

    # Every read-write hostPath mount must belong to the user its pod runs as.
    images: set[str] = set()
    for wl in stack.workloads():
        for plan in plans_of(e2e, stack, wl):
            images.add(plan.image)
            uid = int(plan.user.split(":")[0]) if plan.user else None
            for m in plan.mounts:
                if m.startswith("type=bind") and "readonly" not in m:
                    src = dict(kv.split("=", 1) for kv in m.split(",") if "=" in kv)["src"]
                    owner = os.stat(src).st_uid
                    assert uid is None or owner == uid, \
                        f"{wl} runs as {uid} but mounts {src} read-write, owned by {owner}"
    e2e.build_images(stack, images)
    e2e.values["images"] = images


def test_1_mlflow_ready(e2e):
    stack, roles = e2e.values["stack"], e2e.values["roles"]
    running = [e2e.cluster.start(p) for p in plans_of(e2e, stack, roles.mlflow)]
    for r in running:
        secs = e2e.cluster.wait_ready(r, READY_TIMEOUT)
        e2e.report.add("start -> ready", r.name, f"{secs:.1f} s")
        if r.plan.liveness:
            ok, detail = e2e.cluster.probe(r, r.plan.liveness)
            assert ok, f"{r.name} is ready but its liveness probe fails: {detail}"
    e2e.values["mlflow"] = running[0]
    port = resolve_port(pod_spec(roles.mlflow), roles.tracking_port)
    e2e.values["mlflow_api"] = Mlflow(running[0].url(port))


def test_2_training_default_config(e2e):
    stack, roles, api = e2e.values["stack"], e2e.values["roles"], e2e.values["mlflow_api"]
    run_job(e2e, stack, roles.job)
    runs = api.runs(run_filter(DEFAULT_RUN))
    assert len(runs) == 1, f"MLflow has {len(runs)} runs with {run_filter(DEFAULT_RUN)}, expected 1"
    run = runs[0]
    info = run["info"]
    assert info["status"] == "FINISHED", info
    assert info.get("run_name") == DEFAULT_RUN["runName"], info
    p = params(run)
    assert (p.get("n_estimators"), p.get("max_depth")) == (DEFAULT_RUN["nEstimators"], DEFAULT_RUN["maxDepth"]), p
    m = metrics(run)
    assert m, f"run {info['run_id']} logged no metrics"
    assert all(math.isfinite(v) for v in m.values()), m
    assert 0.8 <= m.get("accuracy", -1) <= 1.0, f"held-out accuracy of the default run: {m.get('accuracy')}"
    versions = api.versions_of_run(info["run_id"])
    assert len(versions) == 1, f"run {info['run_id']} has {len(versions)} registered model versions, expected 1"
    model, version = versions[0]["name"], versions[0]["version"]
    champion = api.alias(model, CHAMPION)
    assert champion["version"] == version, f"{model}@{CHAMPION} is version {champion['version']}, not {version}"
    e2e.values.update(model=model, v1=str(version), run1=info["run_id"])


def test_3_serving_ready_and_predicts(e2e):
    stack, roles = e2e.values["stack"], e2e.values["roles"]
    plans = plans_of(e2e, stack, roles.serving)
    assert len(plans) == 2, f"{roles.serving} runs {len(plans)} containers, the guide's setup has 2"
    running = [e2e.cluster.start(p) for p in plans]
    for r in running:
        secs = e2e.cluster.wait_ready(r, READY_TIMEOUT)
        e2e.report.add("start -> ready", r.name, f"{secs:.1f} s")
    target = roles.serving_service.spec["ports"][0].get("targetPort", roles.serving_service.spec["ports"][0]["port"])
    urls = {r.name: r.url(target, "/predict") for r in running}
    for name, url in urls.items():
        body = predict(url)
        assert body.get("class_name") == GUIDE_CLASS, f"{name}: {body}"
        assert str(body.get("model_version")) == e2e.values["v1"], f"{name} serves {body.get('model_version')}, " \
            f"MLflow's champion is {e2e.values['v1']}"
    e2e.values.update(serving=running, predict_urls=urls, serving_port=target)


@dataclass(frozen=True)
class Rec:
    t: float
    name: str  # serving container
    conn: str  # "keepalive": one HTTP connection all along; "fresh": a new connection per request (like curl)
    status: int | None
    version: str | None
    detail: str  # class name, or what went wrong


class Client(threading.Thread):
    """Sends the guide's request to every serving container in turn, all the time, until stopped:
    each time once over a kept-alive connection and once over a new one (which may reach another
    worker process of the container)."""

    def __init__(self, urls: dict[str, str], max_seconds: float):
        super().__init__(daemon=True)
        self.urls = list(urls.items())
        self.max_seconds = max_seconds
        self.stopping = threading.Event()
        self.records: list[Rec] = []

    def run(self) -> None:
        end = time.monotonic() + self.max_seconds
        i = 0
        with httpx.Client(timeout=10) as keepalive, \
                httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
            while not self.stopping.is_set() and time.monotonic() < end:
                name, url = self.urls[i % len(self.urls)]
                i += 1
                for conn, http in (("keepalive", keepalive), ("fresh", fresh)):
                    t = time.time()
                    try:
                        r = http.post(url, json=GUIDE_PAYLOAD)
                        body = r.json() if r.status_code == 200 else {}
                        self.records.append(Rec(t, name, conn, r.status_code, str(body.get("model_version")),
                                                str(body.get("class_name") if body else r.text[:200])))
                    except httpx.HTTPError as exc:
                        self.records.append(Rec(t, name, conn, None, None, f"{type(exc).__name__}: {exc}"))
                self.stopping.wait(0.02)  # pacing: ~80 requests/s, leaves the CPUs to the training run

    def latest(self, name: str, conn: str) -> str | None:
        for rec in reversed(self.records):
            if rec.name == name and rec.conn == conn and rec.status == 200:
                return rec.version
        return None

    def count_since(self, name: str, version: str, t0: float) -> int:
        return sum(1 for rec in self.records if rec.name == name and rec.version == version and rec.t >= t0)


def flips_back(seq: list[str | None], old: str, new: str) -> int:
    """How many times a sequence of answered versions went from `new` back to `old`."""
    return sum(1 for a, b in zip(seq, seq[1:], strict=False) if a == new and b == old)


def reload_bound(plan) -> float:
    """Bound on how long serving takes to serve a new model: the swap delay after publication
    (SWAP_DELAY_SECONDS, 5 s by default), or if a worker is late, the documented check interval
    (RELOAD_INTERVAL_SECONDS, 2 s by default) twice over plus the time to load and check a model."""
    delay = float(plan.env.get("SWAP_DELAY_SECONDS", "5"))
    return max(delay, 2 * float(plan.env.get("RELOAD_INTERVAL_SECONDS", "2")) + 10)


def test_4_retrain_hot_reload_under_load(e2e, deadline):
    stack1, roles = e2e.values["stack"], e2e.values["roles"]
    stack2 = e2e.render(**OPTIMIZED_RUN)
    # Only training changes: the serving and MLflow pods are declared exactly as before (no restart).
    for wl in (roles.serving, roles.mlflow):
        after = stack2.find(wl.type, wl.kname, wl.namespace)
        assert after.spec.get("template") == wl.spec.get("template"), \
            f"{wl} pod template changed with the training config"
    old_jobs = {j.kname for j in stack1.of_type(JOB)}
    new_jobs = [j for j in stack2.of_type(JOB) if j.kname not in old_jobs]
    assert len(new_jobs) == 1, f"the optimized config declares {len(new_jobs)} new Jobs, expected 1"
    job2 = new_jobs[0]
    for c in pod_spec(job2)["containers"]:
        assert c["image"] in e2e.values["images"], f"{job2} uses image {c['image']}, which the first render did not"

    serving: list[Running] = e2e.values["serving"]
    starts = {r.name: docker_times(r.name)[0] for r in serving}
    client = Client(e2e.values["predict_urls"], max_seconds=1800)
    client.start()
    try:
        run_job(e2e, stack2, job2)
        api = e2e.values["mlflow_api"]
        runs = api.runs(run_filter(OPTIMIZED_RUN))
        assert len(runs) == 1, f"MLflow has {len(runs)} runs with {run_filter(OPTIMIZED_RUN)}, expected 1"
        run = runs[0]
        assert run["info"]["status"] == "FINISHED", run["info"]
        assert run["info"].get("run_name") == OPTIMIZED_RUN["runName"], run["info"]
        (v,) = api.versions_of_run(run["info"]["run_id"])
        v2 = str(v["version"])
        assert v2 != e2e.values["v1"]
        champion = str(api.alias(e2e.values["model"], CHAMPION)["version"])
        assert champion == v2, f"{CHAMPION} is version {champion}, not the optimized run's {v2}"

        bound = reload_bound(serving[0].plan)
        t_job_end = time.time()
        left = deadline(bound)
        while left() and any(client.latest(r.name, "keepalive") != v2 for r in serving):
            time.sleep(0.2)
        lagging = [r.name for r in serving if client.latest(r.name, "keepalive") != v2]
        assert not lagging, f"{lagging} still serve {[client.latest(n, 'keepalive') for n in lagging]} " \
            f"{bound:.0f}s after the run finished; expected version {v2}"
        # Keep the load on until every container has answered 20 more requests with the new version.
        t_new = time.time()
        more = deadline(60)
        while more() and any(client.count_since(r.name, v2, t_new) < 20 for r in serving):
            time.sleep(0.2)
    finally:
        client.stopping.set()
        client.join(timeout=30)

    records = client.records
    failed = [rec for rec in records if rec.status != 200]
    assert not failed, f"{len(failed)} of {len(records)} requests failed during the reload, first: {failed[:5]}"
    wrong = [rec for rec in records if rec.detail != GUIDE_CLASS]
    assert not wrong, f"{len(wrong)} answers were not {GUIDE_CLASS}: {wrong[:5]}"
    v1 = e2e.values["v1"]
    fresh_flips = 0
    for r in serving:
        seq = [rec.version for rec in records if rec.name == r.name and rec.conn == "keepalive"]
        assert set(seq) <= {v1, v2}, f"{r.name} answered versions {sorted(set(seq))}"
        first_new = seq.index(v2)
        assert all(s == v1 for s in seq[:first_new]) and all(s == v2 for s in seq[first_new:]), \
            f"{r.name} went back to the old version after serving {v2} on one connection: {seq}"
        fresh = [rec.version for rec in records if rec.name == r.name and rec.conn == "fresh"]
        assert set(fresh) <= {v1, v2}, f"{r.name} answered versions {sorted(set(fresh))}"
        fresh_flips += flips_back(fresh, v1, v2)
        # picked up in place: same container start, no restart
        assert docker_times(r.name)[0] == starts[r.name], f"{r.name} was restarted"
        assert e2e.cluster.restart_count(r.name) == 0
        model = httpx.get(r.url(e2e.values["serving_port"], "/model"), timeout=10).json()
        published = model.get("published_at")
        t_first = next(rec.t for rec in records if rec.name == r.name and rec.version == v2)
        if published:
            p = dt.datetime.fromisoformat(published.replace("Z", "+00:00")).timestamp()
            e2e.report.add("promotion -> serving", r.name, f"{t_first - p:.1f} s (bound {bound:.0f} s)")
        else:
            e2e.report.add("run end -> serving", r.name, f"{t_first - t_job_end:.1f} s (bound {bound:.0f} s)")
    e2e.report.add("requests during reload", "all serving", f"{len(records)} sent, 0 failed")
    e2e.report.add("new -> old on new connections", "all serving", f"{fresh_flips} times")
    # One client thread sends every request after the previous one answered, to both containers,
    # over kept-alive and new connections (other worker processes): the whole sequence goes
    # old -> new once, never back (every worker and pod swaps at published_at + SWAP_DELAY_SECONDS).
    seq = [rec.version for rec in records]
    assert flips_back(seq, v1, v2) == 0 and fresh_flips == 0, \
        f"answers went from version {v2} back to {v1} {flips_back(seq, v1, v2)} times across containers " \
        f"and workers: {seq}"
    e2e.values.update(v2=v2)


def test_5_mlflow_restart_keeps_runs_and_serving_survives_mlflow_down(e2e):
    mlflow: Running = e2e.values["mlflow"]
    e2e.cluster.restart(mlflow)
    secs = e2e.cluster.wait_ready(mlflow, READY_TIMEOUT)
    e2e.report.add("restart -> ready", mlflow.name, f"{secs:.1f} s")
    # the published host port can change with the restart: ask again
    api = Mlflow(mlflow.url(resolve_port(mlflow.plan.pod, e2e.values["roles"].tracking_port)))
    for spec in (DEFAULT_RUN, OPTIMIZED_RUN):
        runs = api.runs(run_filter(spec))
        assert [r["info"].get("run_name") for r in runs] == [spec["runName"]], \
            f"after the restart MLflow lists {len(runs)} runs with {run_filter(spec)}"
    assert str(api.alias(e2e.values["model"], CHAMPION)["version"]) == e2e.values["v2"]

    e2e.cluster.stop(mlflow)
    assert e2e.cluster.state(mlflow.name)["Status"] == "exited"
    for r in e2e.values["serving"]:
        ok, detail = e2e.cluster.probe(r, r.plan.readiness)
        assert ok, f"{r.name} is not ready while MLflow is down: {detail}"
        for _ in range(10):
            body = predict(e2e.values["predict_urls"][r.name])
            assert body.get("class_name") == GUIDE_CLASS and str(body.get("model_version")) == e2e.values["v2"], body


def test_6_summary(e2e):
    table = e2e.report.table()
    print(f"\n===== summary =====\n{table}")
    e2e.values["summary_printed"] = True
    for section in ("image size", "build time", "start -> ready", "training time", "restart -> ready"):
        assert section in e2e.report.sections, f"summary lacks {section!r}"
    assert any(s.endswith("-> serving") for s in e2e.report.sections), "summary lacks the promotion -> serving time"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
