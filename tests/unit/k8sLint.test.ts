import * as assert from "assert";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { applyExceptions, Exception, Finding, findingsOf, loadExceptions, VARIANTS } from "../k8s-lint/lint";
import { ROOT } from "./harness";

const finding = (check: string, object: string): Finding => ({ variant: "k3s", check, object, grade: "CRITICAL", detail: "" });

describe("the Kubernetes lint (scripts/lint-k8s)", () => {
    it("fails findings no exception lists and reports exceptions that match nothing", () => {
        const exceptions: Exception[] = [
            { check: "deployment-replicas", objects: ["Deployment/mlops-training/mlflow-server"], reason: "one writer" },
            { check: "container-image-pull-policy", objects: ["Deployment/*/*"], reason: "imported" },
            { check: "pod-networkpolicy", objects: ["Job/*/*"], reason: "later" },
        ];
        const { failures, unused } = applyExceptions(
            [
                finding("deployment-replicas", "Deployment/mlops-training/mlflow-server"),
                finding("deployment-replicas", "Deployment/mlops-serving/iris-serving"),
                finding("container-image-pull-policy", "Deployment/mlops-serving/iris-serving"),
                finding("container-image-pull-policy", "Job/mlops-training/iris-training-x"),
            ],
            exceptions,
        );
        assert.deepStrictEqual(failures.map((f) => `${f.check} ${f.object}`), [
            "deployment-replicas Deployment/mlops-serving/iris-serving",
            "container-image-pull-policy Job/mlops-training/iris-training-x",
        ]);
        assert.deepStrictEqual(unused.map((e) => e.check), ["pod-networkpolicy"]);
    });

    it("reads kube-score's JSON: critical and warning grades are findings, skipped and OK checks are not", () => {
        const scored = [
            {
                type_meta: { kind: "Deployment" },
                object_meta: { name: "d", namespace: "ns" },
                checks: [
                    { check: { id: "a" }, grade: 1, skipped: false, comments: [{ path: "c", summary: "bad" }] },
                    { check: { id: "b" }, grade: 5, skipped: false, comments: null },
                    { check: { id: "c" }, grade: 10, skipped: false, comments: [] },
                    { check: { id: "d" }, grade: 0, skipped: true, comments: [] },
                ],
            },
            { type_meta: { kind: "Namespace" }, object_meta: { name: "n" }, checks: [{ check: { id: "e" }, grade: 1, skipped: false, comments: [] }] },
        ];
        assert.deepStrictEqual(findingsOf("v", scored), [
            { variant: "v", check: "a", object: "Deployment/ns/d", grade: "CRITICAL", detail: "c: bad" },
            { variant: "v", check: "b", object: "Deployment/ns/d", grade: "WARNING", detail: "" },
            { variant: "v", check: "e", object: "Namespace/cluster/n", grade: "CRITICAL", detail: "" },
        ]);
    });

    it("keeps a reason with every exception in tests/k8s-lint/exceptions.yaml and rejects one without", () => {
        const list = loadExceptions(path.join(ROOT, "tests/k8s-lint/exceptions.yaml"));
        assert.ok(list.length > 0);
        const text = fs.readFileSync(path.join(ROOT, "tests/k8s-lint/exceptions.yaml"), "utf8");
        for (const e of list) {
            assert.ok(e.reason.length >= 20, e.check);
            // a comment above each entry says more than the one-line reason
            assert.match(text, new RegExp(`#[^\\n]*\\n(?:  #[^\\n]*\\n)*  - check: ${e.check}\\n`), `comment above ${e.check}`);
        }
        const bad = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "exc-")), "e.yaml");
        fs.writeFileSync(bad, "exceptions:\n  - check: deployment-replicas\n    objects: [\"Deployment/a/b\"]\n");
        assert.throws(() => loadExceptions(bad), /"reason" must say why/);
        fs.writeFileSync(bad, "exceptions:\n  - check: deployment-replicas\n    objects: [\"mlflow-server\"]\n    reason: one writer of the SQLite file\n");
        assert.throws(() => loadExceptions(bad), /Kind\/namespace\/name globs/);
    });

    it("lints both stacks and the option variants", () => {
        const stacks = new Set(VARIANTS.map((v) => v.stack));
        assert.deepStrictEqual([...stacks].sort(), ["dev", "k3s"]);
        const options = VARIANTS.flatMap((v) => Object.keys(v.set));
        for (const key of ["autoscaling", "serviceMonitor", "grafanaDashboard", "trainingGpus", "imageLoader", "nfsServer", "mlflowBackendUri"]) {
            assert.ok(options.includes(key), `no variant sets ${key}`);
        }
        const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
        assert.strictEqual(pkg.scripts["lint:k8s"], "bash scripts/lint-k8s");
        assert.match(fs.readFileSync(path.join(ROOT, "scripts/test"), "utf8"), /want k8s-lint && run_tier k8s-lint/);
    });
});
