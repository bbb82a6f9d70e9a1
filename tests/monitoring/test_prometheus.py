"""A real Prometheus (Debian's binary) scrapes the real serving app and a real MLflow server on loopback.

The scrape contract is read from what the program declares (npm run render): the pods'
prometheus.io/* annotations (port, path) feed a `kubernetes-pods`-style job, and the ServiceMonitor
(path, port name -> the Service's targetPort, honorLabels) an operator-style job; the target labels
are the ones those jobs set in a cluster (namespace, pod; the operator's job, service, endpoint).
Kubernetes service discovery needs a cluster, so the targets are static_configs on 127.0.0.1 at the
declared ports. The alert rules are the rendered PrometheusRule's groups.

Then: traffic (predictions, a batch, bad input), every query of dashboards/iris-serving.json returns
data, every rule evaluates with health "ok", and the alerts react to real events (a refused model,
MLflow stopped, serving stopped). Every wait polls Prometheus with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVING_DIR = ROOT / "images" / "serving"
TRAINING_DIR = ROOT / "images" / "training"
DASHBOARD = ROOT / "dashboards" / "iris-serving.json"
RULES_FILE = ROOT / "dashboards" / "alerts.rules.yaml"
MODEL_NAME = "iris-classifier"
SERVING_NS, TRAINING_NS = "mlops-serving", "mlops-training"
SERVING_POD, MLFLOW_POD = "iris-serving-7c9d5-local", "mlflow-server-5f6b8-local"
# Grafana's variables, as the dashboard would send them against a 1 s scrape interval.
DASHBOARD_VARS = {"$namespace": SERVING_NS, "$__rate_interval": "1m", "$__range": "10m"}
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "GIT_PYTHON_REFRESH": "quiet"}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll until predicate() is truthy; fail after a bounded deadline with what it last returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_free(port: int, who: str) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            pytest.fail(
                f"port {port} on 127.0.0.1, which the stack declares for {who}, is taken ({exc}); "
                "run tests/monitoring/run, which runs the tests in a private network namespace"
            )


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Proc:
    """A child process in its own session, its output in a log file; stopped by SIGTERM to its group."""

    def __init__(self, argv: list[str], log: Path, **kw) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, **kw)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args[:3]} exited with {self.proc.returncode}:\n{self.tail()}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


# ---------------------------------------------------------------- what the program declares


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[tuple[str, str, str], dict]:
    """The k3s stack with mlflowMetrics, serviceMonitor and prometheusRules on: (kind, namespace, name) -> manifest."""
    out = tmp_path_factory.mktemp("render")
    sets = ["mlflowMetrics=true", "serviceMonitor=true", "prometheusRules=true"]
    argv = ["npm", "run", "--silent", "render", "--", "--stack", "k3s", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    objects = {}
    for f in (out / "k8s").glob("*.yaml"):
        m = yaml.safe_load(f.read_text())
        objects[(m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"])] = m
    return objects


def pod_template(rendered, namespace: str, name: str) -> dict:
    return rendered[("Deployment", namespace, name)]["spec"]["template"]


def scrape_annotations(rendered, namespace: str, name: str) -> tuple[int, str]:
    ann = pod_template(rendered, namespace, name)["metadata"].get("annotations", {})
    assert ann.get("prometheus.io/scrape") == "true", f"{namespace}/{name} is not annotated for scraping: {ann}"
    return int(ann["prometheus.io/port"]), ann["prometheus.io/path"]


def container(rendered, namespace: str, name: str) -> dict:
    return pod_template(rendered, namespace, name)["spec"]["containers"][0]


def test_the_rendered_prometheus_rule_is_the_rules_file(rendered):
    rule = rendered[("PrometheusRule", SERVING_NS, "iris-serving")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]


# ---------------------------------------------------------------- the running environment


def train_and_publish(models_dir: Path) -> Path:
    """A real model, trained and exported the way the trainer does; returns its version directory."""
    code = (
        "import sys; from pathlib import Path\n"
        "from trainer.export import make_metadata, publish_model\n"
        "from trainer.model import train_model\n"
        "r = train_model(n_estimators=10, max_depth=3)\n"
        "meta = make_metadata(r, version=1, run_id='run-1', run_name='monitoring')\n"
        "print(publish_model(Path(sys.argv[1]), sys.argv[2], r.model, meta))\n"
    )
    env = {**os.environ, **QUIET, "PYTHONPATH": str(TRAINING_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(models_dir), MODEL_NAME], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def mlflow_argv(rendered, data_dir: Path, port: int, metrics_dir: Path) -> list[str]:
    """The MLflow container's command as declared, on loopback: /data and /tmp moved, $(POD_IP) expanded."""
    argv = list(container(rendered, TRAINING_NS, "mlflow-server")["command"])
    assert argv[:2] == ["mlflow", "server"] and "--expose-prometheus" in argv, argv
    out, previous = [], None
    for arg in argv:
        if previous == "--host":
            arg = "127.0.0.1"
        elif previous == "--port":
            assert int(arg) == port, f"the server listens on {arg}, the annotation says {port}"
        elif previous == "--expose-prometheus":
            arg = str(metrics_dir)
        else:
            arg = arg.replace("/data/", f"{data_dir}/").replace("$(POD_IP)", "127.0.0.1")
        out.append(arg)
        previous = arg if arg.startswith("--") else None
    return [sys.executable, "-m", "mlflow", *out[1:]]


class Env:
    """Everything running: serving, MLflow, Prometheus; and the contract they were started from."""

    def __init__(self, rendered, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.serving_port, self.serving_path = scrape_annotations(rendered, SERVING_NS, "iris-serving")
        self.mlflow_port, self.mlflow_path = scrape_annotations(rendered, TRAINING_NS, "mlflow-server")
        sm = rendered[("ServiceMonitor", SERVING_NS, "iris-serving")]
        svc_name = "iris-serving-service"
        svc = rendered[("Service", SERVING_NS, svc_name)]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        (self.sm_endpoint,) = sm["spec"]["endpoints"]
        (svc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == self.sm_endpoint["port"]]
        same = "the ServiceMonitor and the annotations scrape the same port"
        assert svc_port["targetPort"] == self.serving_port, same
        self.rules = rendered[("PrometheusRule", SERVING_NS, "iris-serving")]["spec"]
        self.models = tmp / "models"
        self.models.mkdir()

        require_free(self.serving_port, "iris-serving")
        require_free(self.mlflow_port, "mlflow-server")
        serving = container(rendered, SERVING_NS, "iris-serving")
        assert serving["command"][:3] == ["python", "-m", "app.serve"], serving["command"]
        env = {e["name"]: e["value"] for e in serving.get("env", []) if "value" in e}
        assert int(env.get("PORT", self.serving_port)) == self.serving_port
        env.update(
            MODELS_DIR=str(self.models),
            HOST="127.0.0.1",
            PROMETHEUS_MULTIPROC_DIR=str(tmp / "serving-prom"),
            RELOAD_INTERVAL_SECONDS="0.5",
            SWAP_DELAY_SECONDS="0",
            PYTHONPATH=str(SERVING_DIR),
        )
        self.serving = self.start(
            [sys.executable, *serving["command"][1:]], "serving", cwd=SERVING_DIR, env={**os.environ, **env}
        )
        self.serving_url = f"http://127.0.0.1:{self.serving_port}"

        data = tmp / "mlflow-data"
        (data / "mlflow").mkdir(parents=True)
        argv = mlflow_argv(rendered, data, self.mlflow_port, tmp / "mlflow-metrics")
        self.mlflow = self.start(argv, "mlflow", cwd=data, env={**os.environ, **QUIET, "HOME": str(data)})
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"

        self.prom_port = free_port()
        config = tmp / "prometheus.yml"
        (tmp / "rules.yaml").write_text(yaml.safe_dump(self.rules, sort_keys=False))
        config.write_text(yaml.safe_dump(self.prometheus_config(), sort_keys=False))
        check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.prometheus = self.start(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
                "--log.level=warn",
            ],
            "prometheus",
            cwd=tmp,
        )
        self.prom_url = f"http://127.0.0.1:{self.prom_port}"

        # a pod that starts before the first model is published: alive, not ready, 503 on /predict
        wait_for(lambda: self.serving.alive() and http("GET", f"{self.serving_url}/health")[0] == 200, 120, "serving")
        for _ in range(3):
            status, body = http("POST", f"{self.serving_url}/predict", {"features": [5.1, 3.5, 1.4, 0.2]})
            assert status == 503, body
        self.version_dir = train_and_publish(self.models)
        for proc, url, deadline in (
            (self.serving, f"{self.serving_url}/ready", 120),
            (self.mlflow, f"{self.mlflow_url}/health", 180),
            (self.prometheus, f"{self.prom_url}/-/ready", 60),
        ):
            wait_for(lambda p=proc, u=url: p.alive() and http("GET", u)[0] == 200, deadline, url)

    def start(self, argv: list[str], name: str, **kw) -> Proc:
        p = Proc(argv, self.tmp / f"{name}.log", **kw)
        self.procs.append(p)
        return p

    def prometheus_config(self) -> dict:
        pod_job = {
            # what the kubernetes-pods job makes of the annotations: __address__ = <pod IP>:<port>,
            # __metrics_path__ = <path>, pod labels mapped, namespace and pod set
            "job_name": "kubernetes-pods",
            "metrics_path": self.serving_path,
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{self.serving_port}"],
                    "labels": {"namespace": SERVING_NS, "pod": SERVING_POD, "app": "iris-serving"},
                },
            ],
        }
        mlflow_job = {**pod_job, "job_name": "kubernetes-pods-mlflow", "metrics_path": self.mlflow_path}
        mlflow_job["static_configs"] = [
            {
                "targets": [f"127.0.0.1:{self.mlflow_port}"],
                "labels": {"namespace": TRAINING_NS, "pod": MLFLOW_POD, "app": "mlflow-server"},
            }
        ]
        # what the Prometheus Operator generates for the ServiceMonitor: job = the Service's name,
        # endpoint = the port's name, namespace/service/pod/container; honor_labels as declared
        ep = self.sm_endpoint
        sm_job = {
            "job_name": f"serviceMonitor/{SERVING_NS}/iris-serving/0",
            "metrics_path": ep["path"],
            "scheme": ep.get("scheme", "http"),
            "honor_labels": bool(ep.get("honorLabels", False)),
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{self.serving_port}"],
                    "labels": {
                        "job": "iris-serving-service",
                        "namespace": SERVING_NS,
                        "service": "iris-serving-service",
                        "pod": SERVING_POD,
                        "container": "serving",
                        "endpoint": ep["port"],
                    },
                }
            ],
        }
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.tmp / "rules.yaml")],
            "scrape_configs": [pod_job, mlflow_job, sm_job],
        }

    # ---- Prometheus' HTTP API
    def api(self, path: str, **params) -> dict:
        url = f"{self.prom_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http("GET", url)
        assert status == 200, f"{url}: {status} {body[:300]!r}"
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def alert_state(self, name: str) -> str:
        states = [a["state"] for a in self.alerts() if a["labels"]["alertname"] == name]
        return states[0] if states else "inactive"

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture(scope="module")
def env(rendered, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    e = None
    try:
        e = Env(rendered, tmp)
        yield e
    finally:
        if e is not None:
            e.stop()
        else:  # a failed start: stop what did start
            for log in tmp.glob("*.log"):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")


def send_traffic(env: Env) -> None:
    url = env.serving_url
    for features in ([5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]):
        status, body = http("POST", f"{url}/predict", {"features": features})
        assert status == 200, body
    status, body = http("POST", f"{url}/predict", {"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]})
    assert status == 200, body
    status, body = http("POST", f"{url}/predict", {"features": [5.1, 3.5]})
    assert status == 422, body
    status, _ = http("POST", f"{url}/invocations", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert status == 200
    assert http("GET", f"{url}/model")[0] == 200
    assert http("GET", f"{env.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 200


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for var, value in DASHBOARD_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown dashboard variable in {t['expr']}"
            out.append((f"{panel['title']} / {t['refId']}", expr))
    return out


def test_every_declared_target_is_scraped(env):
    def all_up():
        targets = env.api("targets")["activeTargets"]
        return len(targets) == 3 and all(t["health"] == "up" for t in targets) and targets

    targets = wait_for(all_up, 60, "the three targets up")
    paths = {t["labels"]["job"]: urllib.parse.urlparse(t["scrapeUrl"]).path for t in targets}
    assert paths == {
        "kubernetes-pods": env.serving_path,
        "kubernetes-pods-mlflow": env.mlflow_path,
        "iris-serving-service": env.sm_endpoint["path"],
    }


def test_every_dashboard_query_returns_data_after_traffic(env):
    send_traffic(env)
    queries = dashboard_queries()
    assert len(queries) >= 9
    pending = dict(queries)

    def all_answered():
        send_traffic(env)  # fresh samples keep every rate() window populated
        for title, expr in list(pending.items()):
            if env.query(expr):
                del pending[title]
        return not pending

    try:
        wait_for(all_answered, 60, "data for every dashboard query", interval=1)
    except AssertionError:
        pytest.fail("dashboard queries without data: " + json.dumps(pending, indent=1))
    # and no part of a query names a series that is never produced (`or vector(0)` would hide it)
    selectors = {sel for _, expr in queries for sel in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}", expr)}
    assert len(selectors) >= 6, selectors
    empty = [sel for sel in sorted(selectors) if not env.query(f"count({sel})")]
    assert not empty, f"series the dashboard selects that Prometheus never scraped: {empty}"
    # and what the panels show is right: the versions served, the classes predicted
    versions = env.query(dict(queries)["Loaded model version / A"])
    assert {r["metric"]["version"] for r in versions} == {"1"}
    classes = {r["metric"]["class_name"] for r in env.query(dict(queries)["Predictions by class / A"])}
    assert {"setosa", "virginica"} <= classes, classes


def test_servicemonitor_scrape_keeps_the_apps_endpoint_label(env):
    """The operator sets endpoint=<port name>; with honorLabels the app's route template wins."""
    send_traffic(env)

    def routes():
        rows = env.query('count by (endpoint) (serving_http_requests_total{job="iris-serving-service"})')
        return {r["metric"].get("endpoint") for r in rows} if rows else None

    seen = wait_for(lambda: (r := routes()) and "/predict" in r and r, 30, "/predict counted by the ServiceMonitor job")
    assert env.sm_endpoint["port"] not in seen, seen
    assert not env.query('{job="iris-serving-service", exported_endpoint!=""}')


def test_every_alert_rule_evaluates_without_error(env):
    expected = {r["alert"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]}

    def evaluated():
        rules = [r for g in env.api("rules")["groups"] for r in g["rules"]]
        done = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
        return done and rules

    rules = wait_for(evaluated, 30, "every rule evaluated once")
    assert {r["name"] for r in rules} == expected
    bad = {r["name"]: (r["health"], r.get("lastError")) for r in rules if r["health"] != "ok" or r.get("lastError")}
    assert not bad, bad
    # none of them pending or firing; left out: the error ratio (the 503s before the model was
    # published count) and the latency (it depends on the machine's load)
    for name in expected - {"ServingHighErrorRate", "ServingHighLatencyP99"}:
        assert env.alert_state(name) == "inactive", (name, env.alerts())


def test_a_refused_model_fires_ServingModelReloadRefused(env):
    bad = env.version_dir.parent / "broken-2"
    shutil.copytree(env.version_dir, bad)
    npz = bad / "model.npz"
    npz.write_bytes(npz.read_bytes()[:-64] + b"\0" * 64)  # the checksum in metadata.json no longer matches
    pointer_path = env.models / MODEL_NAME / "current.json"
    pointer = json.loads(pointer_path.read_text())
    pointer.update(dir=bad.name, version="2", run_id="run-2")
    tmp = pointer_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pointer))
    os.replace(tmp, pointer_path)

    def firing():
        return [
            a
            for a in env.alerts()
            if a["labels"]["alertname"] == "ServingModelReloadRefused" and a["state"] == "firing"
        ]

    alert = wait_for(firing, 60, "ServingModelReloadRefused firing")[0]
    assert alert["labels"]["pod"] == SERVING_POD and alert["labels"]["severity"] == "warning"
    assert http("GET", f"{env.serving_url}/ready")[0] == 200, "still serving the previous model"
    assert env.alert_state("ServingNoModelLoaded") == "inactive"


def test_mlflow_stopped_makes_MLflowDown_pending(env):
    env.mlflow.stop()
    wait_for(lambda: env.alert_state("MLflowDown") in ("pending", "firing"), 60, "MLflowDown pending")
    assert env.query(f'up{{namespace="{TRAINING_NS}"}}')[0]["value"][1] == "0"
    assert env.alert_state("ServingDown") == "inactive"


def test_serving_stopped_makes_ServingDown_pending(env):
    env.serving.stop()
    wait_for(lambda: env.alert_state("ServingDown") in ("pending", "firing"), 60, "ServingDown pending")


def test_dashboard_variables_are_the_ones_substituted():
    used = set(re.findall(r"\$[a-zA-Z_]+", DASHBOARD.read_text()))
    assert used - {"$datasource"} <= set(DASHBOARD_VARS), used
