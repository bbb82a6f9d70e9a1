/**
 * The real-cluster tier: the real Pulumi engine and kubernetes provider run the k3s stack, unchanged
 * but for kubeconfig, storageDir, baseImage (and pipNoIndex where build containers cannot reach
 * PyPI), on the single-node cluster of tests/real/cluster.sh, doing what a user's commands do.
 * Run by tests/real/run (which builds and starts everything first), in order, bailing on the first failure.
 */
import * as assert from "assert";
import * as fs from "fs";
import * as http from "http";
import * as os from "os";
import * as path from "path";
import { Stack } from "@pulumi/pulumi/automation";
import { changes, kubectl, missingPrerequisites, plainConfig, projectCopy, resultChanges, selectStack, RealStackOptions } from "./stack";

const kubeconfig = process.env.OPS_DEMO_KUBECONFIG ?? "";
const clusterBin = process.env.OPS_DEMO_CLUSTER_BIN ?? "";
const baseImage = process.env.OPS_DEMO_BASE_IMAGE ?? "";
const pipNoIndex = process.env.OPS_DEMO_PIP_NO_INDEX === "1";

interface Row {
    step: string;
    seconds: number;
    detail: string;
}
const rows: Row[] = [];
const t0 = Date.now();
const secs = (since: number) => Math.round((Date.now() - since) / 100) / 10;

/** One HTTP request with a fresh connection; resolves with status and body, never rejects. */
function request(url: string, body?: unknown, timeoutMs = 5000): Promise<{ status: number; body: string; error?: string }> {
    return new Promise((resolve) => {
        const data = body === undefined ? undefined : JSON.stringify(body);
        const req = http.request(
            url,
            {
                method: data === undefined ? "GET" : "POST",
                agent: false,
                timeout: timeoutMs,
                headers: data === undefined ? {} : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) },
            },
            (res) => {
                let text = "";
                res.setEncoding("utf8");
                res.on("data", (c) => (text += c));
                res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
            },
        );
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", (e) => resolve({ status: 0, body: "", error: e.message }));
        if (data !== undefined) {
            req.write(data);
        }
        req.end();
    });
}

const GUIDE_REQUEST = { features: [5.1, 3.5, 1.4, 0.2] };

/** Polls the guide's prediction until it answers 200 (bounded), returning the answer. */
async function firstPrediction(base: string, timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
        const r = await request(`${base}/predict`, GUIDE_REQUEST);
        if (r.status === 200) {
            return JSON.parse(r.body);
        }
        last = `${r.status} ${r.error ?? r.body.slice(0, 200)}`;
        await new Promise((res) => setTimeout(res, 500));
    }
    throw new Error(`no prediction from ${base} within ${timeoutMs / 1000}s (last: ${last})`);
}

/** A client hitting the Service throughout an update: counts answers, failures and model versions seen. */
class LoadClient {
    ok = 0;
    failures: string[] = [];
    versions: string[] = [];
    private running = true;
    private done: Promise<void>;
    constructor(private readonly url: string, maxSeconds: number) {
        const until = Date.now() + maxSeconds * 1000;
        this.done = (async () => {
            while (this.running && Date.now() < until) {
                const r = await request(this.url, GUIDE_REQUEST);
                if (r.status === 200) {
                    this.ok++;
                    const v = String(JSON.parse(r.body).model_version ?? "");
                    if (this.versions[this.versions.length - 1] !== v) {
                        this.versions.push(v);
                    }
                } else {
                    this.failures.push(`${r.status} ${r.error ?? r.body.slice(0, 120)}`);
                }
                await new Promise((res) => setTimeout(res, 20));
            }
        })();
    }
    async stop(): Promise<void> {
        this.running = false;
        await this.done;
    }
}

/** A pod spec that Pod Security "restricted" admits, running the serving image's Python. */
function restrictedPod(name: string, namespace: string, app: string, image: string, script: string): string {
    return JSON.stringify({
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name, namespace, labels: { app } },
        spec: {
            restartPolicy: "Never",
            securityContext: { runAsNonRoot: true, runAsUser: 10001, seccompProfile: { type: "RuntimeDefault" } },
            containers: [
                {
                    name: "probe",
                    image,
                    imagePullPolicy: "Never",
                    command: ["python", "-c", script],
                    securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
                },
            ],
        },
    });
}

/** Runs a probe pod to completion; resolves with its phase and log. */
async function runProbe(name: string, namespace: string, app: string, image: string, script: string): Promise<{ phase: string; log: string }> {
    kubectl(kubeconfig, ["apply", "-f", "-"], { input: restrictedPod(name, namespace, app, image, script) });
    const deadline = Date.now() + 120000;
    let phase = "";
    while (Date.now() < deadline) {
        phase = kubectl(kubeconfig, ["get", "pod", "-n", namespace, name, "-o", "jsonpath={.status.phase}"]).stdout;
        if (phase === "Succeeded" || phase === "Failed") {
            break;
        }
        await new Promise((res) => setTimeout(res, 1000));
    }
    const log = kubectl(kubeconfig, ["logs", "-n", namespace, name], { allowFail: true }).stdout;
    kubectl(kubeconfig, ["delete", "pod", "-n", namespace, name, "--wait=false"], { allowFail: true });
    return { phase, log };
}

/**
 * A probe that tries `url` for up to `seconds` (kube-router admits a new pod's address some moments
 * after the pod starts, as any policy controller does: the trainer retries its first connection for
 * the same reason). Exits 0 at the first answer, 3 when every try failed.
 */
const reach = (url: string, seconds = 30) =>
    [
        "import sys, time, urllib.request",
        `deadline = time.time() + ${seconds}`,
        "last = None",
        "while time.time() < deadline:",
        "    try:",
        `        urllib.request.urlopen("${url}", timeout=3)`,
        '        print("reached"); sys.exit(0)',
        "    except Exception as e:",
        "        last = e",
        "        time.sleep(1)",
        'print("blocked:", last); sys.exit(3)',
    ].join("\n");

describe("real engine, real cluster: the k3s stack", function () {
    this.timeout(45 * 60 * 1000);
    const prereq = missingPrerequisites() || (kubeconfig === "" ? "OPS_DEMO_KUBECONFIG is not set (tests/real/run sets it)" : "");
    let stack: Stack;
    let opts: RealStackOptions;
    let storageDir: string;
    let servingUrl = "";
    let servingImage = "";

    before(async function () {
        if (prereq !== "") {
            if (process.env.REAL === "required") {
                throw new Error(`the real tier cannot run: ${prereq}`);
            }
            console.log(`skipping the real tier: ${prereq}`);
            this.skip();
        }
        const workDir = projectCopy();
        storageDir = fs.mkdtempSync(path.join(os.tmpdir(), "ops-demo-real-data-"));
        opts = {
            stackName: "k3s",
            workDir,
            stateDir: path.join(workDir, ".pulumi-state"),
            path: clusterBin === "" ? [] : [clusterBin],
        };
        stack = await selectStack(opts);
        const committed = fs.readFileSync(path.join(workDir, "Pulumi.k3s.yaml"), "utf8");
        // only what differs on this machine; everything else is the committed Pulumi.k3s.yaml
        await stack.setAllConfig(
            plainConfig({
                kubeconfig,
                storageDir,
                ...(baseImage === "" ? {} : { baseImage }),
                ...(pipNoIndex ? { pipNoIndex: "true" } : {}),
            }),
        );
        assert.ok(committed.length > 0);
    });

    after(async function () {
        if (rows.length > 0) {
            console.log("\nreal-cluster tier summary");
            console.log(`${"step".padEnd(58)} ${"seconds".padStart(8)}  detail`);
            for (const r of rows) {
                console.log(`${r.step.padEnd(58)} ${r.seconds.toFixed(1).padStart(8)}  ${r.detail}`);
            }
            console.log(`${"total".padEnd(58)} ${secs(t0).toFixed(1).padStart(8)}`);
        }
    });

    it("1a. pulumi preview from nothing passes the CLI's config validation and plans the whole stack", async () => {
        const start = Date.now();
        const r = await stack.preview();
        const c = resultChanges(r);
        assert.ok((c.create ?? 0) > 20, `preview plans ${JSON.stringify(c)}`);
        rows.push({ step: "pulumi preview (from nothing)", seconds: secs(start), detail: JSON.stringify(c) });
    });

    it("1b. pulumi up from nothing: built, imported, trained, served; the guide's prediction through the LoadBalancer", async () => {
        const start = Date.now();
        const r = await stack.up({ onOutput: (s) => process.stdout.write(s) });
        const upSeconds = secs(start);
        assert.strictEqual(r.summary.result, "succeeded");
        const out = r.outputs;
        servingUrl = String(out.servingUrl.value);
        assert.match(servingUrl, /^http:\/\/\d+\.\d+\.\d+\.\d+$/, `servingUrl is the LoadBalancer address: ${servingUrl}`);
        // the run's result and what serving answers with, in the stack outputs (termination message, kubectl exec)
        const runs = out.trainingRuns.value as Record<string, unknown>[];
        assert.strictEqual(runs.length, 1);
        assert.strictEqual(runs[0].status, "succeeded", JSON.stringify(runs[0]));
        assert.ok(Number(runs[0].accuracy) > 0.8 && Number(runs[0].f1_macro) > 0.8, JSON.stringify(runs[0]));
        assert.strictEqual(runs[0].promoted, true);
        assert.match(String(runs[0].mlflow_link), /^http:\/\/localhost:5000\/#\/experiments\/\d+\/runs\/[0-9a-f]{32}/);
        assert.strictEqual((out.servingModel.value as Record<string, unknown>).version, runs[0].version);
        console.log(`      trainingRuns: ${JSON.stringify(runs)}`);
        const answer = await firstPrediction(servingUrl, 120000);
        assert.ok([0, 1, 2].includes(Number(answer.class_id ?? answer.prediction)), JSON.stringify(answer));
        rows.push({ step: "pulumi up (from nothing)", seconds: upSeconds, detail: JSON.stringify(resultChanges(r)) });
        rows.push({ step: "  up start -> first prediction via LoadBalancer :80", seconds: secs(start), detail: JSON.stringify(answer).slice(0, 80) });
        servingImage = kubectl(kubeconfig, ["get", "deploy", "-n", "mlops-serving", "iris-serving", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]).stdout;
        // the Job trained in a pod against MLflow through the Service's DNS name
        const jobs = kubectl(kubeconfig, ["get", "jobs", "-n", "mlops-training", "-l", "app=iris-training", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.succeeded}{\"\\n\"}{end}"]).stdout;
        assert.match(jobs, /iris-training-baseline-[0-9a-f]{8}=1/);
    });

    it("1c. the guide's kubectl port-forward answers the guide's curl", async () => {
        const { spawn } = await import("child_process");
        const pf = spawn(path.join(process.env.OPS_DEMO_CACHE || "/var/cache/ops-demo", "bin", "kubectl"), [
            "--kubeconfig", kubeconfig, "port-forward", "-n", "mlops-serving", "svc/iris-serving-service", "18000:80",
        ]);
        try {
            const answer = await firstPrediction("http://127.0.0.1:18000", 30000);
            assert.ok("model_version" in answer, JSON.stringify(answer));
        } finally {
            pf.kill();
        }
    });

    it("2. a second pulumi up changes nothing; pulumi refresh finds no drift", async () => {
        let start = Date.now();
        const up = await stack.up();
        assert.deepStrictEqual(resultChanges(up), {}, "second up");
        rows.push({ step: "pulumi up (nothing changed)", seconds: secs(start), detail: JSON.stringify(resultChanges(up)) });
        start = Date.now();
        const refresh = await stack.refresh();
        assert.deepStrictEqual(resultChanges(refresh), {}, "refresh");
        rows.push({ step: "pulumi refresh", seconds: secs(start), detail: JSON.stringify(resultChanges(refresh)) });
    });

    it("2b. pulumi up --replace of the Service and the Job: both are in the cluster afterwards (fixed names, delete-first)", async () => {
        const resources = (await stack.exportStack()).deployment.resources as { urn: string; type: string }[];
        const urn = (type: string, suffix: string) => {
            const found = resources.find((r) => r.type === type && r.urn.endsWith(suffix));
            assert.ok(found, `no ${type} ...${suffix} in the state`);
            return found.urn;
        };
        const service = urn("kubernetes:core/v1:Service", "::serving-service");
        const job = urn("kubernetes:batch/v1:Job", "");
        const start = Date.now();
        const r = await stack.up({ replace: [service, job] });
        rows.push({ step: "pulumi up --replace Service + Job", seconds: secs(start), detail: JSON.stringify(resultChanges(r)) });
        assert.ok((resultChanges(r).replace ?? 0) >= 2, JSON.stringify(resultChanges(r)));
        assert.strictEqual(kubectl(kubeconfig, ["get", "svc", "-n", "mlops-serving", "iris-serving-service", "-o", "name"]).stdout.trim(), "service/iris-serving-service");
        const jobs = kubectl(kubeconfig, ["get", "jobs", "-n", "mlops-training", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.succeeded}{\"\\n\"}{end}"]).stdout;
        assert.match(jobs, /iris-training-baseline-[0-9a-f]{8}=1/);
        servingUrl = String(r.outputs.servingUrl.value);
        await firstPrediction(servingUrl, 60000);
    });

    it("3. pulumi config set nEstimators 300 && pulumi up: a new Job, a new model, 0 failed requests", async () => {
        const before = await firstPrediction(servingUrl, 10000);
        const client = new LoadClient(`${servingUrl}/predict`, 1800);
        const start = Date.now();
        await stack.setConfig("nEstimators", { value: "300" });
        const r = await stack.up();
        // serving switches to the new model within a reload interval + swap delay
        const deadline = Date.now() + 60000;
        while (Date.now() < deadline && (client.versions[client.versions.length - 1] ?? "") === String(before.model_version)) {
            await new Promise((res) => setTimeout(res, 500));
        }
        await new Promise((res) => setTimeout(res, 2000));
        await client.stop();
        const c = resultChanges(r);
        rows.push({ step: "nEstimators 300: pulumi up", seconds: secs(start), detail: JSON.stringify(c) });
        const runs = r.outputs.trainingRuns.value as Record<string, unknown>[];
        assert.strictEqual(runs[0].n_estimators, 300);
        assert.strictEqual((r.outputs.servingModel.value as Record<string, unknown>).version, runs[0].version, "servingModel is the new version");
        rows.push({
            step: "  requests during the update / failed",
            seconds: 0,
            detail: `${client.ok} ok, ${client.failures.length} failed, versions ${client.versions.join(" -> ")}`,
        });
        assert.deepStrictEqual(client.failures, []);
        assert.ok(client.versions.length >= 2, `a new model version was served: ${client.versions.join(" -> ")}`);
        assert.ok((c.create ?? 0) >= 1 && (c.delete ?? 0) >= 1, `a new Job replaced the old: ${JSON.stringify(c)}`);
        const jobs = kubectl(kubeconfig, ["get", "jobs", "-n", "mlops-training", "-o", "jsonpath={.items[*].metadata.annotations.ops-demo/n-estimators}"]).stdout;
        assert.strictEqual(jobs.trim(), "300");
    });

    it("4. security as the cluster enforces it: restricted pods only, MLflow only from training, serving reachable", async () => {
        for (const ns of ["mlops-training", "mlops-serving"]) {
            const privileged = JSON.stringify({
                apiVersion: "v1",
                kind: "Pod",
                metadata: { name: "privileged-probe", namespace: ns },
                spec: { containers: [{ name: "p", image: servingImage, imagePullPolicy: "Never", securityContext: { privileged: true } }] },
            });
            const r = kubectl(kubeconfig, ["apply", "-f", "-"], { input: privileged, allowFail: true });
            assert.notStrictEqual(r.status, 0, `a privileged pod was admitted in ${ns}`);
            assert.match(r.stderr, /violates PodSecurity "restricted/);
        }
        const mlflow = "http://mlflow-service.mlops-training.svc.cluster.local:5000/health";
        const outsider = await runProbe("outsider-probe", "mlops-training", "not-training", servingImage, reach(mlflow));
        assert.strictEqual(outsider.phase, "Failed", `a pod outside app=iris-training reached MLflow: ${outsider.log}`);
        assert.match(outsider.log, /blocked/);
        const trainer = await runProbe("trainer-probe", "mlops-training", "iris-training", servingImage, reach(mlflow));
        assert.strictEqual(trainer.phase, "Succeeded", `app=iris-training could not reach MLflow: ${trainer.log}`);
        const served = await request(`${servingUrl}/health`);
        assert.strictEqual(served.status, 200);
        rows.push({ step: "security: PSS refusals, MLflow policy, serving reachable", seconds: 0, detail: "enforced by the API server and kube-router" });
    });

    it("5. kubectl rollout undo (the guide), then pulumi up --refresh restores the declared Deployment", async () => {
        const image = () =>
            kubectl(kubeconfig, ["get", "deploy", "-n", "mlops-serving", "iris-serving", "-o", "jsonpath={.spec.template.spec.containers[0].resources.limits.memory}"]).stdout;
        const declared0 = image();
        // a declared change makes a second revision ...
        await stack.setConfig("servingMemoryLimit", { value: "640Mi" });
        await stack.up();
        assert.strictEqual(image(), "640Mi");
        // ... that the guide's rollback takes back
        kubectl(kubeconfig, ["rollout", "undo", "deployment/iris-serving", "-n", "mlops-serving"]);
        kubectl(kubeconfig, ["rollout", "status", "deployment/iris-serving", "-n", "mlops-serving", "--timeout=180s"], { timeoutMs: 200000 });
        assert.strictEqual(image(), declared0);
        const plain = await stack.up();
        const start = Date.now();
        const refreshed = await stack.up({ refresh: true });
        rows.push({
            step: "rollout undo, then pulumi up / pulumi up --refresh",
            seconds: secs(start),
            detail: `plain up ${JSON.stringify(resultChanges(plain))}, --refresh ${JSON.stringify(resultChanges(refreshed))}`,
        });
        kubectl(kubeconfig, ["rollout", "status", "deployment/iris-serving", "-n", "mlops-serving", "--timeout=180s"], { timeoutMs: 200000 });
        assert.strictEqual(image(), "640Mi", "pulumi up --refresh put the declared limit back");
    });

    it("6. pulumi destroy: no object of the stack left, the data directory kept", async () => {
        const start = Date.now();
        const r = await stack.destroy();
        rows.push({ step: "pulumi destroy", seconds: secs(start), detail: JSON.stringify(resultChanges(r)) });
        for (const ns of ["mlops-training", "mlops-serving"]) {
            const got = kubectl(kubeconfig, ["get", "namespace", ns], { allowFail: true });
            assert.notStrictEqual(got.status, 0, `namespace ${ns} is still there`);
        }
        const pvs = kubectl(kubeconfig, ["get", "pv", "-l", "app.kubernetes.io/part-of=ops-demo", "-o", "name"]).stdout;
        assert.strictEqual(pvs.trim(), "");
        assert.ok(fs.existsSync(path.join(storageDir, "models")), "the models directory is kept");
        assert.ok(fs.readdirSync(path.join(storageDir, "mlflow")).length > 0, "MLflow's data is kept");
        assert.deepStrictEqual(changes(undefined), {});
    });
});
