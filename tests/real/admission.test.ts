/**
 * Pod Security as the real API server judges it: every pod template that every variant of the
 * program declares (the k8s-lint tier's variants: both stacks, registry, NFS, monitoring and GPU,
 * MLflow auth), as a Pod, server-side dry-run into a namespace carrying exactly the labels the
 * stack gives its namespaces. The API server's Pod Security admission is the one source of truth
 * for the restricted profile (the unit tier keeps no copy of its rules).
 */
/* eslint-disable @typescript-eslint/no-explicit-any -- manifests are plain YAML documents */
import * as assert from "assert";
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as yaml from "js-yaml";
import { VARIANTS } from "../k8s-lint/lint";
import { mentionsContainers, podTemplatesOf } from "../unit/podTemplates";
import { kubectl, missingPrerequisites, ROOT } from "./stack";

const kubeconfig = process.env.OPS_DEMO_KUBECONFIG ?? "";
const NAMESPACE = "ops-demo-pss";

/** Renders a variant in its own process (the renderer runs the program under mocks). */
function renderVariant(stack: string, set: Record<string, string>): any[] {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), "pss-"));
    const args = ["ts-node", "--transpile-only", "tests/render.ts", "--stack", stack, "--out", out];
    for (const [k, v] of Object.entries(set)) {
        args.push("--set", `${k}=${v}`);
    }
    const r = spawnSync("npx", args, { cwd: ROOT, encoding: "utf8", timeout: 180000 });
    assert.strictEqual(r.status, 0, `render ${stack} ${JSON.stringify(set)}: ${r.stderr}`);
    const dir = path.join(out, "k8s");
    return fs.readdirSync(dir).map((f) => yaml.load(fs.readFileSync(path.join(dir, f), "utf8")));
}

/** The pod templates of an object (Deployment, Job, ...), as Pods in `namespace`; an unknown kind with containers fails. */
function podsOf(obj: any, namespace: string): any[] {
    const templates = podTemplatesOf(obj);
    if (templates === undefined) {
        assert.ok(!mentionsContainers(obj), `${obj.kind} ${obj.metadata?.name} carries containers but podTemplatesOf does not know the kind`);
        return [];
    }
    const name = `${obj.kind}-${obj.metadata.name}`.toLowerCase().slice(0, 63).replace(/-+$/, "");
    return templates.map(([, spec, meta]) => ({ apiVersion: "v1", kind: "Pod", metadata: { name, namespace, labels: meta?.labels ?? {} }, spec }));
}

/** Server-side dry-run create of `pod`: the API server's admission verdict, nothing stored. */
function dryRun(pod: any): { status: number; stderr: string } {
    return kubectl(kubeconfig, ["create", "--dry-run=server", "-f", "-"], { input: JSON.stringify(pod), allowFail: true });
}

describe("real API server: Pod Security restricted over every pod every variant declares", function () {
    this.timeout(20 * 60 * 1000);
    let labels: Record<string, string> = {};

    before(function () {
        const prereq = missingPrerequisites() || (kubeconfig === "" ? "OPS_DEMO_KUBECONFIG is not set (tests/real/run sets it)" : "");
        if (prereq !== "") {
            if (process.env.REAL === "required") {
                throw new Error(`the real tier cannot run: ${prereq}`);
            }
            this.skip();
        }
        // the labels the stack gives its namespaces (both alike), on a namespace of this check's own
        const ns = renderVariant("k3s", {}).filter((o) => o.kind === "Namespace");
        assert.strictEqual(ns.length, 2);
        const pss = (n: any) =>
            Object.fromEntries(Object.entries(n.metadata.labels as Record<string, string>).filter(([k]) => k.startsWith("pod-security.kubernetes.io/")));
        assert.deepStrictEqual(pss(ns[0]), pss(ns[1]), "both namespaces carry the same Pod Security labels");
        labels = pss(ns[0]);
        assert.strictEqual(labels["pod-security.kubernetes.io/enforce"], "restricted");
        kubectl(kubeconfig, ["apply", "-f", "-"], {
            input: JSON.stringify({ apiVersion: "v1", kind: "Namespace", metadata: { name: NAMESPACE, labels } }),
        });
        // GPU runs name the NVIDIA RuntimeClass: the RuntimeClass admission needs it to exist
        kubectl(kubeconfig, ["apply", "-f", "-"], {
            input: JSON.stringify({ apiVersion: "node.k8s.io/v1", kind: "RuntimeClass", metadata: { name: "nvidia" }, handler: "nvidia" }),
        });
    });

    after(() => {
        if (kubeconfig !== "") {
            kubectl(kubeconfig, ["delete", "namespace", NAMESPACE, "--wait=false"], { allowFail: true });
            kubectl(kubeconfig, ["delete", "runtimeclass", "nvidia"], { allowFail: true });
        }
    });

    it("refuses what restricted forbids (the check can fail): privileged, root, no seccomp profile", () => {
        const base = {
            apiVersion: "v1",
            kind: "Pod",
            metadata: { name: "control", namespace: NAMESPACE },
            spec: {
                securityContext: { runAsNonRoot: true, runAsUser: 10001, seccompProfile: { type: "RuntimeDefault" } },
                containers: [{ name: "c", image: "x", securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } } }],
            },
        };
        assert.strictEqual(dryRun(base).status, 0, dryRun(base).stderr);
        const broken: [string, any][] = [
            // (privileged with allowPrivilegeEscalation false is invalid before admission is asked)
            ["privileged", { ...base.spec, containers: [{ ...base.spec.containers[0], securityContext: { capabilities: { drop: ["ALL"] }, privileged: true } }] }],
            ["root", { ...base.spec, securityContext: { ...base.spec.securityContext, runAsNonRoot: false, runAsUser: 0 } }],
            ["no seccomp profile", { ...base.spec, securityContext: { runAsNonRoot: true, runAsUser: 10001 } }],
            ["hostPath volume", { ...base.spec, volumes: [{ name: "h", hostPath: { path: "/" } }] }],
        ];
        for (const [what, spec] of broken) {
            const r = dryRun({ ...base, spec });
            assert.notStrictEqual(r.status, 0, `${what} was admitted`);
            assert.match(r.stderr, /violates PodSecurity "restricted/, `${what}: ${r.stderr}`);
        }
    });

    for (const v of VARIANTS) {
        it(`admits every pod of variant ${v.name}, with no warning`, () => {
            const objects = renderVariant(v.stack, v.set);
            const pods = objects.flatMap((o) => podsOf(o, NAMESPACE));
            assert.ok(pods.length >= 3, `${v.name}: ${pods.length} pod templates`);
            for (const pod of pods) {
                const r = dryRun(pod);
                assert.strictEqual(r.status, 0, `${v.name} ${pod.metadata.name}: ${r.stderr}`);
                assert.doesNotMatch(r.stderr, /[Ww]arning/, `${v.name} ${pod.metadata.name}: ${r.stderr}`);
            }
        });
    }
});
