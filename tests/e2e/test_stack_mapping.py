"""How the harness turns declared pod specs into `docker create` arguments (no Docker needed)."""

from __future__ import annotations

import copy

import pytest

from conftest import REPO
from stack import DEPLOYMENT, HPA, JOB, PV, PVC, SERVICE, SpecError, Stack, config_keys, plan_pod


def objects(tmp_path, *, job_env_url="http://db-service.ns-a.svc.cluster.local:5000", svc_target=5000,
            pv_type="Directory"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    server = {
        "type": DEPLOYMENT, "name": "server",
        "inputs": {
            "metadata": {"name": "db", "namespace": "ns-a"},
            "spec": {"replicas": 1, "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "securityContext": {"runAsUser": 10001, "runAsGroup": 10002, "runAsNonRoot": True},
                    "containers": [{
                        "name": "db", "image": "img:1",
                        "command": ["server", "--port", "$(PORT)"], "args": ["--verbose"],
                        "env": [{"name": "PORT", "value": "5000"}, {"name": "URL", "value": "http://x:$(PORT)/"}],
                        "ports": [{"name": "http", "containerPort": 5000}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                         {"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "claim-a"}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            }},
        },
    }
    reader = {
        "type": JOB, "name": "reader",
        "inputs": {
            "metadata": {"name": "reader", "namespace": "ns-b"},
            "spec": {"template": {"metadata": {"labels": {"app": "reader"}}, "spec": {
                "containers": [{"name": "r", "image": "img:2", "args": ["go"],
                                "env": [{"name": "DB", "value": job_env_url}],
                                "volumeMounts": [{"name": "d", "mountPath": "/in", "readOnly": False}]}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "claim-b", "readOnly": True}}],
            }}},
        },
    }
    svc = {"type": SERVICE, "name": "svc", "inputs": {
        "metadata": {"name": "db-service", "namespace": "ns-a"},
        "spec": {"selector": {"app": "db"}, "ports": [{"port": 5000, "targetPort": svc_target}]},
    }}
    pvs = [
        {"type": PV, "name": "pv-a", "inputs": {"metadata": {"name": "pv-a"}, "spec": {
            "hostPath": {"path": str(data), "type": pv_type}, "claimRef": {"name": "claim-a", "namespace": "ns-a"}}}},
        {"type": PV, "name": "pv-b", "inputs": {"metadata": {"name": "pv-b"}, "spec": {
            "hostPath": {"path": str(data / "sub"), "type": "DirectoryOrCreate"}}}},
        {"type": PVC, "name": "pvc-a", "inputs": {"metadata": {"name": "claim-a", "namespace": "ns-a"},
                                                   "spec": {"volumeName": "pv-a"}}},
        {"type": PVC, "name": "pvc-b", "inputs": {"metadata": {"name": "claim-b", "namespace": "ns-b"},
                                                   "spec": {"volumeName": "pv-b"}}},
    ]
    return [server, reader, svc, *pvs]


def test_pod_spec_maps_to_docker_create(tmp_path):
    stack = Stack(objects(tmp_path))
    (plan,) = plan_pod(stack, stack.find(DEPLOYMENT, "db"), 0, "pfx", tmp_path / "pods")
    args = plan.create_args("net", {"l": "v"})
    # command -> entrypoint + its rest, args after; $(VAR) expanded from the container's env
    assert args[args.index("--entrypoint") + 1] == "server"
    assert args[args.index("img:1"):] == ["img:1", "--port", "5000", "--verbose"]
    assert plan.env == {"PORT": "5000", "URL": "http://x:5000/"}
    assert args[args.index("--user") + 1] == "10001:10002"
    assert "--read-only" in args and ["--cap-drop", "ALL"] == args[args.index("--cap-drop"):][:2]
    assert ["--security-opt", "no-new-privileges"] == args[args.index("--security-opt"):][:2]
    assert args[args.index("--cpus") + 1] == "0.5" and args[args.index("--memory") + 1] == str(256 * 2**20)
    assert plan.mounts == [f"type=bind,src={tmp_path / 'data'},dst=/data", "type=tmpfs,dst=/tmp,tmpfs-mode=1777"]
    assert "127.0.0.1::5000" in args
    assert plan.aliases == {
        "cluster": ["db-service.ns-a.svc.cluster.local", "db-service.ns-a.svc", "db-service.ns-a"],
        "namespace": ["db-service"],
    }
    assert plan.docker_name == "pfx-ns-a-db-0" and plan.hostname == "db-0"


def test_claim_read_only_and_args_without_command(tmp_path):
    stack = Stack(objects(tmp_path))
    (plan,) = plan_pod(stack, stack.find(JOB, "reader"), 0, "pfx", tmp_path / "pods")
    args = plan.create_args("net", {})
    assert "--entrypoint" not in args and args[-2:] == ["img:2", "go"]  # args alone replace the image CMD
    assert plan.mounts == [f"type=bind,src={tmp_path / 'data' / 'sub'},dst=/in,readonly"]
    assert (tmp_path / "data" / "sub").is_dir()  # DirectoryOrCreate
    assert plan.aliases == {"cluster": [], "namespace": []} and plan.user is None


def test_replicas_come_from_an_hpa_targeting_the_deployment(tmp_path):
    objs = objects(tmp_path)
    assert Stack(objs).replicas(Stack(objs).find(DEPLOYMENT, "db")) == 1
    server = copy.deepcopy(objs[0])
    del server["inputs"]["spec"]["replicas"]
    hpa = {"type": HPA, "name": "hpa", "inputs": {"metadata": {"name": "db", "namespace": "ns-a"}, "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "db"},
        "minReplicas": 3, "maxReplicas": 5}}}
    stack = Stack([server, *objs[1:], hpa])
    assert stack.replicas(stack.find(DEPLOYMENT, "db")) == 3
    other_ns = copy.deepcopy(hpa)
    other_ns["inputs"]["metadata"]["namespace"] = "ns-b"
    stack = Stack([server, *objs[1:], other_ns])
    assert stack.replicas(stack.find(DEPLOYMENT, "db")) == 1  # an HPA scales targets in its own namespace only
    with pytest.raises(SpecError, match="target of 2 HorizontalPodAutoscalers"):
        stack = Stack([server, *objs[1:], hpa, {**hpa, "name": "hpa2"}])
        stack.replicas(stack.find(DEPLOYMENT, "db"))


def test_service_references_are_checked(tmp_path):
    assert Stack(objects(tmp_path)).check_service_references() == [
        "Job ns-b/reader env DB -> Service ns-a/db-service:5000"
    ]
    with pytest.raises(SpecError, match=r"names port 5001 of Service ns-a/db-service, which declares ports \[5000\]"):
        Stack(objects(tmp_path, job_env_url="http://db-service.ns-a.svc.cluster.local:5001")).check_service_references()
    # a short name only resolves inside the Service's namespace: from ns-b it is no reference
    assert Stack(objects(tmp_path, job_env_url="http://db-service:5000")).check_service_references() == []
    with pytest.raises(SpecError, match="cannot remap ports"):
        Stack(objects(tmp_path, svc_target=8000)).check_service_references()


def test_missing_host_directory_and_unsupported_volume_are_clear_errors(tmp_path):
    objs = objects(tmp_path)
    objs[3]["inputs"]["spec"]["hostPath"]["path"] = str(tmp_path / "absent")
    stack = Stack(objs)
    with pytest.raises(SpecError, match=r"hostPath .*absent has type Directory but does not exist"):
        plan_pod(stack, stack.find(DEPLOYMENT, "db"), 0, "p", tmp_path)
    objs = copy.deepcopy(objects(tmp_path))
    objs[0]["inputs"]["spec"]["template"]["spec"]["volumes"][1] = {"name": "tmp", "nfs": {"server": "x"}}
    stack = Stack(objs)
    with pytest.raises(SpecError, match=r"volume tmp of kind \['name', 'nfs'\] is not supported"):
        plan_pod(stack, stack.find(DEPLOYMENT, "db"), 0, "p", tmp_path)
    with pytest.raises(SpecError, match="resource #0 has no 'inputs'"):
        Stack([{"type": JOB, "name": "x"}])


def test_config_keys_come_from_pulumi_yaml():
    keys = config_keys(REPO)
    assert "storageDir" in keys and "nEstimators" in keys
