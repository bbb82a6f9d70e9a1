/**
 * NetworkPolicies as the cluster enforces them: the NetworkPolicies (and Namespaces) that each
 * variant of the program renders (tests/render.ts) are applied to the real single-node cluster,
 * where kube-router enforces them, and every claim about who reaches whom, allowed AND blocked, is
 * a real connection between real pods. The unit tier keeps no evaluator of NetworkPolicy semantics:
 * kube-router is the one judge.
 *
 * The actors are small busybox pods (an image made here: `cluster.sh mkimage`, imported with
 * `k3s ctr images import`; Pod Security restricted) carrying the workloads' labels as the render
 * declares them: the MLflow Deployment's pod labels (listening on MLflow's container port), the
 * serving Deployment's (on the serving port), the training Job's, plus a pod with other labels in
 * mlops-training. Every pod of the stack's namespaces also listens on OTHER_PORT, a port no
 * policy opens. Clients probe with busybox `nc` (an HTTP GET: "reached" means the listener's
 * answer came back), `nslookup` (DNS over UDP) and a DNS query over TCP, to CoreDNS through the
 * kube-dns Service, as the workloads do.
 *
 * "Outside": kube-router, like every NetworkPolicy implementation, always lets the node reach its
 * local pods, so a client outside the cluster (LoadBalancer or NodePort traffic from another
 * machine) cannot be the node itself here: it is emulated by a pod in a namespace without
 * policies (ELSEWHERE), which reaches pods by their pod IP. The same namespace holds the
 * "impostor" (the training Job's labels in another namespace) and a pod labelled as Prometheus.
 * Destinations outside the cluster (the internet, a PostgreSQL server) are listeners of this
 * process on the node's address (the node is outside the pod network: pod-to-node traffic is
 * filtered by the pod's egress rules like any other).
 *
 * Timing: kube-router admits a new pod some moments after it starts (it installs the pod's
 * firewall chain and adds its address to the policies' ipsets on its next sync; until then the
 * pod's own traffic is unfiltered and a peer's allow rule does not list it yet). So:
 *   - an allowed claim retries until it connects, within BOUND_S;
 *   - per variant, the pods of the stack's namespaces start first; when they run, the training pod
 *     starts, and its allowed connection to MLflow (which needs its address in MLflow's ingress
 *     ipset) proves a sync that saw every earlier pod; every pod of the stack's namespaces must
 *     also have its firewall chain (the client in ELSEWHERE cannot reach its OTHER_PORT, which
 *     the node still reaches: the listener is up), retried until so within BOUND_S;
 *   - a blocked claim is one bounded attempt, made only after the same client has reached an
 *     allowed target in that variant (its own allowed claim, or the serving port for the
 *     ELSEWHERE pods); pods that no policy lets open any connection (serving, MLflow on SQLite,
 *     the other pod in mlops-training) cannot show that: for them the firewall-chain check above
 *     stands in. The listener of every blocked destination is proven up first (from the node for
 *     pods, from the ELSEWHERE client for the node's listeners; CoreDNS by the allowed DNS claims,
 *     which come first).
 * A variant without NetworkPolicies (networkPolicies=false) runs first as the control: there,
 * every path of the k3s stack's claims connects, so a block below is the policies' doing.
 *
 * Cleans up all it made (its namespaces, waited for: tests/real/scenario.test.ts creates
 * mlops-training and mlops-serving next). Run by tests/real/run, before the scenario.
 */
/* eslint-disable @typescript-eslint/no-explicit-any -- manifests are plain YAML documents */
import * as assert from "assert";
import { spawn, spawnSync } from "child_process";
import * as fs from "fs";
import * as net from "net";
import * as os from "os";
import * as path from "path";
import * as yaml from "js-yaml";
import { BIN, kubectl, missingPrerequisites, ROOT } from "./stack";

const kubeconfig = process.env.OPS_DEMO_KUBECONFIG ?? "";
const clusterBin = process.env.OPS_DEMO_CLUSTER_BIN || path.join(process.env.OPS_DEMO_CLUSTER_DIR || "/var/lib/ops-demo-cluster", "bin");
const IMAGE = "localhost/ops-demo/netpol-probe:1";
/** What every listener answers. */
const MARKER = "ops-demo-netpol-listener";
/** A namespace without NetworkPolicies: the outside clients, the impostor, Prometheus. */
const ELSEWHERE = "ops-demo-netpol-elsewhere";
/** On the namespaces this test makes (so that leftovers of an aborted run can be told from a user's). */
const TEST_LABEL = "ops-demo/netpol-test";
/** A port every pod of the stack's namespaces listens on and no policy opens. */
const OTHER_PORT = 9000;
/** The node's listeners: the internet (HTTPS) and the PostgreSQL server of the backend variant. */
const HTTPS_PORT = 443;
const BACKEND_URI = "postgresql://u:p@db.example.com:5433/mlflow";
const BACKEND_PORT = Number(new URL(BACKEND_URI).port);
/** Bound of every retried step (allowed claims, listeners, firewall chains). */
const BOUND_S = 60;

// ---------------------------------------------------------------------------------------------
// processes

interface RunResult {
    status: number;
    stdout: string;
    stderr: string;
}

/** Runs a command without blocking the event loop (this process serves the node's listeners). */
function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
    return new Promise((resolve) => {
        const p = spawn(cmd, args, { cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        p.stdout.on("data", (d) => (stdout += d));
        p.stderr.on("data", (d) => (stderr += d));
        const timer = setTimeout(() => p.kill("SIGKILL"), opts.timeoutMs ?? 60000);
        p.on("error", (e) => {
            clearTimeout(timer);
            resolve({ status: -1, stdout, stderr: stderr + e.message });
        });
        p.on("close", (code) => {
            clearTimeout(timer);
            resolve({ status: code ?? -1, stdout, stderr });
        });
        p.stdin.end(opts.input ?? "");
    });
}

const kubectlAsync = (args: string[], timeoutMs = 60000) => run(path.join(BIN, "kubectl"), ["--kubeconfig", kubeconfig, ...args], { timeoutMs });
const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/** Calls `attempt` until `done` holds or `seconds` pass; returns whether it held and the last result. */
async function retry<T>(seconds: number, attempt: () => Promise<T>, done: (t: T) => boolean): Promise<{ ok: boolean; last: T }> {
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
        const last = await attempt();
        if (done(last)) {
            return { ok: true, last };
        }
        if (Date.now() > deadline) {
            return { ok: false, last };
        }
        await sleep(1000);
    }
}

// ---------------------------------------------------------------------------------------------
// what the program declares

/** Renders a variant in its own process (the renderer runs the program under mocks). */
async function render(stack: string, set: Record<string, string>): Promise<any[]> {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), "netpol-render-"));
    try {
        const args = ["ts-node", "--transpile-only", "tests/render.ts", "--stack", stack, "--out", out];
        for (const [k, v] of Object.entries(set)) {
            args.push("--set", `${k}=${v}`);
        }
        const r = await run("npx", args, { cwd: ROOT, timeoutMs: 300000 });
        assert.strictEqual(r.status, 0, `render ${stack} ${JSON.stringify(set)}: ${r.stderr}`);
        const dir = path.join(out, "k8s");
        return fs.readdirSync(dir).map((f) => yaml.load(fs.readFileSync(path.join(dir, f), "utf8")));
    } finally {
        fs.rmSync(out, { recursive: true, force: true });
    }
}

interface Workload {
    readonly namespace: string;
    readonly labels: Record<string, string>;
    /** The first container port (undefined for the training Job). */
    readonly port?: number;
}

/** The pods of MLflow, serving and a training run as the render declares them: namespace, pod labels, port. */
function workloadsOf(objects: any[]): { mlflow: Workload; serving: Workload; training: Workload } {
    const shape = (o: any, what: string): Workload => {
        assert.ok(o, `the render declares no ${what}`);
        const t = o.spec.template;
        return { namespace: o.metadata.namespace, labels: { ...t.metadata.labels }, port: t.spec.containers[0].ports?.[0]?.containerPort };
    };
    const deployment = (name: string) => objects.find((o) => o.kind === "Deployment" && o.metadata.name === name);
    return {
        mlflow: shape(deployment("mlflow-server"), "Deployment mlflow-server"),
        serving: shape(deployment("iris-serving"), "Deployment iris-serving"),
        training: shape(
            objects.find((o) => o.kind === "Job"),
            "training Job",
        ),
    };
}

// ---------------------------------------------------------------------------------------------
// the claims

/** The probe pods that act as clients. */
type Source = "training" | "mlflow" | "serving" | "debug" | "client" | "impostor" | "prometheus";
/** Pods that run in ELSEWHERE (a namespace without policies: their own traffic is never filtered). */
const ELSEWHERE_SOURCES: readonly Source[] = ["client", "impostor", "prometheus"];
type Dest =
    | { readonly pod: "mlflow" | "serving"; readonly port: "workload" | "other" }
    | { readonly node: number }
    | { readonly dns: "UDP" | "TCP" };

interface Claim {
    readonly allowed: boolean;
    readonly from: Source;
    readonly to: Dest;
    readonly what: string;
}
const allows = (from: Source, to: Dest, what: string): Claim => ({ allowed: true, from, to, what });
const blocks = (from: Source, to: Dest, what: string): Claim => ({ allowed: false, from, to, what });

const MLFLOW: Dest = { pod: "mlflow", port: "workload" };
const SERVING: Dest = { pod: "serving", port: "workload" };

/** What both stacks claim; `dev`: the dev stack, whose MLflow policy admits any source on MLflow's port (its NodePort). */
function stackClaims(dev: boolean): Claim[] {
    const outsideToMlflow = dev ? allows : blocks;
    return [
        allows("training", MLFLOW, "a training Job reaches MLflow on its port"),
        allows("training", { dns: "UDP" }, "a training Job resolves names (UDP 53)"),
        allows("training", { dns: "TCP" }, "a training Job resolves names (TCP 53)"),
        allows("client", SERVING, "clients (LoadBalancer traffic) reach the serving port"),
        outsideToMlflow("client", MLFLOW, dev ? "clients outside the cluster reach MLflow (published through the NodePort)" : "clients outside the cluster reach MLflow"),
        // podSelector-only peers mean "in the policy's namespace": the label alone does not open MLflow
        outsideToMlflow("impostor", MLFLOW, "a pod with the training Job's labels in another namespace reaches MLflow"),
        blocks("training", { pod: "mlflow", port: "other" }, `a training Job reaches another MLflow port (${OTHER_PORT})`),
        blocks("training", { node: HTTPS_PORT }, `a training Job reaches anything outside the cluster (node address, ${HTTPS_PORT})`),
        blocks("training", SERVING, "a training Job reaches serving"),
        blocks("serving", MLFLOW, "serving reaches MLflow"),
        blocks("serving", { dns: "UDP" }, "serving makes DNS lookups (UDP 53)"),
        blocks("serving", { dns: "TCP" }, "serving makes DNS lookups (TCP 53)"),
        blocks("serving", { node: HTTPS_PORT }, `serving reaches anything outside (${HTTPS_PORT})`),
        blocks("mlflow", { node: HTTPS_PORT }, `MLflow reaches anything outside (${HTTPS_PORT})`),
        blocks("mlflow", { node: BACKEND_PORT }, `MLflow on SQLite connects to a database port (${BACKEND_PORT})`),
        blocks("mlflow", { dns: "UDP" }, "MLflow on SQLite makes DNS lookups"),
        blocks("debug", MLFLOW, "another pod in mlops-training reaches MLflow"),
        blocks("client", { pod: "serving", port: "other" }, `clients reach another serving port (${OTHER_PORT})`),
        ...(dev ? [] : [blocks("prometheus", MLFLOW, "without mlflowMetrics, Prometheus reaches MLflow")]),
    ];
}

interface Variant {
    readonly name: string;
    readonly stack: string;
    readonly set: Record<string, string>;
    /** Whether the variant declares NetworkPolicies (the control does not). */
    readonly policies: boolean;
    readonly claims: Claim[];
}

const VARIANTS: readonly Variant[] = [
    {
        name: "control: k3s with networkPolicies=false, every path connects",
        stack: "k3s",
        set: { networkPolicies: "false" },
        policies: false,
        claims: stackClaims(false).map((c) => ({ ...c, allowed: true, what: `(no policies) ${c.what}` })),
    },
    { name: "stack k3s", stack: "k3s", set: {}, policies: true, claims: stackClaims(false) },
    { name: "stack dev", stack: "dev", set: {}, policies: true, claims: stackClaims(true) },
    {
        name: "k3s with mlflowMetrics=true",
        stack: "k3s",
        set: { mlflowMetrics: "true" },
        policies: true,
        claims: [
            allows("training", MLFLOW, "a training Job still reaches MLflow"),
            allows("prometheus", MLFLOW, "Prometheus in another namespace reaches MLflow's port (the scrape)"),
            allows("client", MLFLOW, "so does any pod of another namespace (the rule selects namespaces, not labels)"),
            blocks("prometheus", { pod: "mlflow", port: "other" }, `Prometheus reaches another MLflow port (${OTHER_PORT})`),
            blocks("serving", MLFLOW, "serving still reaches no MLflow (its egress is denied)"),
        ],
    },
    {
        name: `k3s with mlflowBackendUri ${BACKEND_URI.replace(/\/\/[^@]*@/, "//…@")}`,
        stack: "k3s",
        set: { mlflowBackendUri: BACKEND_URI },
        policies: true,
        claims: [
            allows("training", MLFLOW, "a training Job still reaches MLflow"),
            allows("mlflow", { node: BACKEND_PORT }, `MLflow connects to the database port outside the cluster (${BACKEND_PORT})`),
            allows("mlflow", { dns: "UDP" }, "MLflow resolves names (UDP 53)"),
            allows("mlflow", { dns: "TCP" }, "MLflow resolves names (TCP 53)"),
            blocks("mlflow", { node: HTTPS_PORT }, `MLflow reaches nothing else outside (${HTTPS_PORT})`),
            blocks("serving", { node: BACKEND_PORT }, `serving does not reach the database port (${BACKEND_PORT})`),
            blocks("training", { node: BACKEND_PORT }, `a training Job does not reach the database port (${BACKEND_PORT})`),
        ],
    },
];

// ---------------------------------------------------------------------------------------------
// the probe pods

interface ProbePod {
    readonly name: string;
    readonly namespace: string;
    readonly labels: Record<string, string>;
    readonly ports: number[];
    ip?: string;
}

/** A busybox pod that Pod Security "restricted" admits: httpd on `ports` (answering MARKER), then idle for `kubectl exec`. */
function podManifest(p: ProbePod): any {
    const listen = p.ports.map((port) => `httpd -p ${port} -h /www || exit 1; `).join("");
    return {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: p.name, namespace: p.namespace, labels: p.labels },
        spec: {
            restartPolicy: "Never",
            terminationGracePeriodSeconds: 1,
            automountServiceAccountToken: false,
            enableServiceLinks: false,
            securityContext: { runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: { type: "RuntimeDefault" } },
            containers: [
                {
                    name: "probe",
                    image: IMAGE,
                    imagePullPolicy: "Never",
                    command: ["/bin/sh", "-c", `${listen}exec sleep 86400`],
                    securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] }, readOnlyRootFilesystem: true },
                },
            ],
        },
    };
}

/** Creates the pods and waits until each runs with an address (bounded); sets their `ip`. */
async function startPods(pods: ProbePod[]): Promise<void> {
    const items = pods.map(podManifest);
    kubectl(kubeconfig, ["apply", "-f", "-"], { input: JSON.stringify({ apiVersion: "v1", kind: "List", items }) });
    const deadline = Date.now() + 180000;
    for (const p of pods) {
        for (;;) {
            const r = await kubectlAsync(["get", "pod", "-n", p.namespace, p.name, "-o", "jsonpath={.status.phase} {.status.podIP}"]);
            const [phase, ip] = r.stdout.trim().split(" ");
            const last = r.stdout.trim() || r.stderr.trim();
            if (phase === "Running" && ip) {
                p.ip = ip;
                break;
            }
            if (phase === "Failed" || phase === "Succeeded" || Date.now() > deadline) {
                const logs = kubectl(kubeconfig, ["logs", "-n", p.namespace, p.name], { allowFail: true });
                const described = kubectl(kubeconfig, ["describe", "pod", "-n", p.namespace, p.name], { allowFail: true });
                throw new Error(`pod ${p.namespace}/${p.name} did not run (${last}): ${logs.stdout}${logs.stderr}\n${described.stdout}`);
            }
            await sleep(500);
        }
    }
}

/** A connection from this process (the node) to a pod's listener: kube-router always admits node traffic. */
function fromNode(ip: string, port: number, timeoutMs = 3000): Promise<boolean> {
    return new Promise((resolve) => {
        let data = "";
        const s = net.connect({ host: ip, port });
        const done = (ok: boolean) => {
            s.destroy();
            resolve(ok);
        };
        s.setTimeout(timeoutMs, () => done(false));
        s.on("connect", () => s.write("GET / HTTP/1.0\r\n\r\n"));
        s.on("data", (d) => {
            data += d;
            if (data.includes(MARKER)) {
                done(true);
            }
        });
        s.on("error", () => done(false));
        s.on("end", () => done(data.includes(MARKER)));
    });
}

/** Runs `script` (sh, arguments $1...) in a probe pod; throws when kubectl exec itself fails. */
async function inPod(p: ProbePod, script: string, args: string[]): Promise<string> {
    const r = await kubectlAsync(["exec", "-n", p.namespace, p.name, "-c", "probe", "--", "/bin/sh", "-c", `${script}; echo probe-done`, "probe", ...args], 60000);
    if (!r.stdout.includes("probe-done")) {
        throw new Error(`kubectl exec in ${p.namespace}/${p.name} failed (${r.status}): ${r.stderr}${r.stdout}`);
    }
    return r.stdout.replace("probe-done", "").trim();
}

/** A DNS query (A, id 0x4f44, recursion desired) over TCP: 2-byte length, then the message; as printf octal escapes. */
function tcpDnsQuery(name: string): string {
    const qname = name.split(".").flatMap((l) => [l.length, ...Buffer.from(l, "ascii")]);
    const msg = [0x4f, 0x44, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, ...qname, 0x00, 0x00, 0x01, 0x00, 0x01];
    return [msg.length >> 8, msg.length & 0xff, ...msg].map((b) => "\\" + b.toString(8).padStart(3, "0")).join("");
}

interface ClusterFacts {
    nodeIp: string;
    dnsIp: string;
    /** The name the DNS probes resolve, and its address. */
    dnsName: string;
    dnsAnswer: string;
}

interface Outcome {
    reached: boolean;
    detail: string;
}

/** One TCP connection from a pod (an HTTP GET through busybox nc), bounded: reached when the listener's answer came back. */
async function tcp(from: ProbePod, ip: string, port: number): Promise<Outcome> {
    const out = await inPod(from, "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 6 nc -w 3 \"$1\" \"$2\" 2>&1", [ip, String(port)]);
    return { reached: out.includes(MARKER), detail: `${ip}:${port}: ${out === "" ? "(nothing)" : out.slice(0, 300)}` };
}

/** One DNS lookup from a pod to the cluster DNS Service: over UDP (busybox nslookup) or TCP (a query through nc), bounded. */
async function dns(facts: ClusterFacts, from: ProbePod, proto: "UDP" | "TCP"): Promise<Outcome> {
    if (proto === "UDP") {
        const out = await inPod(from, 'timeout 8 nslookup -type=a -timeout=2 -retry=1 "$1" "$2" 2>&1', [facts.dnsName, facts.dnsIp]);
        const re = new RegExp(`^Address:\\s*${facts.dnsAnswer.replace(/\./g, "\\.")}$`, "m");
        return { reached: re.test(out), detail: `nslookup ${facts.dnsName} ${facts.dnsIp}: ${out}` };
    }
    const hex = await inPod(from, `printf "$1" | timeout 4 nc -w 3 "$2" 53 2>/dev/null | od -An -tx1 -v | tr -d ' \\n'`, [tcpDnsQuery(facts.dnsName), facts.dnsIp]);
    const answer = facts.dnsAnswer
        .split(".")
        .map((n) => Number(n).toString(16).padStart(2, "0"))
        .join("");
    // after the length: our id, the response bit, rcode 0; and the address in the answer
    const ok = hex.slice(4, 8) === "4f44" && (parseInt(hex.slice(8, 10), 16) & 0x80) !== 0 && (parseInt(hex.slice(10, 12), 16) & 0x0f) === 0 && hex.includes(answer);
    return { reached: ok, detail: `DNS over TCP to ${facts.dnsIp}:53: ${hex === "" ? "no answer" : hex}` };
}

/** One attempt of `from` to reach `to` (the variant's pods by role), bounded (a few seconds). */
function probe(facts: ClusterFacts, from: ProbePod, to: Dest, pods: Record<string, ProbePod>): Promise<Outcome> {
    if ("dns" in to) {
        return dns(facts, from, to.dns);
    }
    if ("node" in to) {
        return tcp(from, facts.nodeIp, to.node);
    }
    const dest = pods[to.pod];
    return tcp(from, dest.ip ?? "", to.port === "other" ? OTHER_PORT : dest.ports[0]);
}

const describeDest = (to: Dest) => ("dns" in to ? `DNS/${to.dns}` : "node" in to ? `node:${to.node}` : `${to.pod}:${to.port}`);

// ---------------------------------------------------------------------------------------------
// cluster state

/** A static busybox (Debian's busybox-static): /bin/busybox if it is one, else extracted from the package (nothing installed). */
function staticBusybox(work: string): string {
    const isStatic = (f: string) => fs.existsSync(f) && spawnSync("ldd", [f], { encoding: "utf8" }).status !== 0;
    if (isStatic("/bin/busybox")) {
        return "/bin/busybox";
    }
    const dir = path.join(work, "deb");
    fs.mkdirSync(dir, { recursive: true });
    let r = spawnSync("apt-get", ["download", "busybox-static"], { cwd: dir, encoding: "utf8", timeout: 180000 });
    if (r.status !== 0) {
        spawnSync("apt-get", ["update", "-qq"], { encoding: "utf8", timeout: 300000 });
        r = spawnSync("apt-get", ["download", "busybox-static"], { cwd: dir, encoding: "utf8", timeout: 180000 });
    }
    assert.strictEqual(r.status, 0, `apt-get download busybox-static: ${r.stderr}`);
    const deb = fs.readdirSync(dir).find((f) => f.endsWith(".deb"));
    assert.ok(deb, "apt-get download busybox-static left no .deb");
    const x = spawnSync("dpkg-deb", ["-x", path.join(dir, deb), path.join(dir, "x")], { encoding: "utf8" });
    assert.strictEqual(x.status, 0, `dpkg-deb -x: ${x.stderr}`);
    const bb = path.join(dir, "x", "bin", "busybox");
    assert.ok(isStatic(bb), `${bb} is not a static executable`);
    return bb;
}

/** The probe image: static busybox, a page with MARKER, made with cluster.sh mkimage and imported into the cluster's containerd. */
function importImage(work: string): void {
    const busybox = staticBusybox(work);
    const root = path.join(work, "root");
    fs.mkdirSync(path.join(root, "bin"), { recursive: true });
    fs.mkdirSync(path.join(root, "www"), { recursive: true });
    fs.mkdirSync(path.join(root, "etc"), { recursive: true });
    fs.copyFileSync(busybox, path.join(root, "bin", "busybox"));
    fs.chmodSync(path.join(root, "bin", "busybox"), 0o755);
    for (const applet of ["sh", "httpd", "nc", "nslookup", "timeout", "printf", "od", "tr", "sleep", "cat", "echo"]) {
        fs.symlinkSync("busybox", path.join(root, "bin", applet));
    }
    fs.writeFileSync(path.join(root, "www", "index.html"), `${MARKER}\n`, { mode: 0o644 });
    fs.writeFileSync(path.join(root, "etc", "passwd"), "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n", { mode: 0o644 });
    const cmd = `set -o pipefail; "$0" mkimage "$1" "$2" /bin/sh | "$3" ctr images import -`;
    const r = spawnSync("bash", ["-c", cmd, path.join(ROOT, "tests", "real", "cluster.sh"), IMAGE, root, path.join(clusterBin, "k3s")], {
        encoding: "utf8",
        timeout: 180000,
    });
    assert.strictEqual(r.status, 0, `importing ${IMAGE}: ${r.stderr}`);
}

/** Deletes this test's namespaces (and waits); a namespace of the same name that this test did not make is an error. */
function deleteNamespaces(names: string[]): void {
    const present: string[] = [];
    for (const ns of names) {
        const r = kubectl(kubeconfig, ["get", "namespace", ns, "-o", "json", "--ignore-not-found"]);
        if (r.stdout.trim() === "") {
            continue;
        }
        const labels = JSON.parse(r.stdout).metadata.labels ?? {};
        assert.strictEqual(labels[TEST_LABEL], "true", `namespace ${ns} exists and was not made by this test: run it on a cluster without the stack (tests/real/run starts a new one)`);
        present.push(ns);
    }
    if (present.length > 0) {
        kubectl(kubeconfig, ["delete", "namespace", ...present, "--wait=true", "--timeout=180s"], { timeoutMs: 200000 });
    }
}

/** Applies objects (Namespaces get TEST_LABEL). */
function apply(objects: any[]): void {
    const items = objects.map((o) => (o.kind === "Namespace" ? { ...o, metadata: { ...o.metadata, labels: { ...(o.metadata.labels ?? {}), [TEST_LABEL]: "true" } } } : o));
    kubectl(kubeconfig, ["apply", "-f", "-"], { input: JSON.stringify({ apiVersion: "v1", kind: "List", items }) });
}

/** Listeners of this process on the node's address: what pods reach "outside the cluster". */
async function nodeListeners(ip: string, ports: number[]): Promise<net.Server[]> {
    const servers: net.Server[] = [];
    for (const port of ports) {
        const s = net.createServer((c) => {
            c.on("error", () => undefined);
            c.end(`HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n${MARKER}\n`);
        });
        await new Promise<void>((resolve, reject) => {
            s.once("error", reject);
            s.listen(port, ip, () => resolve());
        });
        servers.push(s);
    }
    return servers;
}

// ---------------------------------------------------------------------------------------------

describe("real cluster: the NetworkPolicies of every variant, as kube-router enforces them", function () {
    this.timeout(30 * 60 * 1000);
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "netpol-"));
    const rendered = new Map<string, any[]>();
    const facts: ClusterFacts = { nodeIp: "", dnsIp: "", dnsName: "kubernetes.default.svc.cluster.local", dnsAnswer: "" };
    let servers: net.Server[] = [];
    const elsewhere: Record<string, ProbePod> = {};
    let ready = false;
    let canRun = false;

    before(async function () {
        const prereq =
            missingPrerequisites() ||
            (kubeconfig === "" ? "OPS_DEMO_KUBECONFIG is not set (tests/real/run sets it)" : "") ||
            (process.getuid?.() !== 0 ? "needs root (it imports an image with k3s ctr and listens on the node's port 443)" : "");
        if (prereq !== "") {
            if (process.env.REAL === "required") {
                throw new Error(`the real tier cannot run: ${prereq}`);
            }
            console.log(`skipping the NetworkPolicy checks: ${prereq}`);
            this.skip();
        }
        canRun = true;
        const t0 = Date.now();
        // the renders run (in their own processes) while the image is made
        const renders = Promise.allSettled(VARIANTS.map(async (v) => rendered.set(v.name, await render(v.stack, v.set))));
        importImage(work);
        deleteNamespaces(["mlops-training", "mlops-serving", ELSEWHERE]);
        facts.nodeIp = kubectl(kubeconfig, ["get", "nodes", "-o", 'jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}']).stdout.trim();
        facts.dnsIp = kubectl(kubeconfig, ["get", "service", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"]).stdout.trim();
        facts.dnsAnswer = kubectl(kubeconfig, ["get", "service", "-n", "default", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]).stdout.trim();
        assert.match(`${facts.nodeIp} ${facts.dnsIp} ${facts.dnsAnswer}`, /^[\d.]+ [\d.]+ [\d.]+$/);
        servers = await nodeListeners(facts.nodeIp, [HTTPS_PORT, BACKEND_PORT]);
        for (const r of await renders) {
            if (r.status === "rejected") {
                throw r.reason;
            }
        }
        const training = workloadsOf(rendered.get(VARIANTS[1].name)!).training;
        apply([{ apiVersion: "v1", kind: "Namespace", metadata: { name: ELSEWHERE } }]);
        elsewhere.client = { name: "client", namespace: ELSEWHERE, labels: { app: "ops-demo-netpol-client" }, ports: [] };
        elsewhere.impostor = { name: "impostor", namespace: ELSEWHERE, labels: training.labels, ports: [] };
        elsewhere.prometheus = { name: "prometheus", namespace: ELSEWHERE, labels: { "app.kubernetes.io/name": "prometheus" }, ports: [] };
        await startPods(Object.values(elsewhere));
        // the node's listeners answer pods (a blocked claim towards them means something)
        for (const port of [HTTPS_PORT, BACKEND_PORT]) {
            const r = await retry(BOUND_S, () => probe(facts, elsewhere.client, { node: port }, {}), (o) => o.reached);
            assert.ok(r.ok, `a pod without policies cannot reach the node's listener: ${r.last.detail}`);
        }
        console.log(`      (setup: renders, image, node listeners, ${ELSEWHERE} pods: ${Math.round((Date.now() - t0) / 1000)} s)`);
        ready = true;
    });

    after(async () => {
        for (const s of servers) {
            s.close();
        }
        if (canRun) {
            deleteNamespaces(["mlops-training", "mlops-serving", ELSEWHERE]);
        }
        fs.rmSync(work, { recursive: true, force: true });
    });

    for (const v of VARIANTS) {
        describe(v.name, () => {
            const pods: Record<string, ProbePod> = {};
            /** Clients proven admitted in this variant (an allowed connection, or their firewall chain). */
            const proven = new Set<Source>();
            const podOf = (s: Source): ProbePod => pods[s] ?? elsewhere[s];

            before(async function () {
                if (!ready) {
                    this.skip();
                }
                const t0 = Date.now();
                const objects = rendered.get(v.name)!;
                const w = workloadsOf(objects);
                const policies = objects.filter((o) => o.kind === "NetworkPolicy");
                assert.strictEqual(policies.length > 0, v.policies, `${v.name}: ${policies.length} NetworkPolicies`);
                apply(objects.filter((o) => o.kind === "Namespace"));
                if (policies.length > 0) {
                    apply(policies);
                }
                pods.mlflow = { name: "mlflow", namespace: w.mlflow.namespace, labels: w.mlflow.labels, ports: [w.mlflow.port!, OTHER_PORT] };
                pods.serving = { name: "serving", namespace: w.serving.namespace, labels: w.serving.labels, ports: [w.serving.port!, OTHER_PORT] };
                pods.debug = { name: "debug", namespace: w.training.namespace, labels: { app: "debug" }, ports: [OTHER_PORT] };
                pods.training = { name: "training", namespace: w.training.namespace, labels: w.training.labels, ports: [OTHER_PORT] };
                assert.ok(pods.mlflow.ports[0] && pods.serving.ports[0], "MLflow's and serving's container ports");
                await startPods([pods.mlflow, pods.serving, pods.debug]);
                // last: its admission (below) proves a kube-router sync that saw every other pod
                await startPods([pods.training]);
                // every listener is up (the node always reaches its pods)
                for (const p of Object.values(pods)) {
                    for (const port of p.ports) {
                        const r = await retry(BOUND_S, () => fromNode(p.ip!, port), (ok) => ok);
                        assert.ok(r.ok, `listener ${p.namespace}/${p.name} ${p.ip}:${port} does not answer the node`);
                    }
                }
                if (v.policies) {
                    // every pod of the stack's namespaces has its firewall chain: kube-router leaves a pod it
                    // has not processed open, and every policy of these namespaces closes OTHER_PORT
                    for (const s of ["mlflow", "serving", "debug", "training"] as const) {
                        const p = pods[s];
                        const r = await retry(BOUND_S, () => tcp(elsewhere.client, p.ip!, OTHER_PORT), (o) => !o.reached);
                        assert.ok(r.ok, `${p.namespace}/${p.name}: port ${OTHER_PORT} still open to other pods after ${BOUND_S} s: ${r.last.detail}`);
                        // a client that no policy lets open any connection: this stands in for its own allowed connection
                        if (!v.claims.some((c) => c.from === s && c.allowed)) {
                            proven.add(s);
                        }
                    }
                }
                // the training pod's admission: its address is in MLflow's ingress ipset (also a claim below)
                const r = await retry(BOUND_S, () => probe(facts, pods.training, MLFLOW, pods), (o) => o.reached);
                assert.ok(r.ok, `the training pod never reached MLflow within ${BOUND_S} s: ${r.last.detail}`);
                proven.add("training");
                console.log(`      (setup: ${Math.round((Date.now() - t0) / 1000)} s)`);
            });

            after(() => {
                if (ready) {
                    deleteNamespaces(["mlops-training", "mlops-serving"]);
                }
            });

            // allowed claims first: they prove their clients admitted before the blocked claims rely on it
            const ordered = [...v.claims.filter((c) => c.allowed), ...v.claims.filter((c) => !c.allowed)];
            for (const c of ordered) {
                it(`${c.allowed ? "allows" : "blocks"}: ${c.what}`, async () => {
                    const from = podOf(c.from);
                    if (c.allowed) {
                        const r = await retry(BOUND_S, () => probe(facts, from, c.to, pods), (o) => o.reached);
                        assert.ok(r.ok, `${c.from} -> ${describeDest(c.to)} did not connect within ${BOUND_S} s: ${r.last.detail}`);
                        proven.add(c.from);
                        return;
                    }
                    if (!proven.has(c.from)) {
                        // an ELSEWHERE client: its own traffic is unfiltered, the serving port is open to all
                        assert.ok(ELSEWHERE_SOURCES.includes(c.from), `${c.from} was never proven admitted before a blocked claim`);
                        const r = await retry(BOUND_S, () => probe(facts, from, SERVING, pods), (o) => o.reached);
                        assert.ok(r.ok, `${c.from} cannot reach the serving port either: ${r.last.detail}`);
                        proven.add(c.from);
                    }
                    const o = await probe(facts, from, c.to, pods);
                    assert.ok(!o.reached, `${c.from} -> ${describeDest(c.to)} connected: ${o.detail}`);
                });
            }
        });
    }
});
