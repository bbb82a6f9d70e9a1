/**
 * The shell commands the stack runs, executed for real against fake docker/kubectl/k3s programs:
 * their exit codes and messages are what a user sees when `pulumi up` fails.
 */
import * as assert from "assert";
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { kubeconfigScript } from "../../components/cluster";
import { importCommand } from "../../components/imageImport";
import { asRootFunction } from "../../components/shell";
import { prepareScript } from "../../components/storage";
import { parseRunResult, rebaseUrl, waitScript } from "../../components/training";
import { loadBalancerScript, servedModelScript } from "../../components/serving";

/** Runs `script` with bash, fake programs (name -> bash body) first on PATH. */
function run(script: string, fakes: Record<string, string>) {
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), "fakes-"));
    for (const [name, body] of Object.entries(fakes)) {
        fs.writeFileSync(path.join(bin, name), `#!/bin/bash\n${body}\n`, { mode: 0o755 });
    }
    const log = path.join(bin, "log");
    const r = spawnSync("/bin/bash", ["-c", script], {
        encoding: "utf8",
        env: { PATH: `${bin}:/usr/bin:/bin`, LOG: log },
        timeout: 30000,
    });
    return { ...r, log: fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "" };
}

describe("the training wait", () => {
    const kubectl = (state: string) => `[ "$1" = logs ] && { echo "[trainer] error: boom"; exit 0; }; printf '%s' "${state}"`;

    it("succeeds when the Job completes", () => {
        const r = run(waitScript("kubectl", "mlops-training", "iris-training-a-1234abcd", 1, 0.1), { kubectl: kubectl("Complete=True ") });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.match(r.stdout, /training run iris-training-a-1234abcd completed/);
    });

    it("fails naming kubectl logs -n mlops-training job/<name>, with the last log lines", () => {
        const r = run(waitScript("kubectl", "mlops-training", "iris-training-a-1234abcd", 1, 0.1), { kubectl: kubectl("Failed=True ") });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /training run iris-training-a-1234abcd failed; look at: kubectl logs -n mlops-training job\/iris-training-a-1234abcd/);
        assert.match(r.stderr, /\[trainer\] error: boom/);
    });

    it("keeps polling while the Job runs, and gives up at the deadline saying where to look", () => {
        const r = run(waitScript("kubectl", "mlops-training", "iris-training-b-1234abcd", 1 / 60, 0.2), { kubectl: `echo x >> "$LOG"; printf ''` });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /did not finish within .* minutes .*kubectl logs -n mlops-training job\/iris-training-b-1234abcd/);
        assert.ok(r.log.split("\n").filter((l) => l === "x").length >= 2, `polled ${JSON.stringify(r.log)}`);
    });

    it("reports an unreachable API server in its last state", () => {
        const r = run(waitScript("kubectl", "mlops-training", "j", 1 / 60, 0.2), { kubectl: `echo "connection refused" >&2; exit 1` });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /last state: unreachable: connection refused/);
    });
});

describe("the image import", () => {
    const opts = { sudo: true, embeddedContainer: "ops-demo-k3s", kindClusterName: "kind" };

    it("pipes docker save into k3s ctr images import", () => {
        const r = run(importCommand("k3s", "ops-demo:serving-0123456789ab", { ...opts, sudo: false })!, {
            docker: `[ "$1 $2" = "save ops-demo:serving-0123456789ab" ] && printf 'TARBALL'`,
            k3s: `[ "$*" = "ctr images import -" ] && [ "$(cat)" = TARBALL ] && echo imported`,
        });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.strictEqual(r.stdout.trim(), "imported");
    });

    it("fails when docker save fails, even though the importer succeeds (pipefail)", () => {
        const r = run(importCommand("embedded", "ops-demo:serving-0123456789ab", opts)!, {
            docker: `[ "$1" = save ] && { echo "No such image" >&2; exit 1; }; cat >/dev/null; exit 0`,
        });
        assert.notStrictEqual(r.status, 0);
        assert.match(r.stderr, /No such image/);
    });
});

describe("the embedded cluster's kubeconfig", () => {
    it("waits for the API and a node, then prints the kubeconfig with the published port", () => {
        const r = run(kubeconfigScript("ops-demo-k3s", 16443, 20), {
            docker: [
                `shift 2`,
                `case "$*" in`,
                `  "kubectl get --raw=/readyz") [ -f "$LOG" ] && exit 0; touch "$LOG"; exit 1 ;;`,
                `  "kubectl get nodes -o name") echo node/ops-demo-k3s ;;`,
                `  "cat /etc/rancher/k3s/k3s.yaml") printf 'clusters:\\n- cluster:\\n    server: https://127.0.0.1:6443\\n' ;;`,
                `esac`,
            ].join("\n"),
        });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.match(r.stdout, /server: https:\/\/127\.0\.0\.1:16443/);
    });

    it("gives up after its timeout, saying where to look", () => {
        const r = run(kubeconfigScript("ops-demo-k3s", 16443, 1), { docker: "exit 1", sleep: "exit 0" });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /the k3s in container ops-demo-k3s was not ready after 1s; look at: docker logs ops-demo-k3s/);
    });
});

describe("the storage preparation", () => {
    it("creates the layout and hands it to 10001:10001", function () {
        if (process.getuid?.() !== 0) {
            this.skip(); // chown to another user needs root (the stack uses sudo or the node container)
        }
        const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "storage-")), "my data", "mlops");
        const r = run(prepareScript(dir), {});
        assert.strictEqual(r.status, 0, r.stderr);
        for (const sub of ["", "mlflow", "mlflow/artifacts", "models"]) {
            const st = fs.statSync(path.join(dir, sub));
            assert.ok(st.isDirectory(), sub);
            assert.strictEqual(st.uid, 10001, sub);
            assert.strictEqual(st.gid, 10001, sub);
        }
    });
});

describe("the training result", () => {
    it("the wait prints the trainer's termination message as the result line of a completed Job", () => {
        const message = '{"status":"succeeded","accuracy":0.9556,"version":"3","promoted":true}';
        const kubectl = `case "$*" in *"get pods"*Succeeded*) printf '%s' '${message}' ;; *) printf 'Complete=True ' ;; esac`;
        const r = run(waitScript("kubectl", "mlops-training", "iris-training-a-1234abcd", 1, 0.1), { kubectl });
        assert.strictEqual(r.status, 0, r.stderr);
        const result = parseRunResult(r.stdout, { job: "iris-training-a-1234abcd" });
        assert.deepStrictEqual(result, { job: "iris-training-a-1234abcd", status: "succeeded", accuracy: 0.9556, version: "3", promoted: true });
    });

    it("a failed Job's report carries the trainer's last words, the conditions, events and pod states", () => {
        const kubectl = `case "$*" in
  *"get events"*) echo "iris-training-a-1234abcd   FailedCreate   pods \\"iris-training-a-1234abcd-x\\" is forbidden: RuntimeClass \\"nvidia\\" not found" ;;
  *"get pods"*terminated.message*) echo '  {"status":"failed","reason":"run failed (OSError: No space left on device)"}' ;;
  *"get pods"*) echo "  iris-training-a-1234abcd-x Failed waiting= terminated=Error exit=1" ;;
  *"range .status.conditions"*"message"*) echo "  Failed=True DeadlineExceeded: Job was active longer than specified deadline" ;;
  logs*) echo "no pods" >&2; exit 1 ;;
  *) printf 'Failed=True ' ;;
esac`;
        const r = run(waitScript("kubectl", "mlops-training", "iris-training-a-1234abcd", 1, 0.1, "pulumi up --replace 'urn:x'"), { kubectl });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /to run it again after fixing the cause: pulumi up --replace 'urn:x'/);
        assert.match(r.stderr, /DeadlineExceeded: Job was active longer than specified deadline/);
        assert.match(r.stderr, /FailedCreate .*RuntimeClass "nvidia" not found/);
        assert.match(r.stderr, /No space left on device/);
        assert.match(r.stderr, /terminated=Error exit=1/);
        assert.match(r.stderr, /no logs: no pod of the job ran/);
    });

    it("parses a result line, and falls back to what is known when there is none", () => {
        assert.deepStrictEqual(parseRunResult("x\nops-demo-result: not json\n", { job: "j" }), { job: "j", status: "unknown" });
        assert.deepStrictEqual(parseRunResult("", { job: "j" }), { job: "j", status: "unknown" });
        assert.strictEqual(rebaseUrl("http://mlflow-service.mlops-training.svc.cluster.local:5000/#/experiments/1/runs/abc?x=1", "http://localhost:5000"), "http://localhost:5000/#/experiments/1/runs/abc?x=1");
    });
});

describe("what serving answers with", () => {
    it("reads GET /model inside a serving pod, waiting for the version this update promoted", () => {
        // the first two reads still show version 2 (the hot reload is under way), then 3
        const kubectl = `case "$1" in
  rollout) exit 0 ;;
  exec) n=$(cat "$LOG.n" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$LOG.n"
        if [ $n -lt 3 ]; then printf '2\\n{"version": "2"}\\n'; else printf '3\\n{"version": "3", "run_id": "r3"}\\n'; fi ;;
esac`;
        const r = run(servedModelScript("kubectl", "mlops-serving", "3", 10).replace(/sleep 2/, "sleep 0.1"), { kubectl });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.strictEqual(r.stdout.trim(), 'ops-demo-serving: {"version": "3", "run_id": "r3"}');
    });

    it("reports what is served, and says so, when the expected version does not come in time", () => {
        const kubectl = `case "$1" in rollout) exit 0 ;; exec) printf '2\\n{"version": "2"}\\n' ;; esac`;
        const r = run(servedModelScript("kubectl", "mlops-serving", "3", 1).replace(/sleep 2/, "sleep 0.2"), { kubectl });
        assert.strictEqual(r.status, 0);
        assert.match(r.stderr, /serving did not answer with version 3 within 1s/);
        assert.strictEqual(r.stdout.trim(), 'ops-demo-serving: {"version": "2"}');
    });
});

describe("the LoadBalancer address", () => {
    it("prints the address once servicelb assigned it", () => {
        const kubectl = `n=$(cat "$LOG.n" 2>/dev/null || echo 0); echo $((n + 1)) > "$LOG.n"; [ $n -ge 2 ] && printf '10.41.0.1'; exit 0`;
        const r = run(loadBalancerScript("kubectl", "mlops-serving", 10).replace(/sleep 2/, "sleep 0.1"), { kubectl });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.strictEqual(r.stdout.trim(), "10.41.0.1");
    });

    it("gives up after its bound without failing the update, saying where to look", () => {
        const r = run(loadBalancerScript("kubectl", "mlops-serving", 1).replace(/sleep 2/, "sleep 0.2"), { kubectl: "exit 0" });
        assert.strictEqual(r.status, 0);
        assert.strictEqual(r.stdout, "");
        assert.match(r.stderr, /got no LoadBalancer address within 1s .*Traefik holds 80/);
    });
});

describe("root commands on the host (as_root)", () => {
    const script = (sudo: boolean) => `${asRootFunction(sudo)}\nas_root whoami-like arg`;
    const whoami = `echo "ran as $(id -u): $*"`;

    it("as root: runs the command itself, no sudo needed (a minimal host has none)", () => {
        const r = run(script(true), { id: "echo 0", "whoami-like": whoami });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.strictEqual(r.stdout.trim(), "ran as 0: arg");
    });

    it("not root, no sudo installed: says to run as root or install sudo", () => {
        const r = run(script(true), { id: "echo 1000", "whoami-like": whoami });
        assert.strictEqual(r.status, 127);
        assert.match(r.stderr, /needs root and sudo is not installed: run pulumi as root, or install sudo/);
    });

    it("not root, sudo wants a password: says what to do instead of hanging", () => {
        const r = run(script(true), { id: "echo 1000", sudo: `[ "$1" = -n ] && { echo "sudo: a password is required" >&2; exit 1; }`, "whoami-like": whoami });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /sudo asks for a password: run sudo -v right before pulumi up/);
    });

    it("not root, sudo allowed: through sudo -n", () => {
        const r = run(script(true), { id: "echo 1000", sudo: `[ "$1" = -n ] && shift; [ "$1" = true ] && exit 0; echo "sudo ran: $*"`, "whoami-like": whoami });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.strictEqual(r.stdout.trim(), "sudo ran: whoami-like arg");
    });
});

describe("the image import into k3s", () => {
    const opts = { sudo: false, embeddedContainer: "ops-demo-k3s", kindClusterName: "kind" };

    it("does not import an image containerd already holds under its content tag", () => {
        const r = run(importCommand("k3s", "ops-demo:serving-0123456789ab", opts)!, {
            k3s: `[ "$*" = "ctr images ls -q name==docker.io/library/ops-demo:serving-0123456789ab" ] && echo docker.io/library/ops-demo:serving-0123456789ab; [ "$3" = import ] && echo IMPORTED; exit 0`,
            docker: `echo "docker must not be called" >&2; exit 1`,
        });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.match(r.stdout, /already in the cluster's containerd, not imported again/);
    });

    it("names a missing k3s and what to do", () => {
        const r = run(importCommand("k3s", "ops-demo:serving-0123456789ab", opts)!, { docker: "exit 0" });
        assert.strictEqual(r.status, 127);
        assert.match(r.stderr, /k3s: not found on PATH .*install k3s, or choose another imageLoader/);
    });
});
