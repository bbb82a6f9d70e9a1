/**
 * Shared helpers of the test stand-in providers (command.ts, docker.ts): the wire forms of secrets
 * and unknowns, engine logging, and running a process while streaming its output to the engine.
 *
 * The SDK's provider server (`@pulumi/pulumi/provider`) hands the provider plain JSON decoded from
 * protobuf Structs: a secret arrives as `{ [SECRET_SIG]: SECRET_VALUE_SIG, value }`, an unknown
 * (preview) as the string UNKNOWN.
 */
import { spawn } from "child_process";
import * as grpc from "@grpc/grpc-js";
import * as engrpc from "@pulumi/pulumi/proto/engine_grpc_pb";
import * as engproto from "@pulumi/pulumi/proto/engine_pb";

export const SECRET_SIG = "4dabf18193072939515e22adb298388d";
export const SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270";
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Props = Record<string, any>;

export function isSecret(v: unknown): v is { value: unknown } {
    return typeof v === "object" && v !== null && (v as Props)[SECRET_SIG] === SECRET_VALUE_SIG;
}

export function secret<T>(value: T): Props {
    return { [SECRET_SIG]: SECRET_VALUE_SIG, value };
}

/** The value with every secret wrapper removed (what a command or a build actually gets). */
export function reveal(v: unknown): unknown {
    if (isSecret(v)) {
        return reveal(v.value);
    }
    if (Array.isArray(v)) {
        return v.map(reveal);
    }
    if (typeof v === "object" && v !== null) {
        return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, reveal(x)]));
    }
    return v;
}

export function containsSecret(v: unknown): boolean {
    if (isSecret(v)) {
        return true;
    }
    if (Array.isArray(v)) {
        return v.some(containsSecret);
    }
    if (typeof v === "object" && v !== null) {
        return Object.values(v).some(containsSecret);
    }
    return false;
}

export function containsUnknown(v: unknown): boolean {
    if (v === UNKNOWN) {
        return true;
    }
    if (Array.isArray(v)) {
        return v.some(containsUnknown);
    }
    if (typeof v === "object" && v !== null) {
        return Object.values(v).some(containsUnknown);
    }
    return false;
}

/** Structural equality of two revealed property values (null and absent are the same). */
export function sameValue(a: unknown, b: unknown): boolean {
    const x = reveal(a) ?? null;
    const y = reveal(b) ?? null;
    if (Array.isArray(x) || Array.isArray(y)) {
        return Array.isArray(x) && Array.isArray(y) && x.length === y.length && x.every((e, i) => sameValue(e, y[i]));
    }
    if (typeof x === "object" && typeof y === "object" && x !== null && y !== null) {
        const keys = new Set([...Object.keys(x), ...Object.keys(y)]);
        return [...keys].every((k) => sameValue((x as Props)[k], (y as Props)[k]));
    }
    return x === y;
}

/** The keys among `keys` whose values differ between old and new. */
export function changedKeys(olds: Props, news: Props, keys: readonly string[]): string[] {
    return keys.filter((k) => !sameValue(olds[k], news[k]));
}

/** Drops undefined members (a protobuf Struct cannot carry them). */
export function defined(p: Props): Props {
    return Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined));
}

/** The resource's name, the last `::` part of its URN. */
export function urnName(urn: string): string {
    return urn.split("::").pop() ?? urn;
}

/**
 * Logs to the engine (shown by `pulumi up` next to the resource). `ephemeral` messages are status
 * lines, as the real providers' LogStatus: shown while the step runs, not kept among diagnostics.
 */
export class EngineLog {
    private readonly client?: engrpc.EngineClient;
    private last: Promise<void> = Promise.resolve();

    constructor(args: string[]) {
        // The engine starts a plugin with its own gRPC address as the first argument that is not a flag.
        const addr = args.find((a) => !a.startsWith("-"));
        if (addr) {
            this.client = new engrpc.EngineClient(addr, grpc.credentials.createInsecure());
        }
    }

    async log(severity: "debug" | "info" | "warning" | "error", urn: string, message: string, ephemeral = false): Promise<void> {
        if (!this.client) {
            return;
        }
        const client = this.client;
        const req = new engproto.LogRequest();
        const sev = { debug: 0, info: 1, warning: 2, error: 3 }[severity];
        req.setSeverity(sev as engproto.LogSeverity);
        req.setUrn(urn);
        req.setMessage(message);
        req.setEphemeral(ephemeral);
        // One at a time, so that lines arrive in order; logging never fails a step.
        this.last = this.last.then(() => new Promise<void>((resolve) => client.log(req, () => resolve())));
        await this.last;
    }
}

export interface RunOptions {
    readonly cwd?: string;
    readonly env?: NodeJS.ProcessEnv;
    /** Written to the process' stdin; otherwise stdin is /dev/null. */
    readonly stdin?: string;
    /** Called with each line of stdout / stderr while the process runs. */
    readonly onStdout?: (line: string) => void;
    readonly onStderr?: (line: string) => void;
}

export interface RunResult {
    readonly code: number | null;
    readonly signal: NodeJS.Signals | null;
    readonly stdout: string;
    readonly stderr: string;
    /** stdout and stderr interleaved as they arrived. */
    readonly combined: string;
    /** Set when the program could not be started at all. */
    readonly spawnError?: Error;
}

/** Runs argv[0] with argv[1..]; never throws, the caller decides what a failure means. */
export function runProcess(argv: readonly string[], o: RunOptions = {}): Promise<RunResult> {
    return new Promise((resolve) => {
        let stdout = "";
        let stderr = "";
        let combined = "";
        const lines = (emit: ((l: string) => void) | undefined) => {
            let pending = "";
            return {
                push(chunk: string) {
                    pending += chunk;
                    const parts = pending.split("\n");
                    pending = parts.pop() ?? "";
                    parts.forEach((l) => emit?.(l));
                },
                flush() {
                    if (pending !== "") {
                        emit?.(pending);
                    }
                },
            };
        };
        const out = lines(o.onStdout);
        const err = lines(o.onStderr);
        const child = spawn(argv[0], argv.slice(1), {
            cwd: o.cwd,
            env: o.env,
            stdio: [o.stdin !== undefined && o.stdin !== "" ? "pipe" : "ignore", "pipe", "pipe"],
        });
        let spawnError: Error | undefined;
        child.on("error", (e) => (spawnError = e));
        child.stdout?.setEncoding("utf8").on("data", (c: string) => {
            stdout += c;
            combined += c;
            out.push(c);
        });
        child.stderr?.setEncoding("utf8").on("data", (c: string) => {
            stderr += c;
            combined += c;
            err.push(c);
        });
        if (child.stdin) {
            child.stdin.on("error", () => undefined); // the process may exit without reading it
            child.stdin.end(o.stdin);
        }
        child.on("close", (code, signal) => {
            out.flush();
            err.flush();
            resolve({ code, signal, stdout, stderr, combined, spawnError });
        });
    });
}

/** How Go's os/exec describes a failed process (the real providers' error text starts with it). */
export function exitDescription(r: RunResult): string {
    if (r.spawnError) {
        return r.spawnError.message;
    }
    return r.signal ? `signal: ${signalName(r.signal)}` : `exit status ${r.code}`;
}

function signalName(s: NodeJS.Signals): string {
    return ({ SIGKILL: "killed", SIGTERM: "terminated", SIGINT: "interrupt" } as Record<string, string>)[s] ?? s;
}
