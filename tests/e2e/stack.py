"""The rendered stack (`npm run render`) and its pod specs as `docker create` arguments.

Everything the end-to-end harness runs comes from here: images, commands, args, env, ports,
users, probes, mounts and Service aliases are read from the objects the Pulumi program declares,
so a wiring mistake in the program shows up as a failure, not as a harness that papers over it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
JOB = "kubernetes:batch/v1:Job"
SERVICE = "kubernetes:core/v1:Service"
PV = "kubernetes:core/v1:PersistentVolume"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
COMMAND = "command:local:Command"
IMAGE_TYPES = ("docker:index/image:Image", "docker-build:index:Image")

CLUSTER_DOMAIN = "svc.cluster.local"


class SpecError(Exception):
    """The rendered program declares something the harness cannot run as declared."""


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.inputs.get("metadata") or {}

    @property
    def kname(self) -> str:
        """Kubernetes metadata.name (the Pulumi name when the object is auto-named)."""
        return self.metadata.get("name") or self.name

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace") or "default"

    @property
    def spec(self) -> dict[str, Any]:
        return self.inputs.get("spec") or {}

    def __str__(self) -> str:
        return f"{self.type.rsplit(':', 1)[-1]} {self.namespace}/{self.kname}"


def render(repo: Path, out: Path, overrides: dict[str, str], stack: str = "k3s", timeout: float = 300) -> Stack:
    """Runs `npm run render` for `stack` with `--set` overrides and loads what it wrote."""
    cmd = ["npm", "run", "--silent", "render", "--", "--stack", stack, "--out", str(out)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SpecError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return Stack.load(out)


def config_keys(repo: Path) -> set[str]:
    """The config keys Pulumi.yaml declares (top-level keys under `config:`, project prefix dropped)."""
    keys: set[str] = set()
    in_config = False
    for line in (repo / "Pulumi.yaml").read_text().splitlines():
        if re.match(r"^config:\s*$", line):
            in_config = True
            continue
        if in_config:
            if line and not line[0].isspace() and not line.startswith("#"):
                break
            m = re.match(r"^  ([A-Za-z0-9_.:-]+):", line)
            if m:
                keys.add(m.group(1).split(":")[-1])
    return keys


class Stack:
    def __init__(self, resources: Iterable[dict[str, Any]], source: str = "<memory>"):
        self.source = source
        self.resources: list[Resource] = []
        for i, r in enumerate(resources):
            for k in ("type", "name", "inputs"):
                if k not in r:
                    raise SpecError(f"{source}: resource #{i} has no '{k}' (each entry is {{type, name, inputs}})")
            self.resources.append(Resource(r["type"], r["name"], r["inputs"] or {}))

    @classmethod
    def load(cls, out_dir: Path) -> Stack:
        path = Path(out_dir) / "resources.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path} does not exist: the render wrote no resources.json") from None
        if not isinstance(data, list):
            raise SpecError(f"{path}: expected a JSON array of resources, got {type(data).__name__}")
        return cls(data, str(path))

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]

    def find(self, type_: str, kname: str, namespace: str | None = None) -> Resource:
        found = [r for r in self.of_type(type_) if r.kname == kname and (namespace is None or r.namespace == namespace)]
        if len(found) != 1:
            where = f" in namespace {namespace}" if namespace else ""
            have = sorted(f"{r.namespace}/{r.kname}" for r in self.of_type(type_))
            raise SpecError(f"expected one {type_} named '{kname}'{where}, found {len(found)}; declared: {have}")
        return found[0]

    # --- workloads --------------------------------------------------------------------------

    def workloads(self) -> list[Resource]:
        return self.of_type(DEPLOYMENT, JOB)

    def replicas(self, wl: Resource) -> int:
        """Pods a Deployment runs: the minReplicas of an HPA that targets it (the HPA owns the count,
        and never goes below it), else spec.replicas (Kubernetes' default 1 when unset)."""
        hpas = [
            h for h in self.of_type(HPA)
            if h.namespace == wl.namespace
            and (h.spec.get("scaleTargetRef") or {}).get("name") == wl.kname
            and (h.spec.get("scaleTargetRef") or {}).get("kind") == "Deployment"
        ]
        if len(hpas) > 1:
            raise SpecError(f"{wl} is the target of {len(hpas)} HorizontalPodAutoscalers: {[str(h) for h in hpas]}")
        if hpas:
            return int(hpas[0].spec.get("minReplicas", 1))
        return int(wl.spec.get("replicas", 1))

    def services_selecting(self, namespace: str, labels: dict[str, str]) -> list[Resource]:
        """Services in `namespace` whose selector matches pods with `labels`."""
        out = []
        for svc in self.of_type(SERVICE):
            selector = svc.spec.get("selector") or {}
            if svc.namespace == namespace and selector and all(labels.get(k) == v for k, v in selector.items()):
                out.append(svc)
        return out

    def service_dns_names(self, svc: Resource) -> list[str]:
        n, ns = svc.kname, svc.namespace
        return [f"{n}.{ns}.{CLUSTER_DOMAIN}", f"{n}.{ns}.svc", f"{n}.{ns}"]

    def services_referenced(self, text: str, from_namespace: str) -> list[tuple[Resource, int | None]]:
        """Services a string (env value, arg) names by DNS, with the port it names (None: no port)."""
        found = []
        for svc in self.of_type(SERVICE):
            names = self.service_dns_names(svc)
            if svc.namespace == from_namespace:
                names.append(svc.kname)
            for dns in names:
                for m in re.finditer(rf"(?<![\w.-]){re.escape(dns)}(?::(\d+))?(?![\w.-])", text):
                    found.append((svc, int(m.group(1)) if m.group(1) else None))
                    break
                else:
                    continue
                break
        return found

    def check_service_references(self) -> list[str]:
        """Every Service a pod names in its env/command/args exists with that port, and the port is
        served by the pod behind it on the same number (Docker aliases do not remap ports).
        Returns human-readable descriptions of the references that were checked."""
        checked = []
        for wl in self.workloads():
            pod = pod_spec(wl)
            for c in pod.get("containers") or []:
                texts = [(f"env {e.get('name')}", str(e.get("value", ""))) for e in c.get("env") or []]
                texts += [("command", " ".join(map(str, c.get("command") or [])))]
                texts += [("args", " ".join(map(str, c.get("args") or [])))]
                for what, text in texts:
                    for svc, port in self.services_referenced(text, wl.namespace):
                        ports = svc.spec.get("ports") or []
                        if port is None:
                            checked.append(f"{wl} {what} -> {svc} (no port)")
                            continue
                        match = [p for p in ports if p.get("port") == port]
                        if not match:
                            raise SpecError(
                                f"{wl} container {c.get('name')} {what}={text!r} names port {port} of {svc}, "
                                f"which declares ports {[p.get('port') for p in ports]}"
                            )
                        target = match[0].get("targetPort", port)
                        backends = [
                            b for b in self.workloads()
                            if b.namespace == svc.namespace
                            and svc in self.services_selecting(b.namespace, pod_labels(b))
                        ]
                        if not backends:
                            raise SpecError(f"{svc} (named by {wl} {what}) selects no declared pod")
                        for b in backends:
                            number = resolve_port(pod_spec(b), target)
                            if number != port:
                                raise SpecError(
                                    f"{wl} {what} uses {svc} port {port} -> targetPort {target} ({number}) of {b}: "
                                    "the harness cannot remap ports on Docker aliases"
                                )
                        checked.append(f"{wl} {what} -> {svc}:{port}")
        return checked

    # --- storage ----------------------------------------------------------------------------

    def claim_host_path(self, namespace: str, claim: str) -> tuple[str, Resource]:
        """hostPath of the PV bound to claim `namespace/claim` (volumeName, or the PV's claimRef)."""
        pvc = self.find(PVC, claim, namespace)
        pvs = self.of_type(PV)
        volume_name = pvc.spec.get("volumeName")
        if volume_name:
            matching = [pv for pv in pvs if pv.kname == volume_name]
        else:
            matching = [
                pv for pv in pvs
                if (pv.spec.get("claimRef") or {}).get("name") == claim
                and (pv.spec.get("claimRef") or {}).get("namespace") == namespace
            ]
        if len(matching) != 1:
            raise SpecError(
                f"{pvc} binds to {len(matching)} PersistentVolumes (volumeName={volume_name!r}); "
                f"declared PVs: {[pv.kname for pv in pvs]}"
            )
        pv = matching[0]
        ref = pv.spec.get("claimRef")
        if ref and (ref.get("name"), ref.get("namespace")) != (claim, namespace):
            raise SpecError(f"{pv} claimRef {ref} does not point back at {pvc}")
        host_path = (pv.spec.get("hostPath") or {}).get("path")
        if not host_path:
            raise SpecError(f"{pv} (bound to {pvc}) has no hostPath.path; the harness runs hostPath volumes only")
        return host_path, pv

    def storage_commands(self, storage_dir: str) -> list[Resource]:
        """Local commands whose script mentions `storage_dir` (the program's storage preparation)."""
        return [c for c in self.of_type(COMMAND) if storage_dir in str(c.inputs.get("create", ""))]

    # --- images -----------------------------------------------------------------------------

    def image_builds(self) -> dict[str, Path]:
        """Image name -> build context directory, for every image resource the program declares."""
        out: dict[str, Path] = {}
        for r in self.of_type(*IMAGE_TYPES):
            names = [r.inputs.get("imageName")] + list(r.inputs.get("tags") or [])
            build = r.inputs.get("build") or {}
            context = build.get("context") or (r.inputs.get("context") or {}).get("location")
            if not context:
                raise SpecError(f"image resource {r.name} has no build context")
            for n in names:
                if n:
                    out[n] = Path(context)
        return out


# --- pod specs -------------------------------------------------------------------------------


def pod_template(wl: Resource) -> dict[str, Any]:
    tpl = wl.spec.get("template")
    if not tpl:
        raise SpecError(f"{wl} has no spec.template")
    return tpl


def pod_spec(wl: Resource) -> dict[str, Any]:
    spec = pod_template(wl).get("spec")
    if not spec or not spec.get("containers"):
        raise SpecError(f"{wl} declares no containers")
    return spec


def pod_labels(wl: Resource) -> dict[str, str]:
    return (pod_template(wl).get("metadata") or {}).get("labels") or {}


def resolve_port(pod: dict[str, Any], port: int | str) -> int:
    """A port number, or a named container port of the pod, as a number."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for c in pod.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise SpecError(f"port {port!r} is neither a number nor a named port of the pod")


def parse_quantity_bytes(q: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(q))
    if not m or (m.group(2) and m.group(2) not in units):
        raise SpecError(f"memory quantity {q!r} is not allowed: a number with one of {sorted(units)} or none")
    return int(float(m.group(1)) * units.get(m.group(2), 1))


def parse_quantity_cpu(q: str | int | float) -> float:
    s = str(q)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", s)
    if not m:
        raise SpecError(f"cpu quantity {q!r} is not allowed: cores (e.g. 1, 0.5) or millicores (500m)")
    return float(m.group(1)) / (1000 if m.group(2) else 1)


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined variables are replaced, $$ escapes, others stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, text)


@dataclass
class ContainerPlan:
    """One pod replica's container as `docker create` arguments, and what the harness needs to watch it."""

    workload: Resource
    container_name: str  # the pod spec's container name
    docker_name: str  # the Docker container name
    hostname: str
    image: str
    entrypoint: str | None
    args: list[str]
    env: dict[str, str]
    user: str | None
    workdir: str | None
    read_only: bool
    mounts: list[str] = field(default_factory=list)  # --mount values
    ports: list[int] = field(default_factory=list)  # container ports published on 127.0.0.1
    aliases: dict[str, list[str]] = field(default_factory=dict)  # network role -> aliases
    cpus: float | None = None
    memory: int | None = None
    cap_drop: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    no_new_privileges: bool = False
    group_add: list[int] = field(default_factory=list)
    readiness: dict[str, Any] | None = None
    liveness: dict[str, Any] | None = None
    pod: dict[str, Any] = field(default_factory=dict)

    def create_args(self, network: str, labels: dict[str, str]) -> list[str]:
        a = ["--name", self.docker_name, "--hostname", self.hostname, "--network", network]
        for k, v in labels.items():
            a += ["--label", f"{k}={v}"]
        if self.entrypoint is not None:
            a += ["--entrypoint", self.entrypoint]
        for k, v in self.env.items():
            a += ["--env", f"{k}={v}"]
        if self.user:
            a += ["--user", self.user]
        for g in self.group_add:
            a += ["--group-add", str(g)]
        if self.workdir:
            a += ["--workdir", self.workdir]
        if self.read_only:
            a.append("--read-only")
        for m in self.mounts:
            a += ["--mount", m]
        for p in self.ports:
            a += ["--publish", f"127.0.0.1::{p}"]
        if self.cpus is not None:
            a += ["--cpus", f"{self.cpus:g}"]
        if self.memory is not None:
            a += ["--memory", str(self.memory), "--memory-swap", str(self.memory)]
        for c in self.cap_drop:
            a += ["--cap-drop", c]
        for c in self.cap_add:
            a += ["--cap-add", c]
        if self.no_new_privileges:
            a += ["--security-opt", "no-new-privileges"]
        return a + [self.image] + self.args


def plan_pod(
    stack: Stack,
    wl: Resource,
    replica: int,
    prefix: str,
    scratch: Path,
    max_cpus: float | None = None,
    *,
    init: bool = False,
    with_init: bool = False,
) -> list[ContainerPlan]:
    """The containers of replica `replica` of workload `wl`; with `init`, its init containers
    instead (the caller runs them one after another to completion first, as the kubelet does).
    A pod with init containers needs `with_init=True` for its main containers, so that no caller
    starts them without having run the init containers."""
    pod = pod_spec(wl)
    if pod.get("initContainers") and not (init or with_init):
        raise SpecError(f"{wl} declares initContainers: plan and run them first (plan_pod(init=True)), "
                        "then plan the containers with with_init=True")
    pod_name = f"{wl.kname}-{replica}"
    pod_sc = pod.get("securityContext") or {}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    labels = pod_labels(wl)
    services = stack.services_selecting(wl.namespace, labels)
    plans = []
    containers = (pod.get("initContainers") or []) if init else pod["containers"]
    for c in containers:
        cname = c.get("name") or "main"
        where = f"{wl} container {cname}"
        if not c.get("image"):
            raise SpecError(f"{where} has no image")
        sc = {**pod_sc, **(c.get("securityContext") or {})}

        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            env.update(_env_from(stack, wl.namespace, src, where))
        for e in c.get("env") or []:
            env[e["name"]] = _env_value(stack, wl, pod_name, e, env, where)

        command = [expand(str(x), env) for x in c.get("command") or []]
        args = [expand(str(x), env) for x in c.get("args") or []]
        entrypoint = command[0] if command else None
        run_args = command[1:] + args if command else args

        user = None
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if uid is not None:
            user = f"{uid}:{gid}" if gid is not None else str(uid)
        elif gid is not None:
            raise SpecError(f"{where} sets runAsGroup without runAsUser; the harness maps both to --user")
        if sc.get("runAsNonRoot") and uid is not None and int(uid) == 0:
            raise SpecError(f"{where}: runAsNonRoot is true but runAsUser is 0")
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))

        mounts = []
        for vm in c.get("volumeMounts") or []:
            mounts.append(_mount(stack, wl, volumes, vm, scratch / pod_name, where))

        ports = sorted({int(p["containerPort"]) for p in c.get("ports") or []})
        for probe in (c.get("readinessProbe"), c.get("livenessProbe")):
            if probe and probe.get("httpGet"):
                n = resolve_port(pod, probe["httpGet"]["port"])
                if n not in ports:
                    ports.append(n)

        limits = (c.get("resources") or {}).get("limits") or {}
        cpus = parse_quantity_cpu(limits["cpu"]) if "cpu" in limits else None
        if cpus is not None and max_cpus is not None:
            cpus = min(cpus, max_cpus)
        memory = parse_quantity_bytes(limits["memory"]) if "memory" in limits else None
        caps = sc.get("capabilities") or {}

        aliases: dict[str, list[str]] = {"cluster": [], "namespace": []}
        for svc in services:
            aliases["cluster"] += stack.service_dns_names(svc)
            aliases["namespace"].append(svc.kname)

        suffix = f"-init-{cname}" if init else (f"-{cname}" if len(pod["containers"]) > 1 else "")
        plans.append(
            ContainerPlan(
                workload=wl,
                container_name=cname,
                docker_name=f"{prefix}-{wl.namespace}-{pod_name}{suffix}",
                hostname=pod_name,
                image=c["image"],
                entrypoint=entrypoint,
                args=run_args,
                env=env,
                user=user,
                workdir=c.get("workingDir"),
                read_only=bool(sc.get("readOnlyRootFilesystem")),
                mounts=mounts,
                ports=ports,
                aliases=aliases,
                cpus=cpus,
                memory=memory,
                cap_drop=list(caps.get("drop") or []),
                cap_add=list(caps.get("add") or []),
                no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
                group_add=groups,
                readiness=c.get("readinessProbe"),
                liveness=c.get("livenessProbe"),
                pod=pod,
            )
        )
    return plans


def _env_value(stack: Stack, wl: Resource, pod_name: str, e: dict[str, Any], env: dict[str, str], where: str) -> str:
    if "value" in e:
        return expand(str(e["value"]), env)
    ref = e.get("valueFrom")
    if not ref:
        return ""
    if "fieldRef" in ref:
        path = ref["fieldRef"].get("fieldPath")
        known = {"metadata.name": pod_name, "metadata.namespace": wl.namespace, "spec.nodeName": "e2e-node"}
        if path not in known:
            raise SpecError(f"{where} env {e['name']}: fieldRef {path!r} is not supported (supported: {sorted(known)})")
        return known[path]
    for kind, type_ in (("configMapKeyRef", CONFIGMAP), ("secretKeyRef", SECRET)):
        if kind in ref:
            obj = stack.find(type_, ref[kind]["name"], wl.namespace)
            data = {**(obj.inputs.get("data") or {}), **(obj.inputs.get("stringData") or {})}
            key = ref[kind]["key"]
            if key not in data:
                raise SpecError(f"{where} env {e['name']}: key {key!r} not in {obj} (keys: {sorted(data)})")
            if type_ == SECRET and key in (obj.inputs.get("data") or {}):
                import base64

                return base64.b64decode(data[key]).decode()
            return str(data[key])
    raise SpecError(f"{where} env {e['name']}: valueFrom {sorted(ref)} is not supported")


def _env_from(stack: Stack, namespace: str, src: dict[str, Any], where: str) -> dict[str, str]:
    prefix = src.get("prefix", "")
    if "configMapRef" in src:
        obj = stack.find(CONFIGMAP, src["configMapRef"]["name"], namespace)
        return {prefix + k: str(v) for k, v in (obj.inputs.get("data") or {}).items()}
    raise SpecError(f"{where}: envFrom {sorted(src)} is not supported (configMapRef only)")


def _mount(stack: Stack, wl: Resource, volumes: dict[str, Any], vm: dict[str, Any], scratch: Path, where: str) -> str:
    name, target = vm.get("name"), vm.get("mountPath")
    if name not in volumes:
        raise SpecError(f"{where} mounts volume {name!r}, which the pod does not declare (volumes: {sorted(volumes)})")
    vol = volumes[name]
    read_only = bool(vm.get("readOnly"))
    sub_path = vm.get("subPath")
    if "persistentVolumeClaim" in vol:
        claim = vol["persistentVolumeClaim"]
        host, pv = stack.claim_host_path(wl.namespace, claim["claimName"])
        read_only = read_only or bool(claim.get("readOnly"))
        hp_type = (pv.spec.get("hostPath") or {}).get("type", "")
        _check_host_path(host, hp_type, f"{pv} (claim {claim['claimName']}, {where})")
    elif "hostPath" in vol:
        host = vol["hostPath"]["path"]
        _check_host_path(host, vol["hostPath"].get("type", ""), f"{where} volume {name}")
    elif "emptyDir" in vol:
        if sub_path:
            raise SpecError(f"{where}: subPath on emptyDir volume {name} is not supported")
        opts = f"type=tmpfs,dst={target},tmpfs-mode=1777"
        size = (vol["emptyDir"] or {}).get("sizeLimit")
        if size:
            opts += f",tmpfs-size={parse_quantity_bytes(size)}"
        return opts
    elif "configMap" in vol:
        obj = stack.find(CONFIGMAP, vol["configMap"]["name"], wl.namespace)
        host_dir = scratch / f"configmap-{name}"
        host_dir.mkdir(parents=True, exist_ok=True)
        for k, v in (obj.inputs.get("data") or {}).items():
            (host_dir / k).write_text(str(v))
            os.chmod(host_dir / k, 0o644)
        host, read_only = str(host_dir), True
    else:
        raise SpecError(f"{where}: volume {name} of kind {sorted(vol)} is not supported")
    if sub_path:
        host = os.path.join(host, sub_path)
    m = f"type=bind,src={host},dst={target}"
    return m + (",readonly" if read_only else "")


def _check_host_path(path: str, type_: str, what: str) -> None:
    """hostPath `type` semantics as the kubelet applies them (only the ones a host directory can have)."""
    if type_ in ("", "DirectoryOrCreate"):
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o755, exist_ok=True)  # the kubelet creates it root-owned, 0755
        return
    if type_ == "Directory":
        if not os.path.isdir(path):
            raise SpecError(f"{what}: hostPath {path} has type Directory but does not exist (the pod would not start)")
        return
    raise SpecError(f"{what}: hostPath type {type_!r} is not supported (Directory, DirectoryOrCreate or none)")
