"""Pods as containers on the local Docker engine: one network for cluster DNS, one per namespace
for short Service names, probes checked from the host through ports published on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from stack import ContainerPlan, SpecError, resolve_port

LABEL = "ops-demo-e2e"


class DockerError(Exception):
    pass


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise DockerError(f"`docker {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def parse_docker_time(s: str) -> float:
    """Docker's RFC 3339 nanosecond timestamps as epoch seconds."""
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC).timestamp()


@dataclass
class Running:
    plan: ContainerPlan
    started: float  # wall clock when `docker start` returned
    ready: float | None = None
    host_ports: dict[int, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.plan.docker_name

    def url(self, port: int | str, path: str = "") -> str:
        number = resolve_port(self.plan.pod, port)
        if number not in self.host_ports:
            raise SpecError(f"{self.name}: port {port} is not a container port of {self.plan.workload}")
        return f"http://127.0.0.1:{self.host_ports[number]}{path}"


class Cluster:
    """Every container and network it makes carries the label ops-demo-e2e=<run id>; teardown removes them."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.prefix = f"e2e{run_id}"
        self.labels = {LABEL: run_id}
        self.cluster_net = f"{self.prefix}-cluster"
        self.namespace_nets: dict[str, str] = {}
        self.containers: dict[str, Running] = {}
        self.created: list[str] = []
        self._net_ready = False

    # --- lifecycle ---------------------------------------------------------------------------

    def _network(self, name: str) -> None:
        docker("network", "create", "--label", f"{LABEL}={self.run_id}", name)

    def _ensure_networks(self, namespace: str) -> str:
        if not self._net_ready:
            self._network(self.cluster_net)
            self._net_ready = True
        if namespace not in self.namespace_nets:
            net = f"{self.prefix}-ns-{namespace}"
            self._network(net)
            self.namespace_nets[namespace] = net
        return self.namespace_nets[namespace]

    def start(self, plan: ContainerPlan) -> Running:
        """docker create + network aliases + docker start. Cluster DNS names (<svc>.<ns>.svc...) resolve for
        every container; a short Service name only in the Service's own namespace, as in Kubernetes."""
        ns_net = self._ensure_networks(plan.workload.namespace)
        args = plan.create_args(self.cluster_net, self.labels)
        aliases = []
        for a in plan.aliases.get("cluster", []):
            aliases += ["--network-alias", a]
        # the aliases belong to --network, so they go before the image
        i = args.index(plan.image)
        args = args[:i] + aliases + args[i:]
        docker("create", *args)
        self.created.append(plan.docker_name)
        connect = ["network", "connect"]
        for a in plan.aliases.get("namespace", []):
            connect += ["--alias", a]
        docker(*connect, ns_net, plan.docker_name)
        docker("start", plan.docker_name)
        running = Running(plan, time.time())
        for port in plan.ports:
            out = docker("port", plan.docker_name, f"{port}/tcp").stdout.strip().splitlines()
            ipv4 = [line for line in out if line.startswith("127.0.0.1:")]
            if not ipv4:
                raise DockerError(f"{plan.docker_name}: port {port} was not published on 127.0.0.1 ({out})")
            running.host_ports[port] = int(ipv4[0].rsplit(":", 1)[1])
        self.containers[plan.docker_name] = running
        return running

    def restart(self, r: Running, timeout: int = 30) -> None:
        docker("restart", "--time", str(timeout), r.name, timeout=timeout + 60)
        r.started, r.ready = time.time(), None
        for port in list(r.host_ports):  # the host port can change on restart
            out = docker("port", r.name, f"{port}/tcp").stdout.strip().splitlines()
            r.host_ports[port] = int([x for x in out if x.startswith("127.0.0.1:")][0].rsplit(":", 1)[1])

    def stop(self, r: Running, timeout: int = 30) -> None:
        docker("stop", "--time", str(timeout), r.name, timeout=timeout + 60)

    def state(self, name: str) -> dict[str, Any]:
        import json

        return json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)

    def restart_count(self, name: str) -> int:
        return int(docker("inspect", "--format", "{{.RestartCount}}", name).stdout.strip())

    def wait_exit(self, r: Running, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state(r.name)
            if st["Status"] == "exited":
                return int(st["ExitCode"])
            time.sleep(1)
        raise TimeoutError(f"{r.name} ({r.plan.workload}) still running after {timeout:.0f}s")

    def logs(self, name: str, tail: int = 200) -> str:
        p = docker("logs", "--tail", str(tail), "--timestamps", name, check=False)
        return (p.stdout + p.stderr).rstrip()

    def dump_logs(self, tail: int = 200) -> str:
        parts = []
        for name in self.created:
            st = docker("inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}} oom={{.State.OOMKilled}}",
                        name, check=False).stdout.strip()
            parts.append(f"----- logs of {name} ({st}), last {tail} lines -----\n{self.logs(name, tail)}")
        return "\n".join(parts)

    def stopped(self, besides: str = "") -> list[str]:
        """Containers of this run that are not running (other than `besides`), with exit code and OOM kill."""
        out = []
        for name in self.created:
            if name == besides:
                continue
            st = self.state(name)
            if st["Status"] != "running":
                out.append(f"{name}: {st['Status']} exit {st['ExitCode']}" + (" OOM-killed" if st["OOMKilled"] else ""))
        return out

    def teardown(self) -> list[str]:
        """Removes every container and network labelled with this run id; returns what it removed."""
        removed = []
        ids = docker("ps", "-aq", "--filter", f"label={LABEL}={self.run_id}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False, timeout=180)
            removed += ids
        nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}={self.run_id}", check=False).stdout.split()
        if nets:
            docker("network", "rm", *nets, check=False)
            removed += nets
        return removed

    # --- probes ------------------------------------------------------------------------------

    def probe(self, r: Running, probe: dict[str, Any]) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            g = probe["httpGet"]
            if g.get("scheme", "HTTP") != "HTTP":
                raise SpecError(f"{r.plan.workload}: probe scheme {g.get('scheme')!r} is not supported (HTTP)")
            headers = {h["name"]: h["value"] for h in g.get("httpHeaders") or []}
            url = r.url(g["port"], g.get("path", "/"))
            try:
                resp = httpx.get(url, timeout=timeout, headers=headers)
            except httpx.HTTPError as e:
                return False, f"GET {url}: {type(e).__name__}: {e}"
            return 200 <= resp.status_code < 400, f"GET {url}: {resp.status_code}"
        if "exec" in probe:
            cmd = probe["exec"]["command"]
            p = docker("exec", r.name, *cmd, check=False, timeout=timeout + 5)
            return p.returncode == 0, f"exec {cmd}: exit {p.returncode}"
        if "tcpSocket" in probe:
            port = resolve_port(r.plan.pod, probe["tcpSocket"]["port"])
            try:
                with socket.create_connection(("127.0.0.1", r.host_ports[port]), timeout=timeout):
                    return True, f"tcp {port}: open"
            except OSError as e:
                return False, f"tcp {port}: {e}"
        raise SpecError(f"{r.plan.workload}: probe {sorted(probe)} is not supported (httpGet, exec, tcpSocket)")

    def wait_ready(self, r: Running, timeout: float, interval: float = 0.5) -> float:
        """Polls the readiness probe the pod declares until it passes; returns seconds from start to ready.
        Fails at once when the container exits."""
        probe = r.plan.readiness
        if not probe:
            raise SpecError(f"{r.plan.workload} container {r.plan.container_name} declares no readinessProbe")
        deadline = time.monotonic() + timeout
        last = "not probed yet"
        while time.monotonic() < deadline:
            st = self.state(r.name)
            if st["Status"] != "running":
                raise DockerError(f"{r.name} is {st['Status']} (exit {st['ExitCode']}) before becoming ready")
            ok, last = self.probe(r, probe)
            if ok:
                r.ready = time.time()
                return r.ready - r.started
            time.sleep(interval)
        raise TimeoutError(f"{r.name} not ready after {timeout:.0f}s; last probe: {last}")
