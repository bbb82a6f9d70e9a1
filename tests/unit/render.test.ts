import * as assert from "assert";
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as yaml from "js-yaml";
import { HelpRequested, manifestFileName, parseArgs, render } from "../render";
import { imagesDir } from "./fixtures";
import { ROOT } from "./harness";

/* eslint-disable @typescript-eslint/no-explicit-any */

describe("npm run render", () => {
    const images = imagesDir();
    let saved: string | undefined;
    before(() => {
        saved = process.env.OPS_DEMO_IMAGES_DIR;
        process.env.OPS_DEMO_IMAGES_DIR = images;
    });
    after(() => {
        if (saved === undefined) {
            delete process.env.OPS_DEMO_IMAGES_DIR;
        } else {
            process.env.OPS_DEMO_IMAGES_DIR = saved;
        }
    });

    it("parses --stack, --out and repeated --set key=value", () => {
        assert.deepStrictEqual(parseArgs(["--stack", "k3s", "--out", "/o", "--set", "a=1", "--set", "b=x=y"]), {
            stack: "k3s",
            out: "/o",
            set: { a: "1", b: "x=y" },
        });
        assert.throws(() => parseArgs(["--stack", "k3s"]), /usage: npm run render/);
        assert.throws(() => parseArgs(["--stack", "k3s", "--out", "/o", "--set", "novalue"]), /expected key=value/);
        assert.throws(() => parseArgs(["--stack", "k3s"]), /--out is required/);
        assert.throws(() => parseArgs(["--stack", "--out", "/o"]), /--stack needs a value/);
        assert.throws(() => parseArgs(["--stack", "k3s", "--out", "/o", "--help"]), (e: unknown) => e instanceof HelpRequested && /--set KEY=VALUE/.test((e as Error).message));
    });

    it("prints its help with --help and exits 0", () => {
        const r = spawnSync(process.execPath, [require.resolve("ts-node/dist/bin.js"), "--transpile-only", path.join(ROOT, "tests/render.ts"), "--help"], {
            cwd: ROOT,
            encoding: "utf8",
            timeout: 60000,
        });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.match(r.stdout, /^usage: npm run render -- --stack <dev\|k3s> --out <dir>/);
        assert.match(r.stdout, /resources\.json/);
    });

    it("replaces the manifests of an earlier render (the folder is exactly what the stack declares)", async () => {
        const out = fs.mkdtempSync(path.join(os.tmpdir(), "render-"));
        await render({ stack: "k3s", out, set: { grafanaDashboard: "true" } });
        assert.ok(fs.existsSync(path.join(out, "k8s", "ConfigMap-mlops-serving-ops-demo-grafana-dashboard.yaml")));
        const done = await render({ stack: "k3s", out, set: {} });
        assert.deepStrictEqual(fs.readdirSync(path.join(out, "k8s")).sort(), [...done.manifests].sort());
    });

    it("writes resources.json (type, name, resolved inputs) and one manifest per Kubernetes object", async () => {
        const out = fs.mkdtempSync(path.join(os.tmpdir(), "render-"));
        const done = await render({ stack: "k3s", out, set: { nEstimators: "300", runName: "optimized" } });
        const resources = JSON.parse(fs.readFileSync(path.join(out, "resources.json"), "utf8"));
        assert.strictEqual(resources.length, done.resources);
        for (const r of resources) {
            assert.deepStrictEqual(Object.keys(r), ["type", "name", "inputs"]);
        }
        const job = resources.find((r: any) => r.type === "kubernetes:batch/v1:Job");
        assert.ok(job.inputs.spec.template.spec.containers[0].command.includes("300"));
        const importCmd = resources.find((r: any) => r.name === "image-import-training");
        assert.match(importCmd.inputs.create, /docker save ops-demo:training-[0-9a-f]{12} \| as_root "\$k3s" ctr images import -$/);
        const files = fs.readdirSync(path.join(out, "k8s")).sort();
        assert.deepStrictEqual(files, [...done.manifests].sort());
        const key = resources.find((r: any) => r.type === "kubernetes:core/v1:PersistentVolumeClaim").inputs.metadata.name.split("-").pop();
        assert.match(key, /^[0-9a-f]{8}$/);
        for (const f of [
            "Namespace-cluster-mlops-training.yaml",
            `PersistentVolume-cluster-mlops-data-pv-${key}.yaml`,
            `PersistentVolumeClaim-mlops-training-mlops-data-${key}.yaml`,
            "Deployment-mlops-training-mlflow-server.yaml",
            "Service-mlops-training-mlflow-service.yaml",
            "Deployment-mlops-serving-iris-serving.yaml",
            "Service-mlops-serving-iris-serving-service.yaml",
            `Job-mlops-training-${job.inputs.metadata.name}.yaml`,
        ]) {
            assert.ok(files.includes(f), `${f} missing from ${files.join(", ")}`);
        }
        const d = yaml.load(fs.readFileSync(path.join(out, "k8s", "Deployment-mlops-serving-iris-serving.yaml"), "utf8")) as any;
        assert.strictEqual(d.apiVersion, "apps/v1");
        assert.strictEqual(d.kind, "Deployment");
        assert.strictEqual(d.spec.template.spec.containers[0].name, "serving");
        assert.strictEqual(manifestFileName(d), "Deployment-mlops-serving-iris-serving.yaml");
    });

    it("prints the config error and exits 1", () => {
        const out = fs.mkdtempSync(path.join(os.tmpdir(), "render-"));
        const r = spawnSync(
            process.execPath,
            [require.resolve("ts-node/dist/bin.js"), "--transpile-only", path.join(ROOT, "tests/render.ts"), "--stack", "dev", "--out", out, "--set", "maxDepth=0"],
            { cwd: ROOT, encoding: "utf8", env: { ...process.env, OPS_DEMO_IMAGES_DIR: images }, timeout: 60000 },
        );
        assert.strictEqual(r.status, 1, r.stderr);
        assert.match(r.stderr, /ops-demo:maxDepth = "0": must be a whole number from 1 to 1000/);
        assert.ok(!fs.existsSync(path.join(out, "resources.json")));
    });
});
