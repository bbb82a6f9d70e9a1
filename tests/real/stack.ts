/**
 * The real engine over the project: the Pulumi CLI and providers built by tests/real/build.sh,
 * driven by an Automation API inline program that runs the project's own index.ts in this process
 * (no pulumi-language-nodejs needed), in a copy of the project so that `pulumi config set` and the
 * CLI's rewrites of Pulumi.<stack>.yaml never touch the working tree.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { spawnSync } from "child_process";
import {
    ConfigMap,
    DestroyResult,
    LocalWorkspace,
    OpType,
    PreviewResult,
    PulumiCommand,
    RefreshResult,
    Stack,
    UpResult,
} from "@pulumi/pulumi/automation";

export const ROOT = path.resolve(__dirname, "..", "..");
export const CACHE = process.env.OPS_DEMO_CACHE || "/var/cache/ops-demo";
export const BIN = path.join(CACHE, "bin");

/** What a real-tier run needs that is missing ("" when nothing is). */
export function missingPrerequisites(): string {
    const need = [path.join(BIN, "pulumi"), path.join(BIN, "pulumi-resource-kubernetes")];
    const missing = need.filter((p) => !fs.existsSync(p));
    if (missing.length > 0) {
        return `missing ${missing.join(", ")} (run tests/real/run, which builds them)`;
    }
    return process.env.PULUMI_HOME ? "" : "PULUMI_HOME is not set to the tier's plugin home (tests/real/run sets it)";
}

/** A copy of the project (sources, stack files, images) with node_modules linked, for one scenario. */
export function projectCopy(): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ops-demo-real-"));
    const skip = new Set(["node_modules", ".git", ".venv", ".pulumi", "bin", "out", ".cache", ".tools"]);
    for (const entry of fs.readdirSync(ROOT)) {
        if (!skip.has(entry)) {
            fs.cpSync(path.join(ROOT, entry), path.join(dir, entry), {
                recursive: true,
                filter: (src) => !/\/(\.venv|__pycache__|\.pytest_cache|\.ruff_cache)(\/|$)/.test(src),
            });
        }
    }
    fs.symlinkSync(path.join(ROOT, "node_modules"), path.join(dir, "node_modules"));
    return dir;
}

/** Runs the project's index.ts (from `workDir`) afresh as the inline program, returning its exports as stack outputs. */
function inlineProgram(workDir: string) {
    return async () => {
        for (const k of Object.keys(require.cache)) {
            if (k.startsWith(workDir + path.sep)) {
                delete require.cache[k];
            }
        }
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const outputs = require(path.join(workDir, "index.ts"));
        return { ...outputs };
    };
}

export interface RealStackOptions {
    /** The stack name (a committed Pulumi.<stack>.yaml). */
    readonly stackName: string;
    /** The project copy. */
    readonly workDir: string;
    /** Where the file backend keeps the state. */
    readonly stateDir: string;
    /** Extra PATH entries (before the built CLI and providers), e.g. the cluster's `k3s`. */
    readonly path?: string[];
    /** Extra environment of the engine and providers. */
    readonly env?: Record<string, string>;
}

/**
 * The environment of the engine (and so of the providers and the commands they run). The plugins
 * come from PULUMI_HOME (tests/real/run installs them there at the versions package.json names), not
 * from PATH, so the engine runs them as it runs downloaded ones.
 */
export function engineEnv(o: RealStackOptions): Record<string, string> {
    return {
        PULUMI_BACKEND_URL: `file://${o.stateDir}`,
        PULUMI_CONFIG_PASSPHRASE: "real-tier",
        PULUMI_SKIP_UPDATE_CHECK: "true",
        PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK: "true",
        PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION: "true",
        // without the build cache's bin/: its pulumi-resource-kubernetes would be taken from PATH
        // ("using ... from $PATH") instead of the plugin installed in PULUMI_HOME
        PATH: [...(o.path ?? []), ...(process.env.PATH ?? "/usr/bin:/bin").split(":").filter((d) => path.resolve(d) !== BIN)].join(":"),
        ...(o.env ?? {}),
    };
}

export async function selectStack(o: RealStackOptions): Promise<Stack> {
    fs.mkdirSync(o.stateDir, { recursive: true });
    const env = engineEnv(o);
    // the in-process program and the providers' commands see the same PATH as the engine
    process.env.PATH = env.PATH;
    // PulumiCommand puts <root>/bin on the engine's PATH: a root holding only the CLI, so that the
    // cache's bin/ (with its pulumi-resource-kubernetes) is never offered as an ambient plugin
    const root = path.join(CACHE, "pulumi-root");
    fs.mkdirSync(path.join(root, "bin"), { recursive: true });
    const link = path.join(root, "bin", "pulumi");
    if (!fs.existsSync(link)) {
        fs.symlinkSync(path.join(BIN, "pulumi"), link);
    }
    const pulumiCommand = await PulumiCommand.get({ root, skipVersionCheck: true });
    return LocalWorkspace.createOrSelectStack(
        { stackName: o.stackName, projectName: "ops-demo", program: inlineProgram(o.workDir) },
        { workDir: o.workDir, envVars: env, pulumiCommand },
    );
}

/** Plain-string config (values as `pulumi config set` would set them). */
export function plainConfig(values: Record<string, string>): ConfigMap {
    return Object.fromEntries(Object.entries(values).map(([k, v]) => [k, { value: v }]));
}

/** Counts of the operations of an update or preview, without "same". */
export function changes(r: { changeSummary?: Record<string, number> } | undefined): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [op, n] of Object.entries(r?.changeSummary ?? {})) {
        if (op !== "same" && n > 0) {
            out[op] = n;
        }
    }
    return out;
}

export type AnyResult = UpResult | PreviewResult | RefreshResult | DestroyResult;

/** `summary.resourceChanges` of up/refresh/destroy, or `changeSummary` of a preview, without "same". */
export function resultChanges(r: AnyResult): Record<string, number> {
    if ("changeSummary" in r) {
        return changes(r as PreviewResult);
    }
    return changes({ changeSummary: (r as UpResult).summary.resourceChanges as Record<string, number> | undefined });
}

/** kubectl against the cluster (the tier's own kubectl), returning stdout; throws with stderr on failure unless `allowFail`. */
export function kubectl(kubeconfig: string, args: string[], opts: { input?: string; allowFail?: boolean; timeoutMs?: number } = {}) {
    const r = spawnSync(path.join(BIN, "kubectl"), ["--kubeconfig", kubeconfig, ...args], {
        encoding: "utf8",
        input: opts.input,
        timeout: opts.timeoutMs ?? 120000,
    });
    if (r.status !== 0 && !opts.allowFail) {
        throw new Error(`kubectl ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
    }
    return { status: r.status ?? -1, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

export { OpType };
