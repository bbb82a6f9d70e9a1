"""MLflow basic auth (mlflowAuth=true) as the program declares it, on a real Docker engine.

Runs after the scenario (the images exist by then; missing ones are built), on its own networks and
its own storage directory: the init container that writes the admin user, the server with
`--app-name basic-auth` from the rendered command, env (Secret keys), ConfigMap and mounts; then
401 without or with wrong credentials, 200 with them, /health open for the probes; a training Job
that logs in with the credentials from the Secret; and a password change applied by the init container.
"""

from __future__ import annotations

import os
import secrets
import subprocess

import httpx
import pytest

from cluster import Cluster, docker
from stack import DEPLOYMENT, JOB, SECRET, plan_pod, pod_spec

READY_TIMEOUT = float(os.environ.get("E2E_READY_TIMEOUT", "240"))
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=10"


def _run_to_completion(cluster: Cluster, plans, timeout: float) -> str:
    """Runs init containers one after another, as the kubelet does; returns their logs."""
    logs = []
    for plan in plans:
        r = cluster.start(plan)
        code = cluster.wait_exit(r, timeout)
        out = cluster.logs(r.name)
        assert code == 0, f"init container {plan.container_name} exited {code}:\n{out}"
        logs.append(out)
    return "\n".join(logs)


def test_mlflow_basic_auth(e2e):
    password = secrets.token_urlsafe(18)
    storage = e2e.workdir / "storage-auth" / "mlops"
    os.makedirs(storage, mode=0o755)
    stack = e2e.render(storageDir=str(storage), mlflowAuth="true", mlflowPassword=password)

    for c in stack.storage_commands(str(storage)):
        interpreter = c.inputs.get("interpreter") or ["/bin/sh", "-c"]
        p = subprocess.run([*interpreter, c.inputs["create"]], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"storage command {c.name} exited {p.returncode}: {p.stdout}{p.stderr}"

    (secret,) = stack.of_type(SECRET)
    username = secret.inputs["stringData"]["username"]
    mlflow = [d for d in stack.of_type(DEPLOYMENT) if pod_spec(d).get("initContainers")]
    assert len(mlflow) == 1, "with mlflowAuth=true exactly one Deployment (MLflow) has an init container"
    mlflow = mlflow[0]
    (job,) = stack.of_type(JOB)

    cluster = Cluster(f"{e2e.cluster.run_id}a")
    scratch = e2e.workdir / "pods-auth"
    cpus = float(os.cpu_count() or 1)
    init_plans = plan_pod(stack, mlflow, 0, cluster.prefix, scratch, cpus, init=True)
    main_plans = plan_pod(stack, mlflow, 0, cluster.prefix, scratch, cpus, with_init=True)
    job_plans = plan_pod(stack, job, 0, cluster.prefix, scratch, cpus)
    images = {p.image for p in init_plans + main_plans + job_plans}
    missing = {i for i in images if docker("image", "inspect", i, check=False).returncode != 0}
    if missing:
        e2e.build_images(stack, missing)
    try:
        out = _run_to_completion(cluster, init_plans, READY_TIMEOUT)
        assert f"admin user {username} created" in out, out

        (server,) = [cluster.start(p) for p in main_plans]
        secs = cluster.wait_ready(server, READY_TIMEOUT)  # the readiness probe (/health) passes without credentials
        e2e.report.add("start -> ready", f"{server.name} (basic auth)", f"{secs:.1f} s")
        base = server.url(5000)
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert httpx.get(f"{base}{SEARCH}", timeout=10).status_code == 401
        assert httpx.get(f"{base}{SEARCH}", auth=(username, "not-the-password"), timeout=10).status_code == 401
        assert httpx.get(f"{base}{SEARCH}", auth=(username, password), timeout=10).status_code == 200

        # a training Job logs in with MLFLOW_TRACKING_USERNAME/PASSWORD from the Secret
        (job_plan,) = job_plans
        assert job_plan.env.get("MLFLOW_TRACKING_PASSWORD") == password, "the Job's credentials come from the Secret"
        r = cluster.start(job_plan)
        code = cluster.wait_exit(r, float(job.spec.get("activeDeadlineSeconds", 1200)))
        assert code == 0, f"training Job with basic auth exited {code}:\n{cluster.logs(r.name, 40)}"
        body = {"experiment_ids": [], "max_results": 10}
        exps = httpx.post(f"{base}/api/2.0/mlflow/experiments/search", json={"max_results": 100},
                          auth=(username, password), timeout=10).json()["experiments"]
        body["experiment_ids"] = [x["experiment_id"] for x in exps]
        runs = httpx.post(f"{base}/api/2.0/mlflow/runs/search", json=body, auth=(username, password),
                          timeout=10).json().get("runs", [])
        assert [x["info"]["status"] for x in runs] == ["FINISHED"], runs

        # a new mlflowPassword: the init container (run on the next rollout) sets it in the user database
        new_password = secrets.token_urlsafe(18)
        rotated = e2e.render(storageDir=str(storage), mlflowAuth="true", mlflowPassword=new_password)
        (rotated_mlflow,) = [d for d in rotated.of_type(DEPLOYMENT) if pod_spec(d).get("initContainers")]
        rotate_plans = plan_pod(rotated, rotated_mlflow, 1, cluster.prefix, scratch, cpus, init=True)
        out = _run_to_completion(cluster, rotate_plans, READY_TIMEOUT)
        assert f"admin user {username} updated" in out, out
        assert httpx.get(f"{base}{SEARCH}", auth=(username, new_password), timeout=10).status_code == 200
        assert httpx.get(f"{base}{SEARCH}", auth=(username, password), timeout=10).status_code == 401
    except Exception:
        print(cluster.dump_logs(60))
        raise
    finally:
        if os.environ.get("E2E_KEEP") != "1":
            cluster.teardown()


def test_init_containers_must_be_planned_first(e2e, tmp_path):
    """The harness refuses to start a pod's containers without its init containers."""
    from stack import SpecError

    stack = e2e.render(mlflowAuth="true", mlflowPassword="x" * 16)
    (mlflow,) = [d for d in stack.of_type(DEPLOYMENT) if pod_spec(d).get("initContainers")]
    with pytest.raises(SpecError, match="declares initContainers"):
        plan_pod(stack, mlflow, 0, "p", tmp_path)
