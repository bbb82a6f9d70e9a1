/**
 * Renders what the program declares, without the Pulumi CLI or a cluster:
 *   npm run render -- --stack k3s --out <dir> [--set key=value ...]
 * runs index.ts under pulumi.runtime.setMocks with the stack's config (Pulumi.yaml defaults, then
 * Pulumi.<stack>.yaml, then the --set overrides) and writes
 *   <dir>/resources.json                       [{"type", "name", "inputs"}, ...] every resource, Outputs resolved
 *   <dir>/k8s/<Kind>-<namespace>-<name>.yaml    one plain manifest per Kubernetes object
 *                                              (namespace "cluster" for cluster-scoped objects)
 * Config errors print the message and exit 1. Image builds are not run: the image name is the
 * content-addressed tag the build would get.
 */
import * as fs from "fs";
import * as path from "path";
import * as yaml from "js-yaml";
import { kubernetesObjects, Recorded, runProgram, stackConfig } from "./unit/harness";

interface Args {
    stack: string;
    out: string;
    set: Record<string, string>;
}

const USAGE = "usage: npm run render -- --stack <dev|k3s> --out <dir> [--set key=value ...]";

export const HELP = `${USAGE}

Writes what a stack declares, without the Pulumi CLI or a cluster (the program runs under mocks):
  <dir>/resources.json                     every resource: [{"type", "name", "inputs"}], Outputs resolved
  <dir>/k8s/<Kind>-<namespace>-<name>.yaml  one manifest per Kubernetes object ("cluster" when cluster-scoped)
Earlier manifests in <dir>/k8s are removed first, so the folder is exactly what the stack declares.

  --stack dev|k3s    the stack file whose config is used (Pulumi.yaml defaults, then Pulumi.<stack>.yaml)
  --out DIR          where to write (created when missing)
  --set KEY=VALUE    override a config key, as pulumi config set KEY VALUE would (repeatable)

Secrets set with --set are written in clear text: keep such a folder out of Git.
Image builds do not run: image names are the content-addressed tags a build would give.
Examples:
  npm run render -- --stack k3s --out out/k3s
  npm run render -- --stack k3s --out out/k3s-gpu --set trainingGpus=1 --set autoscaling=false`;

/** Thrown for --help: the caller prints HELP and exits 0. */
export class HelpRequested extends Error {}

export function parseArgs(argv: string[]): Args {
    const a: Partial<Args> & { set: Record<string, string> } = { set: {} };
    if (argv.includes("--help") || argv.includes("-h")) {
        throw new HelpRequested(HELP);
    }
    for (let i = 0; i < argv.length; i++) {
        const flag = argv[i];
        const value = argv[i + 1];
        if (!["--stack", "--out", "--set"].includes(flag)) {
            throw new Error(`unknown argument ${JSON.stringify(flag)}; ${USAGE}`);
        }
        if (value === undefined || value.startsWith("--")) {
            throw new Error(`${flag} needs a value; ${USAGE}`);
        }
        i++;
        if (flag === "--stack") {
            a.stack = value;
        } else if (flag === "--out") {
            a.out = value;
        } else {
            const eq = value.indexOf("=");
            if (eq <= 0) {
                throw new Error(`--set ${JSON.stringify(value)}: expected key=value`);
            }
            a.set[value.slice(0, eq)] = value.slice(eq + 1);
        }
    }
    if (a.stack === undefined || a.out === undefined) {
        throw new Error(`${a.stack === undefined ? "--stack" : "--out"} is required; ${USAGE} (--help for more)`);
    }
    return a as Args;
}

/** A plain manifest of one recorded Kubernetes object (as the provider would send it). */
export function manifest(r: Recorded): Record<string, unknown> {
    return JSON.parse(JSON.stringify(r.inputs)) as Record<string, unknown>;
}

/** `<Kind>-<namespace>-<name>.yaml`, namespace `cluster` for cluster-scoped objects. */
export function manifestFileName(m: Record<string, unknown>): string {
    const meta = (m.metadata ?? {}) as { name?: string; namespace?: string };
    return `${String(m.kind)}-${meta.namespace ?? "cluster"}-${meta.name}.yaml`;
}

export async function render(args: Args): Promise<{ resources: number; manifests: string[] }> {
    const run = await runProgram(stackConfig(args.stack, args.set), args.stack);
    const k8sDir = path.join(args.out, "k8s");
    fs.mkdirSync(k8sDir, { recursive: true });
    for (const old of fs.readdirSync(k8sDir).filter((f) => f.endsWith(".yaml"))) {
        fs.rmSync(path.join(k8sDir, old));
    }
    const all = run.resources.map((r) => ({ type: r.type, name: r.name, inputs: r.inputs }));
    fs.writeFileSync(path.join(args.out, "resources.json"), JSON.stringify(all, null, 2) + "\n");
    const files: string[] = [];
    for (const r of kubernetesObjects(run.resources)) {
        const m = manifest(r);
        const file = manifestFileName(m);
        fs.writeFileSync(path.join(args.out, "k8s", file), yaml.dump(m, { noRefs: true, lineWidth: -1 }));
        files.push(file);
    }
    return { resources: all.length, manifests: files };
}

if (require.main === module) {
    (async () => {
        let args: Args;
        try {
            args = parseArgs(process.argv.slice(2));
        } catch (e) {
            if (e instanceof HelpRequested) {
                console.log(HELP);
                process.exit(0);
            }
            console.error((e as Error).message);
            process.exit(2);
        }
        try {
            const done = await render(args);
            console.log(`rendered stack ${args.stack}: ${done.resources} resources, ${done.manifests.length} manifests in ${args.out}`);
        } catch (e) {
            console.error((e as Error).message);
            process.exit(1);
        }
    })();
}
