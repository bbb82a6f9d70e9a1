/**
 * Runs the Pulumi program under `pulumi.runtime.setMocks`, as the CLI would run one stack: config from
 * Pulumi.yaml's defaults, then Pulumi.<stack>.yaml, then overrides. Records every resource registered.
 * Used by the unit tests and by tests/render.ts.
 */
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import * as yaml from "js-yaml";
import * as pulumi from "@pulumi/pulumi";

export const ROOT = path.resolve(__dirname, "..", "..");
export const PROJECT = "ops-demo";

/** One registered resource: its type token, logical name, resolved inputs and provider reference. */
export interface Recorded {
    readonly type: string;
    readonly name: string;
    readonly inputs: Record<string, unknown>;
    readonly provider?: string;
    readonly custom: boolean;
    readonly id: string;
    /** Paths of the inputs that were Pulumi secrets (encrypted in the state), e.g. `stringData.password`. */
    readonly secretPaths?: string[];
}

const sha = (s: string) => crypto.createHash("sha256").update(s).digest("hex");

/** A kubeconfig the embedded cluster's command "prints" under mocks. */
export const FAKE_KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n";

const SECRET_SIG = "4dabf18193072939515e22adb298388d";

/** Replaces Pulumi's serialized secrets (`{<sig>: ..., value}`) by their values, recursively. */
export function unwrapSecrets(v: unknown): unknown {
    if (Array.isArray(v)) {
        return v.map(unwrapSecrets);
    }
    if (v !== null && typeof v === "object") {
        const o = v as Record<string, unknown>;
        if (SECRET_SIG in o && "value" in o) {
            return unwrapSecrets(o.value);
        }
        return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, unwrapSecrets(x)]));
    }
    return v;
}

/** Dotted paths of the serialized secrets in `v`. */
export function secretPaths(v: unknown, at = ""): string[] {
    if (Array.isArray(v)) {
        return v.flatMap((x, i) => secretPaths(x, `${at}[${i}]`));
    }
    if (v !== null && typeof v === "object") {
        const o = v as Record<string, unknown>;
        if (SECRET_SIG in o && "value" in o) {
            return [at];
        }
        return Object.entries(o).flatMap(([k, x]) => secretPaths(x, at === "" ? k : `${at}.${k}`));
    }
    return [];
}

/** Mocks that record every resource and refuse every provider function call. */
export class RecordingMocks implements pulumi.runtime.Mocks {
    readonly resources: Recorded[] = [];

    newResource(args: pulumi.runtime.MockResourceArgs): { id: string; state: Record<string, unknown> } {
        const id = `${args.name}-id`;
        const state: Record<string, unknown> = { ...args.inputs };
        switch (args.type) {
            case "docker:index/image:Image": {
                // No docker: the image "built" is the content-addressed name; its ID derives from it.
                // A pushed image reports `<repository>@sha256:...`, as the registry's manifest digest.
                const name = String(args.inputs.imageName);
                const digest = `sha256:${sha(name)}`;
                state.repoDigest = args.inputs.skipPush === false ? `${name.replace(/:[^:/]+$/, "")}@${digest}` : digest;
                break;
            }
            case "docker:index/remoteImage:RemoteImage":
                state.imageId = `sha256:${sha(String(args.inputs.name))}`;
                break;
            case "command:local:Command":
                state.stdout = String(args.name).endsWith("-kubeconfig") ? FAKE_KUBECONFIG : "";
                state.stderr = "";
                break;
            default:
                // what the API server adds to every Kubernetes object
                if (args.type.startsWith("kubernetes:") && typeof args.inputs.metadata === "object") {
                    state.metadata = { ...args.inputs.metadata, uid: `uid-${args.name}`, generation: 1 };
                }
        }
        this.resources.push({
            type: args.type,
            name: args.name,
            inputs: unwrapSecrets(args.inputs) as Record<string, unknown>,
            provider: args.provider,
            custom: args.custom !== false,
            id,
            secretPaths: secretPaths(args.inputs),
        });
        return { id, state };
    }

    call(args: pulumi.runtime.MockCallArgs): Record<string, unknown> {
        throw new Error(`unmocked provider function ${args.token}: the program must not call provider functions`);
    }
}

/** A config value as the CLI passes it to the program: strings as they are, anything else as JSON. */
export function configString(v: unknown): string {
    return typeof v === "string" ? v : JSON.stringify(v);
}

interface ConfigDecl {
    type?: string;
    items?: { type: string };
    default?: unknown;
    description?: string;
}

/** Pulumi.yaml's config declarations. */
export function projectDeclarations(root: string = ROOT): Record<string, ConfigDecl> {
    const project = yaml.load(fs.readFileSync(path.join(root, "Pulumi.yaml"), "utf8")) as { name: string; config: Record<string, ConfigDecl> };
    if (project.name !== PROJECT) {
        throw new Error(`Pulumi.yaml names project ${project.name}, expected ${PROJECT}`);
    }
    return project.config;
}

/** The raw `config:` map of Pulumi.<stack>.yaml. */
export function stackFileConfig(stack: string, root: string = ROOT): Record<string, unknown> {
    const file = path.join(root, `Pulumi.${stack}.yaml`);
    if (!fs.existsSync(file)) {
        throw new Error(`no stack file ${file} (stacks: dev, k3s)`);
    }
    const doc = yaml.load(fs.readFileSync(file, "utf8")) as { config?: Record<string, unknown> } | undefined;
    return doc?.config ?? {};
}

/** Checks a value against a declared type as the CLI does before running the program; returns a problem or undefined. */
export function cliTypeProblem(key: string, decl: ConfigDecl, value: unknown): string | undefined {
    const check = (type: string | undefined, v: unknown): boolean => {
        switch (type) {
            case "integer":
                return Number.isInteger(v) || (typeof v === "string" && /^-?\d+$/.test(v));
            case "boolean":
                return typeof v === "boolean" || v === "true" || v === "false";
            case "string":
                return typeof v === "string";
            case "array":
                return Array.isArray(v) && v.every((x) => check(decl.items?.type, x));
            default:
                return true;
        }
    };
    return check(decl.type, value) ? undefined : `${key}: ${JSON.stringify(value)} is not of type ${decl.type}`;
}

/**
 * The config map a stack's program sees: project defaults, the stack file, then `overrides`
 * (`key=value` strings as `--set` gives them, key without the project prefix).
 */
export function stackConfig(stack: string, overrides: Record<string, string> = {}, root: string = ROOT): Record<string, string> {
    const decls = projectDeclarations(root);
    const out: Record<string, string> = {};
    for (const [k, d] of Object.entries(decls)) {
        if (d.default !== undefined) {
            out[`${PROJECT}:${k}`] = configString(d.default);
        }
    }
    const problems: string[] = [];
    for (const [k, v] of Object.entries(stackFileConfig(stack, root))) {
        const full = k.includes(":") ? k : `${PROJECT}:${k}`;
        const short = full.startsWith(`${PROJECT}:`) ? full.slice(PROJECT.length + 1) : undefined;
        const decl = short === undefined ? undefined : decls[short];
        const problem = decl === undefined ? undefined : cliTypeProblem(full, decl, v);
        if (problem !== undefined) {
            problems.push(problem);
        }
        out[full] = configString(v);
    }
    if (problems.length > 0) {
        throw new Error(`Pulumi.${stack}.yaml: ${problems.join("; ")}`);
    }
    for (const [k, v] of Object.entries(overrides)) {
        out[k.includes(":") ? k : `${PROJECT}:${k}`] = v;
    }
    return out;
}

/** A resource as the mock engine holds it: URN (with the parent's type) and final state (components: registered outputs). */
export interface Registered {
    readonly type: string;
    readonly name: string;
    /** Type of the parent resource, undefined at the top level. */
    readonly parentType?: string;
    readonly state: Record<string, unknown>;
}

/** What one run of the program declared and exported. */
export interface ProgramRun {
    readonly resources: Recorded[];
    readonly registered: Registered[];
    readonly outputs: Record<string, unknown>;
}

function registeredResources(): Registered[] {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const monitor = require("@pulumi/pulumi/runtime/settings").getMonitor();
    const out: Registered[] = [];
    for (const [urn, r] of monitor.getRegisteredResources() as Map<string, { state: unknown }>) {
        const [, , qualified, name] = urn.split("::");
        const parts = qualified.split("$");
        const state = r.state as { toJavaScript?: () => unknown } | Record<string, unknown> | undefined;
        const plain = state && typeof (state as { toJavaScript?: unknown }).toJavaScript === "function"
            ? ((state as { toJavaScript: () => unknown }).toJavaScript() as Record<string, unknown>)
            : ((state ?? {}) as Record<string, unknown>);
        out.push({ type: parts[parts.length - 1], name, parentType: parts.length > 1 ? parts[parts.length - 2] : undefined, state: plain });
    }
    return out;
}

async function resolveDeep(v: unknown): Promise<unknown> {
    if (pulumi.Output.isInstance(v)) {
        return resolveDeep(await promiseOf(v));
    }
    if (Array.isArray(v)) {
        return Promise.all(v.map(resolveDeep));
    }
    if (v !== null && typeof v === "object" && !(v instanceof pulumi.Resource)) {
        const out: Record<string, unknown> = {};
        for (const [k, x] of Object.entries(v)) {
            out[k] = await resolveDeep(x);
        }
        return out;
    }
    return v;
}

/** The value of an Output (secrets unwrapped), for assertions. */
export function promiseOf<T>(o: pulumi.Output<T>): Promise<T> {
    return new Promise((resolve) => pulumi.unsecret(o).apply((v) => resolve(v)));
}

/**
 * Runs index.ts under mocks with `config` (full keys `ops-demo:...`). Throws what the program throws
 * (a ConfigError for bad config). Resolves when every resource has been registered.
 */
export async function runProgram(config: Record<string, string>, stack = "test", env: Record<string, string> = {}): Promise<ProgramRun> {
    const mocks = new RecordingMocks();
    await pulumi.runtime.setMocks(mocks, PROJECT, stack, false);
    pulumi.runtime.setAllConfig(config);
    const indexPath = require.resolve(path.join(ROOT, "index.ts"));
    delete require.cache[indexPath];
    const saved: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(env)) {
        saved[k] = process.env[k];
        process.env[k] = v;
    }
    let exported: Record<string, unknown>;
    try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        exported = require(indexPath);
    } catch (e) {
        // Record how many resources the program had declared when it failed (config errors: none).
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        await require("@pulumi/pulumi/runtime/settings").waitForRPCs();
        (e as { declared?: number }).declared = mocks.resources.length;
        throw e;
    } finally {
        for (const [k, v] of Object.entries(saved)) {
            if (v === undefined) {
                delete process.env[k];
            } else {
                process.env[k] = v;
            }
        }
    }
    const outputs = (await resolveDeep({ ...exported })) as Record<string, unknown>;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    await require("@pulumi/pulumi/runtime/settings").waitForRPCs();
    return { resources: mocks.resources, registered: registeredResources(), outputs };
}

/** Finds exactly one recorded resource by type and logical name. */
export function findResource(resources: readonly Recorded[], type: string, name: string): Recorded {
    const hits = resources.filter((r) => r.type === type && r.name === name);
    if (hits.length !== 1) {
        const names = resources.filter((r) => r.type === type).map((r) => r.name);
        throw new Error(`expected one ${type} named ${name}, found ${hits.length} (${type}: ${names.join(", ") || "none"})`);
    }
    return hits[0];
}

/** All recorded resources of one type. */
export function ofType(resources: readonly Recorded[], type: string): Recorded[] {
    return resources.filter((r) => r.type === type);
}

/** Kubernetes objects among the recorded resources (providers excluded). */
export function kubernetesObjects(resources: readonly Recorded[]): Recorded[] {
    return resources.filter((r) => r.type.startsWith("kubernetes:") && r.custom && !r.type.startsWith("pulumi:providers:"));
}
