/**
 * Test stand-in for the `docker` resource provider (pulumi-docker 4.11.2). `docker:index/image:Image`
 * builds for real with the Docker CLI; `docker:index/remoteImage:RemoteImage` and
 * `docker:index/container:Container` only check and diff (enough for `pulumi preview`), their
 * create fails. See README.md for what is copied from the real provider and what is not.
 */
import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as provider from "@pulumi/pulumi/provider";
import { EngineLog, Props, changedKeys, containsUnknown, defined, exitDescription, reveal, runProcess, secret } from "./common";
import { IgnoreRule, isIgnored, parseDockerignore } from "../../../components/contentHash";

export const VERSION = "4.11.2";
const IMAGE = "docker:index/image:Image";
const REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage";
const CONTAINER = "docker:index/container:Container";
const DOCKER = process.env.OPS_DEMO_DOCKER_CLI ?? "docker";

function typeOf(urn: string): string {
    return urn.split("::")[2]?.split("$").pop() ?? "";
}

const known = (x: unknown) => x !== undefined && x !== null && !containsUnknown(x);

/** `linux/<arch>` of this host, the real provider's default platform. */
export function hostPlatform(): string {
    const arch = ({ x64: "amd64", arm64: "arm64", arm: "arm", ia32: "386", s390x: "s390x", ppc64: "ppc64le" } as Record<string, string>)[process.arch];
    return `linux/${arch ?? process.arch}`;
}

// ---------------------------------------------------------------------------------------------
// .dockerignore and the context digest

// .dockerignore rules are the program's own (components/contentHash.ts: the same rules decide the image tag)

/** `<dockerfile>.dockerignore` when present, else `<context>/.dockerignore` (Docker's precedence). */
function ignoreRules(context: string, dockerfile: string): IgnoreRule[] {
    for (const p of [`${dockerfile}.dockerignore`, path.join(context, ".dockerignore")]) {
        if (fs.existsSync(p)) {
            return parseDockerignore(fs.readFileSync(p, "utf8"));
        }
    }
    return [];
}

/**
 * The digest of the build context the real provider adds as `build.contextDigest` in Check, so that
 * a change of any file that reaches the build (the Dockerfile, and every file not excluded by
 * .dockerignore: its path, mode and content, or a symlink's target) changes the inputs and updates
 * the image. Same idea as the real one; the value itself is this stand-in's own.
 */
export function contextDigest(context: string, dockerfile: string): string {
    const rules = ignoreRules(context, dockerfile);
    const hasExceptions = rules.some((r) => r.negate);
    const acc = crypto.createHash("sha256");
    const add = (name: string, mode: number, content: Buffer | string) => {
        acc.update(`${name}\0${mode.toString(8)}\0${crypto.createHash("sha256").update(content).digest("hex")}\n`);
    };
    add("Dockerfile", 0, fs.readFileSync(dockerfile));
    const walk = (dir: string) => {
        for (const name of fs.readdirSync(dir).sort()) {
            const abs = path.join(dir, name);
            const rel = path.relative(context, abs).split(path.sep).join("/");
            const st = fs.lstatSync(abs);
            const skip = isIgnored(rel, rules);
            if (st.isDirectory()) {
                if (!skip || hasExceptions) {
                    walk(abs);
                }
            } else if (!skip) {
                add(rel, st.mode, st.isSymbolicLink() ? fs.readlinkSync(abs) : fs.readFileSync(abs));
            }
        }
    };
    walk(context);
    return acc.digest("hex");
}

// ---------------------------------------------------------------------------------------------
// docker:index/image:Image

interface Build {
    readonly context: string;
    readonly dockerfile: string;
    readonly args: Record<string, string>;
    readonly platform?: string;
    readonly target?: string;
    readonly network?: string;
    readonly addHosts: string[];
    readonly cacheFrom: string[];
    readonly builderVersion?: string;
}

function buildOf(inputs: Props): Build {
    const b = (reveal(inputs.build) ?? {}) as Props;
    const context: string = b.context ?? ".";
    return {
        context,
        dockerfile: b.dockerfile ?? path.join(context, "Dockerfile"),
        args: b.args ?? {},
        platform: b.platform,
        target: b.target,
        network: b.network,
        addHosts: b.addHosts ?? [],
        cacheFrom: b.cacheFrom?.images ?? [],
        builderVersion: b.builderVersion,
    };
}

/** The registry host of a fully qualified image name (`host[:port]/repo[:tag]`), or undefined. */
export function registryHost(imageName: string): string | undefined {
    const first = imageName.split("/")[0];
    return imageName.includes("/") && (first.includes(".") || first.includes(":") || first === "localhost") ? first : undefined;
}

/** Check of the real provider: defaults for build, buildOnPreview and platform, the contextDigest. */
export async function checkImage(log: EngineLog, urn: string, news: Props): Promise<Props> {
    const inputs: Props = { ...news, buildOnPreview: typeof news.buildOnPreview === "boolean" ? news.buildOnPreview : false };
    const build: Props = known(inputs.build) ? { ...(inputs.build as Props) } : { context: ".", dockerfile: "Dockerfile" };
    if (!containsUnknown(build.context)) {
        build.context = reveal(build.context) ?? ".";
    }
    let knownDockerfile = false;
    if (!containsUnknown(build.dockerfile)) {
        build.dockerfile = reveal(build.dockerfile) ?? path.join(build.context, "Dockerfile");
        knownDockerfile = true;
    }
    if (knownDockerfile) {
        if (!fs.existsSync(build.dockerfile)) {
            if (path.isAbsolute(build.dockerfile)) {
                throw new Error(`expected a relative Dockerfile path; got ${JSON.stringify(build.dockerfile)} instead: stat ${build.dockerfile}: no such file or directory`);
            }
            const rel = path.join(build.context, build.dockerfile);
            throw new Error(fs.existsSync(rel)
                ? `could not open dockerfile at relative path ${JSON.stringify(build.dockerfile)}. Try setting \`dockerfile\` to ${JSON.stringify(rel)}`
                : `could not open dockerfile at relative path ${JSON.stringify(build.dockerfile)}: stat ${build.dockerfile}: no such file or directory`);
        }
        if (!containsUnknown(build.context)) {
            build.contextDigest = contextDigest(build.context, build.dockerfile);
        }
    }
    if (build.platform === undefined || build.platform === null) {
        build.platform = hostPlatform();
        await log.log("info", urn, `Building your image for ${build.platform} architecture.\n`
            + "To ensure you are building for the correct platform, consider explicitly setting the `platform` field on ImageBuildOptions.");
    }
    inputs.build = build;
    // The image name must carry its registry when it is pushed (or used as cache) and no registry server is given.
    const skipPush = reveal(inputs.skipPush) === true;
    const registry = (reveal(inputs.registry) ?? {}) as Props;
    const name = reveal(inputs.imageName);
    if (!skipPush && typeof name === "string" && !registry.server && registryHost(name) === undefined) {
        throw new Error(`error: repository name must be canonical: ${JSON.stringify(name)}. This provider requires all image names to be fully qualified.\n`
            + "For example, if you are attempting to push to Dockerhub, prefix your image name with `docker.io`:\n\n`docker.io/repository/image:tag`");
    }
    return inputs;
}

let buildxAvailable: boolean | undefined;
async function hasBuildx(): Promise<boolean> {
    buildxAvailable ??= (await runProcess([DOCKER, "buildx", "version"])).code === 0;
    return buildxAvailable;
}

/** Builds (and unless skipPush pushes) the image; returns the real provider's outputs. */
export async function buildImage(log: EngineLog, urn: string, inputs: Props): Promise<Props> {
    const imageName = reveal(inputs.imageName) as string;
    const skipPush = reveal(inputs.skipPush) === true;
    const registry = (reveal(inputs.registry) ?? {}) as Props;
    const b = buildOf(inputs);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ops-demo-docker-"));
    const pending: Promise<void>[] = [];
    const status = (line: string) => void pending.push(log.log("info", urn, line, true));
    try {
        const iidfile = path.join(tmp, "iid");
        const argv = [DOCKER, "build", "--file", b.dockerfile, "--tag", imageName, "--iidfile", iidfile];
        for (const [k, v] of Object.entries(b.args)) {
            argv.push("--build-arg", `${k}=${v}`);
        }
        for (const c of b.cacheFrom) {
            argv.push("--cache-from", c);
        }
        for (const h of b.addHosts) {
            argv.push("--add-host", h);
        }
        if (b.platform) {
            argv.push("--platform", b.platform);
        }
        if (b.target) {
            argv.push("--target", b.target);
        }
        if (b.network) {
            argv.push("--network", b.network);
        }
        argv.push(b.context);
        // BuildKit as the real provider, when this Docker CLI has it (buildx); else the classic builder.
        const buildkit = b.builderVersion !== "BuilderV1" && (await hasBuildx());
        const env = { ...process.env, DOCKER_BUILDKIT: buildkit ? "1" : "0" };
        status("Building the image");
        const r = await runProcess(argv, { env, onStdout: status, onStderr: status });
        if (r.code !== 0 || r.spawnError) {
            throw new Error(`docker build of ${imageName} failed (${exitDescription(r)}): ${argv.join(" ")}\n${r.combined}`);
        }
        const imageId = fs.readFileSync(iidfile, "utf8").trim();
        let repoDigest = imageId; // a local image: its ID, `sha256:...` (pulumi-docker >= 4.4)
        if (!skipPush) {
            status("Pushing Image to the registry");
            const pushEnv: NodeJS.ProcessEnv = { ...process.env };
            if (registry.username && registry.password) {
                const server = registry.server || registryHost(imageName);
                const auth = Buffer.from(`${registry.username}:${registry.password}`).toString("base64");
                fs.writeFileSync(path.join(tmp, "config.json"), JSON.stringify({ auths: { [server]: { auth } } }), { mode: 0o600 });
                pushEnv.DOCKER_CONFIG = tmp;
            }
            const p = await runProcess([DOCKER, "push", imageName], { env: pushEnv, onStdout: status, onStderr: status });
            if (p.code !== 0 || p.spawnError) {
                throw new Error(`docker push of ${imageName} failed (${exitDescription(p)}):\n${p.combined}`);
            }
            const i = await runProcess([DOCKER, "image", "inspect", "--format", "{{json .RepoDigests}}", imageName]);
            const digests = i.code === 0 ? (JSON.parse(i.stdout) as string[]) : [];
            repoDigest = digests.find((d) => d.startsWith(`${imageName.replace(/:[^:/]*$/, "")}@`)) ?? digests[0] ?? "";
        }
        return defined({
            imageName,
            baseImageName: imageName,
            registryServer: registry.server ?? "",
            context: b.context,
            dockerfile: path.relative(path.resolve(b.context), path.resolve(b.dockerfile)).split(path.sep).join("/"),
            platform: b.platform,
            repoDigest: repoDigest === "" ? undefined : repoDigest,
            // The real provider keeps its inputs in the state, for Diff.
            __inputs: secret(inputs),
        });
    } finally {
        await Promise.all(pending);
        fs.rmSync(tmp, { recursive: true, force: true });
    }
}

/** Diff of the real provider: old inputs (`__inputs`) against new ones; every change is an update, never a replace. */
export function diffImage(olds: Props, news: Props): provider.DiffResult {
    const oldInputs = (reveal(olds.__inputs) ?? olds) as Props;
    const keys = [...new Set([...Object.keys(oldInputs), ...Object.keys(news)])].filter((k) => k !== "__inputs");
    const changed = changedKeys(oldInputs, news, keys).filter((k) => {
        if (k !== "registry") {
            return true;
        }
        // New registry credentials alone do not rebuild; a new server does.
        const o = (reveal(oldInputs.registry) ?? {}) as Props;
        const n = (reveal(news.registry) ?? {}) as Props;
        return (o.server ?? null) !== (n.server ?? null) || (Object.keys(o).length === 0) !== (Object.keys(n).length === 0);
    });
    return { changes: changed.length > 0, replaces: [] };
}

// ---------------------------------------------------------------------------------------------
// RemoteImage and Container: preview only

/** Input properties whose change replaces (ForceNew in the bridged Terraform provider). */
const REMOTE_IMAGE_REPLACES = ["name", "platform", "pullTriggers", "triggers", "build", "forceRemove"];

function notSupported(type: string): never {
    throw new Error(`${type}: creating or changing it is not supported by the test stand-in of the docker provider `
        + "(tests/real/providers/docker.ts implements only docker:index/image:Image; RemoteImage and Container only check and diff, for preview)");
}

export function makeDockerProvider(log: EngineLog): provider.Provider {
    return {
        version: VERSION,

        async check(urn, _olds, news) {
            const type = typeOf(urn);
            const v = reveal(news) as Props;
            const failures: provider.CheckFailure[] = [];
            switch (type) {
                case IMAGE:
                    if (v.imageName === undefined || v.imageName === null) {
                        failures.push({ property: "imageName", reason: "Missing required property 'imageName'" });
                        return { inputs: news, failures };
                    }
                    return { inputs: await checkImage(log, urn, news) };
                case REMOTE_IMAGE:
                    if (v.name === undefined || v.name === null) {
                        failures.push({ property: "name", reason: "Missing required property 'name'" });
                    }
                    return { inputs: news, failures };
                case CONTAINER:
                    for (const k of ["image", "name"]) {
                        if (v[k] === undefined || v[k] === null) {
                            failures.push({ property: k, reason: `Missing required property '${k}'` });
                        }
                    }
                    return { inputs: news, failures };
                default:
                    throw new Error(`${type} is not supported by the test stand-in of the docker provider`);
            }
        },

        async diff(_id, urn, olds, news) {
            const type = typeOf(urn);
            if (type === IMAGE) {
                return diffImage(olds, news);
            }
            const changed = changedKeys(olds, news, Object.keys(news));
            const replaces = type === CONTAINER ? changed : changed.filter((k) => REMOTE_IMAGE_REPLACES.includes(k));
            return { changes: changed.length > 0, replaces };
        },

        async create(urn, inputs) {
            const type = typeOf(urn);
            if (type !== IMAGE) {
                notSupported(type);
            }
            const outs = await buildImage(log, urn, inputs);
            return { id: outs.imageName as string, outs };
        },

        async update(_id, urn, _olds, news) {
            const type = typeOf(urn);
            if (type !== IMAGE) {
                notSupported(type);
            }
            return { outs: await buildImage(log, urn, news) };
        },

        // The real provider leaves built images (and their tags) in place on delete; nothing else is ever created here.
        async delete() {
            return;
        },
    };
}

if (require.main === module) {
    const args = process.argv.slice(2);
    void provider.main(makeDockerProvider(new EngineLog(args)), args);
}
