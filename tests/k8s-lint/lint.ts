/**
 * Lints what the stacks declare with kube-score (https://github.com/zegl/kube-score):
 *   scripts/lint-k8s            (installs the pinned kube-score, then runs this)
 *   ts-node tests/k8s-lint/lint.ts --kube-score <path> [--keep <dir>]
 * Renders every variant below (npm run render's code, under mocks), scores each manifest, and fails
 * on every finding (warnings included) that tests/k8s-lint/exceptions.yaml does not list, and on
 * every listed exception that no longer matches anything (so the list cannot go stale).
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as yaml from "js-yaml";
import { render } from "../render";

/** One variant of the program: a stack plus `--set` overrides. */
export interface Variant {
    readonly name: string;
    readonly stack: string;
    readonly set: Record<string, string>;
}

/** The default stacks, and the options that change what is declared. */
export const VARIANTS: readonly Variant[] = [
    { name: "k3s", stack: "k3s", set: {} },
    { name: "dev", stack: "dev", set: {} },
    { name: "k3s-no-autoscaling", stack: "k3s", set: { autoscaling: "false" } },
    { name: "k3s-monitoring-gpu", stack: "k3s", set: { serviceMonitor: "true", grafanaDashboard: "true", mlflowMetrics: "true", trainingGpus: "1" } },
    {
        name: "k3s-registry",
        stack: "k3s",
        set: { imageLoader: "registry", registry: "registry.example.com/team", registryUsername: "ci", registryPassword: "lint-only" },
    },
    {
        name: "k3s-multinode",
        stack: "k3s",
        set: {
            imageLoader: "registry",
            registry: "registry.example.com/team",
            nfsServer: "nfs.example.com",
            nfsPath: "/export/mlops",
            mlflowBackendUri: "postgresql://mlflow:lint-only@db.example.com:5432/mlflow",
            autoscalingMaxReplicas: "20",
        },
    },
    { name: "dev-mlflow-auth", stack: "dev", set: { mlflowAuth: "true", mlflowPassword: "a-long-lint-password" } },
];

/** The Kubernetes version kube-score checks API versions against: the k3s of the stacks (v1.31). */
export const KUBERNETES_VERSION = "v1.31";

/** One failed check on one object. */
export interface Finding {
    readonly variant: string;
    readonly check: string;
    /** `Kind/namespace/name` (namespace `cluster` for cluster-scoped objects). */
    readonly object: string;
    readonly grade: "CRITICAL" | "WARNING";
    readonly detail: string;
}

/** An accepted finding: a check on the objects matching `objects` (globs with `*`), and why. */
export interface Exception {
    readonly check: string;
    readonly objects: string[];
    readonly reason: string;
}

const glob = (pattern: string) => new RegExp(`^${pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\/]/g, "\\$&")).join(".*")}$`);

/** Reads and checks the exceptions file: every entry needs a check id, object globs and a reason. */
export function loadExceptions(file: string): Exception[] {
    const doc = yaml.load(fs.readFileSync(file, "utf8")) as { exceptions?: unknown } | undefined;
    const list = doc?.exceptions ?? [];
    if (!Array.isArray(list)) {
        throw new Error(`${file}: "exceptions" must be a list`);
    }
    return list.map((e: Record<string, unknown>, i: number) => {
        const where = `${file}: exceptions[${i}]`;
        if (typeof e?.check !== "string" || e.check === "") {
            throw new Error(`${where}: "check" must be a kube-score check id (kube-score list)`);
        }
        if (!Array.isArray(e.objects) || e.objects.length === 0 || !e.objects.every((o) => typeof o === "string" && o.split("/").length === 3)) {
            throw new Error(`${where} (${e.check}): "objects" must list Kind/namespace/name globs, e.g. Deployment/mlops-training/mlflow-server`);
        }
        if (typeof e.reason !== "string" || e.reason.trim().length < 20) {
            throw new Error(`${where} (${e.check}): "reason" must say why the finding is accepted`);
        }
        return { check: e.check, objects: e.objects as string[], reason: e.reason };
    });
}

/** Splits findings into those no exception covers and reports exceptions that covered nothing. */
export function applyExceptions(findings: readonly Finding[], exceptions: readonly Exception[]): { failures: Finding[]; unused: Exception[] } {
    const used = new Set<Exception>();
    const failures = findings.filter((f) => {
        const hit = exceptions.find((e) => e.check === f.check && e.objects.some((o) => glob(o).test(f.object)));
        if (hit) {
            used.add(hit);
        }
        return hit === undefined;
    });
    return { failures, unused: exceptions.filter((e) => !used.has(e)) };
}

interface ScoreObject {
    type_meta: { kind: string };
    object_meta: { name: string; namespace?: string };
    checks: { check: { id: string }; grade: number; skipped: boolean; comments: { path?: string; summary?: string; description?: string }[] | null }[];
}

/** kube-score's grades (scorecard.Grade): 1 critical, 5 warning, 7 almost OK, 10 all OK; 0 with skipped. */
export function findingsOf(variant: string, scored: readonly ScoreObject[]): Finding[] {
    const out: Finding[] = [];
    for (const o of scored) {
        const object = `${o.type_meta.kind}/${o.object_meta.namespace || "cluster"}/${o.object_meta.name}`;
        for (const c of o.checks) {
            if (c.skipped || c.grade >= 7) {
                continue;
            }
            const detail = (c.comments ?? []).map((x) => [x.path, x.summary].filter(Boolean).join(": ")).join("; ");
            out.push({ variant, check: c.check.id, object, grade: c.grade <= 1 ? "CRITICAL" : "WARNING", detail });
        }
    }
    return out;
}

/** Runs kube-score on the manifests of one rendered variant. */
export function score(kubeScore: string, files: string[]): ScoreObject[] {
    const r = spawnSync(kubeScore, ["score", "--kubernetes-version", KUBERNETES_VERSION, "--output-format", "json", ...files], {
        encoding: "utf8",
        maxBuffer: 64 * 1024 * 1024,
    });
    if (r.error) {
        throw new Error(`cannot run ${kubeScore}: ${r.error.message} (scripts/lint-k8s installs it)`);
    }
    // kube-score exits 1 when it found problems; only unparsable output is an error of its own.
    try {
        return JSON.parse(r.stdout) as ScoreObject[];
    } catch {
        throw new Error(`kube-score exited ${r.status} without a JSON report:\n${r.stderr}${r.stdout.slice(0, 2000)}`);
    }
}

async function main(argv: string[]): Promise<number> {
    const usage = "usage: ts-node tests/k8s-lint/lint.ts --kube-score <path> [--keep <dir>]   (normally: scripts/lint-k8s)";
    let kubeScore: string | undefined;
    let keep: string | undefined;
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === "--kube-score" && argv[i + 1]) {
            kubeScore = argv[++i];
        } else if (argv[i] === "--keep" && argv[i + 1]) {
            keep = argv[++i];
        } else if (argv[i] === "-h" || argv[i] === "--help") {
            console.log(usage);
            return 0;
        } else {
            console.error(`unknown argument ${JSON.stringify(argv[i])}\n${usage}`);
            return 2;
        }
    }
    if (!kubeScore) {
        console.error(usage);
        return 2;
    }
    const exceptionsFile = path.join(__dirname, "exceptions.yaml");
    const exceptions = loadExceptions(exceptionsFile);
    const dir = keep ?? fs.mkdtempSync(path.join(os.tmpdir(), "lint-k8s-"));
    const findings: Finding[] = [];
    for (const v of VARIANTS) {
        const out = path.join(dir, v.name);
        const done = await render({ stack: v.stack, out, set: v.set });
        const files = done.manifests.map((m) => path.join(out, "k8s", m));
        const found = findingsOf(v.name, score(kubeScore, files));
        findings.push(...found);
        console.log(`${v.name}: ${files.length} manifests scored, ${found.length} findings before exceptions`);
    }
    const { failures, unused } = applyExceptions(findings, exceptions);
    for (const f of failures) {
        console.log(`[${f.grade}] ${f.variant}: ${f.object}: ${f.check}: ${f.detail}`);
    }
    for (const e of unused) {
        console.log(`[STALE] exception ${e.check} for ${e.objects.join(", ")} matches no finding in any variant: remove it from tests/k8s-lint/exceptions.yaml`);
    }
    if (!keep) {
        fs.rmSync(dir, { recursive: true, force: true });
    }
    const ok = failures.length === 0 && unused.length === 0;
    console.log(
        ok
            ? `kube-score: ${VARIANTS.length} variants clean (${findings.length} findings, all listed in tests/k8s-lint/exceptions.yaml)`
            : `kube-score: ${failures.length} findings not listed in tests/k8s-lint/exceptions.yaml, ${unused.length} stale exceptions`,
    );
    return ok ? 0 : 1;
}

if (require.main === module) {
    main(process.argv.slice(2)).then(
        (code) => process.exit(code),
        (e) => {
            console.error((e as Error).message);
            process.exit(1);
        },
    );
}
