/**
 * Test stand-in for the `command` resource provider (pulumi-command 1.2.1), resource
 * `command:local:Command` only. It runs the commands for real; see README.md for what it copies
 * from the real provider and what it leaves out.
 */
import * as crypto from "crypto";
import * as provider from "@pulumi/pulumi/provider";
import {
    EngineLog,
    Props,
    changedKeys,
    containsSecret,
    containsUnknown,
    defined,
    exitDescription,
    reveal,
    runProcess,
    secret,
    urnName,
} from "./common";

export const VERSION = "1.2.1";
const COMMAND = "command:local:Command";

/** Every input of command:local:Command (CommandInputs of the real provider). */
const INPUTS = [
    "triggers", "create", "update", "delete",
    "stdin", "logging", "interpreter", "dir", "environment",
    "assetPaths", "archivePaths", "addPreviousOutputInEnv",
] as const;
const LOGGING = ["stdout", "stderr", "stdoutAndStderr", "none"];

function typeOf(urn: string): string {
    return urn.split("::")[2]?.split("$").pop() ?? "";
}

/** Input validation of the schema types (the real provider's are derived from its Go structs). */
export function checkInputs(news: Props): provider.CheckFailure[] {
    const v = reveal(news) as Props;
    const failures: provider.CheckFailure[] = [];
    const fail = (property: string, reason: string) => failures.push({ property, reason });
    const known = (x: unknown) => x !== undefined && x !== null && !containsUnknown(x);
    for (const k of ["create", "update", "delete", "stdin", "dir"]) {
        if (known(v[k]) && typeof v[k] !== "string") {
            fail(k, `${k} must be a string`);
        }
    }
    if (known(v.interpreter) && !(Array.isArray(v.interpreter) && v.interpreter.every((s: unknown) => typeof s === "string"))) {
        fail("interpreter", "interpreter must be a list of strings");
    }
    if (known(v.environment) && (typeof v.environment !== "object" || Array.isArray(v.environment)
        || !Object.values(v.environment).every((s) => typeof s === "string"))) {
        fail("environment", "environment must be a map of strings");
    }
    if (known(v.triggers) && !Array.isArray(v.triggers)) {
        fail("triggers", "triggers must be a list");
    }
    if (known(v.logging) && !LOGGING.includes(v.logging)) {
        fail("logging", `logging must be one of ${LOGGING.join(", ")}; got ${JSON.stringify(v.logging)}`);
    }
    if (known(v.addPreviousOutputInEnv) && typeof v.addPreviousOutputInEnv !== "boolean") {
        fail("addPreviousOutputInEnv", "addPreviousOutputInEnv must be a boolean");
    }
    for (const k of ["assetPaths", "archivePaths"]) {
        if (v[k] !== undefined && v[k] !== null) {
            fail(k, `${k} is not supported by the test stand-in of the command provider (tests/real/providers)`);
        }
    }
    return failures;
}

interface Outputs {
    readonly stdout: string;
    readonly stderr: string;
}

/**
 * Runs one command as the real provider does: `interpreter` (default /bin/sh -c) + command, in
 * `dir` (default the provider's working directory), with the provider's environment plus
 * `environment`, plus PULUMI_COMMAND_STDOUT/STDERR of the previous run unless
 * addPreviousOutputInEnv is false; stdout/stderr lines streamed to the engine as `logging` says.
 * Fails with `exit status N: running "<command>":\n<stdout and stderr>`.
 */
export async function runCommand(log: EngineLog, urn: string, command: string, inputs: Props, previous?: Outputs): Promise<Outputs> {
    const v = reveal(inputs) as Props;
    const interpreter: string[] = Array.isArray(v.interpreter) && v.interpreter.length > 0 ? v.interpreter : ["/bin/sh", "-c"];
    const env: NodeJS.ProcessEnv = { ...process.env, ...(v.environment ?? {}) };
    if (v.addPreviousOutputInEnv !== false && previous) {
        if (previous.stdout !== "") {
            env.PULUMI_COMMAND_STDOUT = previous.stdout;
        }
        if (previous.stderr !== "") {
            env.PULUMI_COMMAND_STDERR = previous.stderr;
        }
    }
    const logging: string = v.logging ?? "stdoutAndStderr";
    const pending: Promise<void>[] = [];
    const emit = (enabled: boolean) => (line: string) => {
        if (enabled) {
            pending.push(log.log("info", urn, line, true));
        }
    };
    const r = await runProcess([...interpreter, command], {
        cwd: typeof v.dir === "string" ? v.dir : process.cwd(),
        env,
        stdin: typeof v.stdin === "string" ? v.stdin : undefined,
        onStdout: emit(logging === "stdout" || logging === "stdoutAndStderr"),
        onStderr: emit(logging === "stderr" || logging === "stdoutAndStderr"),
    });
    await Promise.all(pending);
    if (r.spawnError || r.code !== 0) {
        throw new Error(`${exitDescription(r)}: running ${JSON.stringify(command)}:\n${r.combined}`);
    }
    return { stdout: r.stdout.replace(/\n$/, ""), stderr: r.stderr.replace(/\n$/, "") };
}

/** stdout/stderr are secret when any input is (every output of the real one depends on every input). */
function withOutputs(inputs: Props, out: Outputs): Props {
    const wrap = (s: string) => (containsSecret(inputs) ? secret(s) : s);
    return defined({ ...inputs, stdout: wrap(out.stdout), stderr: wrap(out.stderr) });
}

function previousOutputs(state: Props): Outputs {
    const s = reveal(state) as Props;
    return { stdout: typeof s.stdout === "string" ? s.stdout : "", stderr: typeof s.stderr === "string" ? s.stderr : "" };
}

export function makeCommandProvider(log: EngineLog): provider.Provider {
    const only = (urn: string) => {
        if (typeOf(urn) !== COMMAND) {
            throw new Error(`${typeOf(urn)} is not supported by the test stand-in of the command provider (only ${COMMAND})`);
        }
    };
    return {
        version: VERSION,

        async check(urn, _olds, news) {
            only(urn);
            const failures = checkInputs(news);
            // The real schema's default.
            const inputs = { ...news, addPreviousOutputInEnv: news.addPreviousOutputInEnv ?? true };
            return { inputs, failures };
        },

        // A change of `triggers` replaces (replaceOnChanges in the real schema); any other input change updates.
        async diff(_id, urn, olds, news) {
            only(urn);
            const changed = changedKeys(olds, news, INPUTS);
            return { changes: changed.length > 0, replaces: changed.filter((k) => k === "triggers") };
        },

        async create(urn, inputs) {
            only(urn);
            const id = urnName(urn) + crypto.randomBytes(4).toString("hex");
            const create = reveal(inputs.create);
            const out = typeof create === "string" ? await runCommand(log, urn, create, inputs) : { stdout: "", stderr: "" };
            return { id, outs: withOutputs(inputs, out) };
        },

        // Runs `update`, or `create` again when no `update` is given; with neither, keeps the old outputs.
        async update(_id, urn, olds, news) {
            only(urn);
            const previous = previousOutputs(olds);
            const cmd = reveal(news.update) ?? reveal(news.create);
            const out = typeof cmd === "string" ? await runCommand(log, urn, cmd, news, previous) : previous;
            return { outs: withOutputs(news, out) };
        },

        // Runs `delete` (with the inputs of the state) when it is set.
        async delete(_id, urn, props) {
            only(urn);
            const del = reveal(props.delete);
            if (typeof del === "string") {
                await runCommand(log, urn, del, props, previousOutputs(props));
            }
        },
    };
}

if (require.main === module) {
    const args = process.argv.slice(2);
    void provider.main(makeCommandProvider(new EngineLog(args)), args);
}
