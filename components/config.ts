/**
 * The stack's configuration: read once, validated completely before any resource is declared.
 *
 * Every key is declared in Pulumi.yaml (type, default, description); DEFAULTS below repeats the
 * defaults so that the program behaves the same when run without the CLI (unit tests, render), and
 * a unit test checks that both agree.
 */
import * as os from "os";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";

/** The Pulumi project name: the namespace of every config key (`ops-demo:nEstimators`). */
export const PROJECT = "ops-demo";

export const CLUSTER_MODES = ["existing", "embedded"] as const;
export type ClusterMode = (typeof CLUSTER_MODES)[number];
export const IMAGE_LOADERS = ["k3s", "embedded", "kind", "registry", "none"] as const;
export type ImageLoader = (typeof IMAGE_LOADERS)[number];
export const PROMOTION_POLICIES = ["always", "better"] as const;
export type PromotionPolicy = (typeof PROMOTION_POLICIES)[number];

/** One training run: one Kubernetes Job. */
export interface TrainingRun {
    /** MLflow run name (any text; the Job name is derived from it). */
    readonly runName: string;
    /** `--n-estimators` of the trainer. */
    readonly nEstimators: number;
    /** `--max-depth` of the trainer. */
    readonly maxDepth: number;
}

/** HorizontalPodAutoscaler of the serving Deployment (autoscaling/v2, CPU utilization). */
export interface AutoscalingConfig {
    /** Fewest replicas the HPA keeps. */
    readonly minReplicas: number;
    /** Most replicas the HPA scales to. */
    readonly maxReplicas: number;
    /** Target average CPU utilization, percent of the containers' CPU request. */
    readonly targetCpuPercent: number;
}

/** CPU and memory requests and limits of one workload's container (Kubernetes quantities). */
export interface ContainerResources {
    readonly requests: { readonly cpu: string; readonly memory: string };
    readonly limits: { readonly cpu: string; readonly memory: string };
}

/** The workloads whose resources are set per stack. */
export const RESOURCE_WORKLOADS = ["mlflow", "training", "serving"] as const;
export type ResourceWorkload = (typeof RESOURCE_WORKLOADS)[number];

/** Optional basic authentication of the MLflow server (`mlflow server --app-name basic-auth`). */
export interface MlflowAuthConfig {
    /** The admin user the server bootstraps and the training Jobs log in as. */
    readonly username: string;
    /** Its password, a Pulumi secret (stays encrypted in the state). */
    readonly password: pulumi.Output<string>;
}

/** The validated configuration of one stack. */
export interface StackConfig {
    /** Trees of the single run (ignored when `experiments` is set). */
    readonly nEstimators: number;
    /** Depth of the single run (ignored when `experiments` is set). */
    readonly maxDepth: number;
    /** Name of the single run (ignored when `experiments` is set). */
    readonly runName: string;
    /** The runs to launch: `experiments` when set, else the single run above. */
    readonly runs: readonly TrainingRun[];
    /** Host directory of the shared storage, `$HOME` and `~` expanded, absolute. */
    readonly storageDir: string;
    /** Replicas of the serving Deployment. */
    readonly servingReplicas: number;
    /** `existing`: a cluster reached through `kubeconfig`; `embedded`: k3s in a Docker container made by the stack. */
    readonly cluster: ClusterMode;
    /** Path of the kubeconfig for `cluster=existing`, expanded. */
    readonly kubeconfig: string;
    /** kubeconfig context for `cluster=existing`; empty = the file's current context. */
    readonly kubeContext: string;
    /** How the images reach the cluster's container runtime. */
    readonly imageLoader: ImageLoader;
    /** kind cluster name for `imageLoader=kind`. */
    readonly kindClusterName: string;
    /** Prefix host commands that need root (k3s ctr, chown of the storage) with `sudo -n`. */
    readonly sudo: boolean;
    /** Build arg BASE_IMAGE of both images; empty = the Dockerfiles' default. */
    readonly baseImage: string;
    /** Build both images with PIP_NO_INDEX=1: pip installs only from each image's wheels/ directory. */
    readonly pipNoIndex: boolean;
    /** Port of the serving LoadBalancer Service (the guide's 80). */
    readonly servingPort: number;
    /** Trainer PROMOTION_POLICY. */
    readonly promotionPolicy: PromotionPolicy;
    /** Minutes Pulumi waits for each training Job. */
    readonly trainingTimeoutMinutes: number;
    /** rancher/k3s image of the embedded cluster. */
    readonly k3sImage: string;
    /** Docker container name of the embedded cluster. */
    readonly embeddedClusterName: string;
    /** Host port of the embedded cluster's Kubernetes API. */
    readonly apiPort: number;
    /** Host port where the embedded cluster publishes the serving API (the LoadBalancer's port 80). */
    readonly servingHostPort: number;
    /** Host port where the embedded cluster publishes MLflow. */
    readonly mlflowHostPort: number;
    /** The serving HPA; undefined when `autoscaling` is false (the Deployment then has `servingReplicas`). */
    readonly autoscaling?: AutoscalingConfig;
    /** MLflow exposes Prometheus metrics (--expose-prometheus) and its pod carries the scrape annotations. */
    readonly mlflowMetrics: boolean;
    /** Declare a ServiceMonitor (monitoring.coreos.com/v1) for the serving metrics. */
    readonly serviceMonitor: boolean;
    /** Declare the Grafana dashboard as a ConfigMap labelled grafana_dashboard="1". */
    readonly grafanaDashboard: boolean;
    /** Declare the alerting rules (dashboards/alerts.rules.yaml) as a PrometheusRule (monitoring.coreos.com/v1). */
    readonly prometheusRules: boolean;
    /** nvidia.com/gpu limit of each training pod (0: none). */
    readonly trainingGpus: number;
    /** runtimeClassName of training pods when trainingGpus > 0; empty: the node's default runtime. */
    readonly gpuRuntimeClass: string;
    /** NFS export of the shared storage (several nodes); undefined: hostPath volumes under storageDir. */
    readonly nfs?: { readonly server: string; readonly path: string };
    /** Where imageLoader=registry pushes the images; undefined for the other loaders. */
    readonly registry?: RegistryConfig;
    /** MLflow's backend store on PostgreSQL (a secret value); undefined: SQLite on the shared volume. */
    readonly mlflowBackendUri?: string;
    /** Default-deny NetworkPolicies in both namespaces plus the allow rules the environment needs. */
    readonly networkPolicies: boolean;
    /** Basic authentication of MLflow; undefined when `mlflowAuth` is false. */
    readonly mlflowAuth?: MlflowAuthConfig;
    /** Requests and limits of each workload's container. */
    readonly resources: Readonly<Record<ResourceWorkload, ContainerResources>>;
}

/** An image registry the stack pushes to and the cluster pulls from (imageLoader=registry). */
export interface RegistryConfig {
    /** Repository prefix, e.g. `registry.example.com/team`: images become `<prefix>/ops-demo:<flavour>-<hash>`. */
    readonly prefix: string;
    /** The registry host (and port): the first component of `prefix`. */
    readonly server: string;
    /** Credentials for the push and for the pods' pull secret; undefined: anonymous (or docker login done beforehand). */
    readonly credentials?: { readonly username: string; readonly password: string };
}

export type ConfigKey = keyof typeof DEFAULTS;

/** Defaults of every key, as declared in Pulumi.yaml (a unit test keeps them equal). */
export const DEFAULTS = {
    nEstimators: 100,
    maxDepth: 5,
    runName: "baseline",
    experiments: [] as TrainingRun[],
    storageDir: "$HOME/ops-demo-data/mlops",
    servingReplicas: 2,
    cluster: "existing",
    kubeconfig: "/etc/rancher/k3s/k3s.yaml",
    kubeContext: "",
    imageLoader: "k3s",
    kindClusterName: "kind",
    sudo: true,
    baseImage: "",
    pipNoIndex: false,
    servingPort: 80,
    promotionPolicy: "always",
    trainingTimeoutMinutes: 20,
    k3sImage: "rancher/k3s:v1.31.4-k3s1",
    embeddedClusterName: "ops-demo-k3s",
    apiPort: 16443,
    servingHostPort: 8080,
    mlflowHostPort: 5050,
    autoscaling: false,
    autoscalingMinReplicas: 2,
    autoscalingMaxReplicas: 10,
    autoscalingTargetCpu: 70,
    mlflowMetrics: false,
    serviceMonitor: false,
    grafanaDashboard: false,
    prometheusRules: false,
    trainingGpus: 0,
    gpuRuntimeClass: "nvidia",
    nfsServer: "",
    nfsPath: "",
    registry: "",
    registryUsername: "",
    registryPassword: "",
    mlflowBackendUri: "",
    networkPolicies: true,
    mlflowAuth: false,
    mlflowUsername: "admin",
    mlflowPassword: "",
    mlflowCpuRequest: "250m",
    mlflowCpuLimit: "1",
    mlflowMemoryRequest: "512Mi",
    mlflowMemoryLimit: "1536Mi",
    trainingCpuRequest: "500m",
    trainingCpuLimit: "2",
    trainingMemoryRequest: "512Mi",
    trainingMemoryLimit: "2Gi",
    servingCpuRequest: "100m",
    servingCpuLimit: "500m",
    servingMemoryRequest: "256Mi",
    servingMemoryLimit: "512Mi",
} as const;

export const CONFIG_KEYS = Object.keys(DEFAULTS) as ConfigKey[];

/** Keys whose values are Pulumi secrets (`pulumi config set --secret`). */
export const SECRET_KEYS: readonly ConfigKey[] = ["registryPassword", "mlflowBackendUri", "mlflowPassword"];

/** A configuration error: the message names the key, the value and what is allowed. */
export class ConfigError extends pulumi.RunError {
    constructor(readonly problems: string[]) {
        super(
            `invalid stack configuration (fix with \`pulumi config set <key> <value>\`):\n` +
                problems.map((p) => `  - ${p}`).join("\n"),
        );
        this.name = "ConfigError";
    }
}

/** Reads raw config values: the Pulumi config by default, a plain map in tests. */
export type RawConfig = (key: string) => string | undefined;

function pulumiRaw(): RawConfig {
    const cfg = new pulumi.Config(PROJECT);
    // Secrets are read raw (validated like any value, then wrapped in pulumi.secret where used):
    // Config.get would warn that a secret is read as plain text.
    return (key) => ((SECRET_KEYS as readonly string[]).includes(key) ? pulumi.runtime.getConfig(`${PROJECT}:${key}`) : cfg.get(key));
}

/** Expands a leading `~`, `$HOME` and `${HOME}` with the home directory of the machine running the program. */
export function expandHome(p: string, home: string = os.homedir()): string {
    let out = p.replace(/\$\{HOME\}|\$HOME(?![A-Za-z0-9_])/g, home);
    if (out === "~" || out.startsWith("~/")) {
        out = home + out.slice(1);
    }
    return out;
}

const show = (v: unknown) => JSON.stringify(v);

class Reader {
    readonly problems: string[] = [];
    constructor(private readonly raw: RawConfig) {}

    private value(key: ConfigKey): string | undefined {
        return this.raw(key);
    }

    fail(key: string, value: unknown, allowed: string): void {
        this.problems.push(`${PROJECT}:${key} = ${show(value)}: ${allowed}`);
    }

    int(key: ConfigKey, min: number, max: number): number {
        const v = this.value(key);
        const def = DEFAULTS[key] as number;
        if (v === undefined || v === "") {
            return def;
        }
        const n = parseIntStrict(v);
        if (n === undefined || n < min || n > max) {
            this.fail(key, v, `must be a whole number from ${min} to ${max} (default ${def})`);
            return def;
        }
        return n;
    }

    str(key: ConfigKey, opts: { nonEmpty?: boolean; pattern?: RegExp; describe?: string } = {}): string {
        const v = this.value(key);
        const def = DEFAULTS[key] as string;
        if (v === undefined) {
            return def;
        }
        if (opts.nonEmpty && v.trim() === "") {
            this.fail(key, v, `must not be empty (default ${show(def)})`);
            return def;
        }
        if (opts.pattern && !opts.pattern.test(v)) {
            this.fail(key, v, opts.describe ?? `must match ${opts.pattern}`);
            return def;
        }
        return v;
    }

    oneOf<T extends string>(key: ConfigKey, allowed: readonly T[]): T {
        const v = this.value(key);
        const def = DEFAULTS[key] as T;
        if (v === undefined || v === "") {
            return def;
        }
        if (!(allowed as readonly string[]).includes(v)) {
            this.fail(key, v, `must be one of ${allowed.join(", ")} (default ${def})`);
            return def;
        }
        return v as T;
    }

    bool(key: ConfigKey): boolean {
        const v = this.value(key);
        const def = DEFAULTS[key] as boolean;
        if (v === undefined || v === "") {
            return def;
        }
        if (v === "true" || v === "false") {
            return v === "true";
        }
        this.fail(key, v, `must be true or false (default ${def})`);
        return def;
    }
}

/** Parses a whole number written in decimal; undefined for anything else ("abc", "2.5", "1e3", ""). */
export function parseIntStrict(v: unknown): number | undefined {
    if (typeof v === "number") {
        return Number.isSafeInteger(v) ? v : undefined;
    }
    if (typeof v !== "string" || !/^\s*[+-]?\d+\s*$/.test(v)) {
        return undefined;
    }
    const n = Number(v.trim());
    return Number.isSafeInteger(n) ? n : undefined;
}

export const LIMITS = {
    nEstimators: { min: 1, max: 10000 },
    maxDepth: { min: 1, max: 1000 },
    servingReplicas: { min: 0, max: 50 },
    trainingTimeoutMinutes: { min: 1, max: 24 * 60 },
    port: { min: 1, max: 65535 },
    runNameLength: 250,
    autoscalingMinReplicas: { min: 1, max: 50 },
    autoscalingMaxReplicas: { min: 1, max: 100 },
    autoscalingTargetCpu: { min: 1, max: 100 },
    trainingGpus: { min: 0, max: 16 },
    /** MLflow's own password policy (mlflow.utils.validation._validate_password). */
    mlflowPasswordMinLength: 12,
} as const;

/** CPU quantities: whole or decimal cores ("1", "0.5") or millicores ("500m"). */
const CPU_QUANTITY = /^(\d+(\.\d+)?|\d+m)$/;
/** Memory quantities: bytes with an optional binary (Ki..Ti) or decimal (k..T) suffix ("512Mi", "2Gi", "1G"). */
const MEMORY_QUANTITY = /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$/;
const MEMORY_UNITS: Record<string, number> = { "": 1, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };

/** A CPU quantity in cores; undefined when it is not one CPU_QUANTITY accepts. */
export function cpuCores(q: string): number | undefined {
    if (!CPU_QUANTITY.test(q)) {
        return undefined;
    }
    return q.endsWith("m") ? Number(q.slice(0, -1)) / 1000 : Number(q);
}

/** A memory quantity in bytes; undefined when it is not one MEMORY_QUANTITY accepts. */
export function memoryBytes(q: string): number | undefined {
    const m = MEMORY_QUANTITY.exec(q);
    return m ? Number(q.slice(0, q.length - (m[2] ?? "").length)) * MEMORY_UNITS[m[2] ?? ""] : undefined;
}

/**
 * The four resource keys of each workload (`<workload>{Cpu,Memory}{Request,Limit}`): valid quantities,
 * above zero, request at most the limit (the API server rejects a request above its limit).
 */
function readResources(r: Reader): Record<ResourceWorkload, ContainerResources> {
    const out = {} as Record<ResourceWorkload, ContainerResources>;
    for (const w of RESOURCE_WORKLOADS) {
        const q = (kind: "Cpu" | "Memory", which: "Request" | "Limit") => {
            const key = `${w}${kind}${which}` as ConfigKey;
            const describe =
                kind === "Cpu"
                    ? `must be a CPU quantity above 0: cores ("1", "0.5") or millicores ("500m") (default ${show(DEFAULTS[key])})`
                    : `must be a memory quantity above 0: a number with Ki, Mi, Gi, Ti, k, M, G or T ("512Mi", "2Gi") (default ${show(DEFAULTS[key])})`;
            const v = r.str(key, { nonEmpty: true });
            const n = kind === "Cpu" ? cpuCores(v) : memoryBytes(v);
            if (n === undefined || n <= 0) {
                r.fail(key, v, describe);
                return { value: DEFAULTS[key] as string, n: undefined };
            }
            return { value: v, n };
        };
        const cpuReq = q("Cpu", "Request");
        const cpuLim = q("Cpu", "Limit");
        const memReq = q("Memory", "Request");
        const memLim = q("Memory", "Limit");
        for (const [kind, req, lim] of [["Cpu", cpuReq, cpuLim], ["Memory", memReq, memLim]] as const) {
            if (req.n !== undefined && lim.n !== undefined && req.n > lim.n) {
                r.fail(`${w}${kind}Request`, req.value, `must be at most ${w}${kind}Limit (${lim.value}): Kubernetes rejects a request above its limit`);
            }
        }
        out[w] = { requests: { cpu: cpuReq.value, memory: memReq.value }, limits: { cpu: cpuLim.value, memory: memLim.value } };
    }
    return out;
}

/**
 * `mlflowAuth` with its user and secret password, checked against MLflow's rules (a password of at
 * least 12 characters, not the insecure default MLflow used to ship); undefined when off.
 */
function readMlflowAuth(r: Reader, raw: RawConfig): MlflowAuthConfig | undefined {
    const on = r.bool("mlflowAuth");
    const username = r.str("mlflowUsername", {
        pattern: /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/,
        describe: 'must be 1 to 64 letters, digits, ".", "_", "@" or "-", starting with a letter or digit (default "admin")',
    });
    if (!on) {
        return undefined;
    }
    const password = raw("mlflowPassword") ?? "";
    const min = LIMITS.mlflowPasswordMinLength;
    const hidden = password === "" ? '""' : `(secret, ${password.length} characters)`;
    const setIt = "pulumi config set --secret mlflowPassword <password>";
    if (password === "") {
        r.problems.push(`${PROJECT}:mlflowPassword = "": must be set when mlflowAuth is true, at least ${min} characters: ${setIt}`);
    } else if (password.length < min || password === "password1234") {
        r.problems.push(
            `${PROJECT}:mlflowPassword = ${hidden}: must be at least ${min} characters and not MLflow's old default password1234 (MLflow's password policy): ${setIt}`,
        );
    }
    return { username, password: pulumi.secret(password) };
}

function checkRunName(r: Reader, key: string, v: unknown): string | undefined {
    if (typeof v !== "string" || v.trim() === "") {
        r.fail(key, v, "must be a non-empty string (any text; the Job name is derived from it)");
        return undefined;
    }
    // eslint-disable-next-line no-control-regex
    if (v.length > LIMITS.runNameLength || /[\u0000-\u001f\u007f]/.test(v)) {
        r.fail(key, v, `must be at most ${LIMITS.runNameLength} characters without control characters`);
        return undefined;
    }
    return v;
}

function readExperiments(r: Reader, raw: string | undefined, base: { nEstimators: number; maxDepth: number }): TrainingRun[] {
    const key = "experiments";
    const shape =
        'must be a list of runs, each "runName=<text>,nEstimators=<int >= 1>,maxDepth=<int >= 1>" ' +
        "(nEstimators/maxDepth default to the top-level keys), e.g. " +
        '["runName=more-trees,nEstimators=200", "runName=deeper,maxDepth=20"]';
    if (raw === undefined || raw.trim() === "") {
        return [];
    }
    let parsed: unknown;
    try {
        parsed = JSON.parse(raw);
    } catch {
        r.fail(key, raw, `is not a list; ${shape}`);
        return [];
    }
    if (!Array.isArray(parsed)) {
        r.fail(key, parsed, shape);
        return [];
    }
    const runs: TrainingRun[] = [];
    const seen = new Set<string>();
    parsed.forEach((item: unknown, i: number) => {
        const k = `${key}[${i}]`;
        const entry = typeof item === "string" ? parseRunSpec(item) : item;
        if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
            r.fail(k, item, shape);
            return;
        }
        const e = entry as Record<string, unknown>;
        const unknown = Object.keys(e).filter((x) => !["runName", "nEstimators", "maxDepth"].includes(x));
        if (unknown.length > 0) {
            r.fail(`${k}.${unknown[0]}`, e[unknown[0]], `unknown field; allowed fields are runName, nEstimators, maxDepth`);
            return;
        }
        const runName = checkRunName(r, `${k}.runName`, e.runName);
        const num = (field: "nEstimators" | "maxDepth"): number | undefined => {
            if (e[field] === undefined) {
                return base[field];
            }
            const n = parseIntStrict(e[field]);
            const lim = LIMITS[field];
            if (n === undefined || n < lim.min || n > lim.max) {
                r.fail(`${k}.${field}`, e[field], `must be a whole number from ${lim.min} to ${lim.max}`);
                return undefined;
            }
            return n;
        };
        const nEstimators = num("nEstimators");
        const maxDepth = num("maxDepth");
        if (runName === undefined || nEstimators === undefined || maxDepth === undefined) {
            return;
        }
        if (seen.has(runName)) {
            r.fail(`${k}.runName`, runName, "must be unique within experiments");
            return;
        }
        seen.add(runName);
        runs.push({ runName, nEstimators, maxDepth });
    });
    return runs;
}

/**
 * MLflow's backend store URI: empty (SQLite on the shared volume) or PostgreSQL through psycopg (3),
 * the driver the training image installs. Errors never print the value (it holds a password).
 */
function readBackendUri(r: Reader): string | undefined {
    const v = r.str("mlflowBackendUri");
    if (v === "") {
        return undefined;
    }
    const m = /^(postgresql(?:\+psycopg)?):\/\/[^/\s]+\/[^\s/?]+(\?\S*)?$/.exec(v);
    if (!m) {
        const scheme = /^([a-z0-9+]+):\/\//.exec(v)?.[1];
        r.fail(
            "mlflowBackendUri",
            scheme ? `[secret ${scheme}://...]` : "[secret]",
            "must be empty (SQLite on the shared volume) or postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE[?options] (set it with pulumi config set --secret)",
        );
        return undefined;
    }
    return v;
}

/** The NFS export of the shared storage: both keys or neither. */
function readNfs(r: Reader): { server: string; path: string } | undefined {
    const server = r.str("nfsServer", {
        pattern: /^$|^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:]+\]$/,
        describe: "must be empty (hostPath volumes) or an NFS server's host name or IP address, e.g. nfs.example.com or 10.0.0.5",
    });
    const exportPath = r.str("nfsPath", {
        pattern: /^$|^\/[A-Za-z0-9._\-/]*$/,
        describe: "must be empty or the absolute path of the export on the NFS server, e.g. /export/mlops",
    });
    if (server === "" && exportPath === "") {
        return undefined;
    }
    if (server === "") {
        r.fail("nfsServer", server, "must be set when nfsPath is (the NFS server of the export)");
        return undefined;
    }
    if (exportPath === "" || exportPath === "/") {
        r.fail("nfsPath", exportPath, "must be set when nfsServer is: the export's directory for this stack, not / (e.g. /export/mlops)");
        return undefined;
    }
    return { server, path: exportPath };
}

/** The registry of imageLoader=registry, checked against the loader and the credentials against each other. */
function readRegistry(r: Reader, loader: ImageLoader): RegistryConfig | undefined {
    const prefix = r.str("registry", {
        pattern: /^$|^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(\/[a-z0-9]+([._-][a-z0-9]+)*)*$/,
        describe: "must be a registry host with an optional port and path, without scheme or tag, e.g. registry.example.com/team or localhost:5000",
    });
    const username = r.str("registryUsername");
    const password = r.str("registryPassword");
    if (loader !== "registry") {
        for (const [key, v] of [["registry", prefix], ["registryUsername", username], ["registryPassword", password]] as const) {
            if (v !== "") {
                r.fail(key, key === "registryPassword" ? "[secret]" : v, "is used only with imageLoader=registry; unset it (pulumi config rm) or set imageLoader registry");
            }
        }
        return undefined;
    }
    if (prefix === "") {
        r.fail("registry", prefix, "must be set when imageLoader=registry, e.g. registry.example.com/team");
        return undefined;
    }
    if ((username === "") !== (password === "")) {
        r.fail(username === "" ? "registryUsername" : "registryPassword", "", "registryUsername and registryPassword go together (both set, or both empty for anonymous access)");
    }
    const server = prefix.split("/")[0];
    return { prefix, server, ...(username !== "" && password !== "" ? { credentials: { username, password } } : {}) };
}

/** The serving HPA's settings, checked together (min <= max); undefined when autoscaling is off. */
function readAutoscaling(r: Reader): AutoscalingConfig | undefined {
    const on = r.bool("autoscaling");
    const minReplicas = r.int("autoscalingMinReplicas", LIMITS.autoscalingMinReplicas.min, LIMITS.autoscalingMinReplicas.max);
    const maxReplicas = r.int("autoscalingMaxReplicas", LIMITS.autoscalingMaxReplicas.min, LIMITS.autoscalingMaxReplicas.max);
    const targetCpuPercent = r.int("autoscalingTargetCpu", LIMITS.autoscalingTargetCpu.min, LIMITS.autoscalingTargetCpu.max);
    if (minReplicas > maxReplicas) {
        r.fail("autoscalingMaxReplicas", maxReplicas, `must be at least autoscalingMinReplicas (${minReplicas})`);
    }
    return on ? { minReplicas, maxReplicas, targetCpuPercent } : undefined;
}

/**
 * Parses one `experiments` entry written as "runName=<text>,nEstimators=<int>,maxDepth=<int>" into an
 * object (values unchecked); undefined when it is not a list of key=value pairs.
 */
export function parseRunSpec(spec: string): Record<string, string> | undefined {
    const out: Record<string, string> = {};
    for (const part of spec.split(",")) {
        const eq = part.indexOf("=");
        if (eq <= 0) {
            return undefined;
        }
        out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
    }
    return out;
}

/** Config keys of this project that the program does not know (typos such as `nEstimator`). */
function unknownKeys(): string[] {
    const all = pulumi.runtime.allConfig();
    const prefix = `${PROJECT}:`;
    return Object.keys(all)
        .filter((k) => k.startsWith(prefix))
        .map((k) => k.slice(prefix.length))
        .filter((k) => !(CONFIG_KEYS as string[]).includes(k));
}

/**
 * Reads and validates the whole configuration. Throws one ConfigError listing every problem.
 * `raw` defaults to the Pulumi config of project `ops-demo`; `home` to this machine's home directory.
 */
export function loadConfig(raw: RawConfig = pulumiRaw(), home: string = os.homedir(), checkUnknown = true): StackConfig {
    const r = new Reader(raw);
    if (checkUnknown) {
        for (const k of unknownKeys()) {
            r.fail(k, raw(k), `unknown key; known keys are ${CONFIG_KEYS.join(", ")}`);
        }
    }
    const nEstimators = r.int("nEstimators", LIMITS.nEstimators.min, LIMITS.nEstimators.max);
    const maxDepth = r.int("maxDepth", LIMITS.maxDepth.min, LIMITS.maxDepth.max);
    const rawRunName = raw("runName");
    const runName = rawRunName === undefined ? DEFAULTS.runName : (checkRunName(r, "runName", rawRunName) ?? DEFAULTS.runName);
    const experiments = readExperiments(r, raw("experiments"), { nEstimators, maxDepth });

    const storageRaw = r.str("storageDir", { nonEmpty: true });
    const storageDir = expandHome(storageRaw, home);
    if (!path.isAbsolute(storageDir)) {
        r.fail("storageDir", storageRaw, "must be an absolute path (may start with $HOME or ~)");
    } else if (/["'`\\$\s]/.test(storageDir) || storageDir === "/") {
        r.fail("storageDir", storageRaw, "must not be / nor contain quotes, backslashes, $ or whitespace");
    }
    const kubeconfigRaw = r.str("kubeconfig", { nonEmpty: true });
    const kubeconfig = expandHome(kubeconfigRaw, home);

    const cluster = r.oneOf("cluster", CLUSTER_MODES);
    const imageLoader = r.oneOf("imageLoader", IMAGE_LOADERS);
    if (cluster === "embedded" && (imageLoader === "k3s" || imageLoader === "kind")) {
        r.fail("imageLoader", imageLoader, "must be embedded, registry or none when cluster=embedded");
    }
    if (cluster === "existing" && imageLoader === "embedded") {
        r.fail("imageLoader", imageLoader, "embedded needs cluster=embedded; use k3s, kind or none for an existing cluster");
    }
    const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
    const cfg: StackConfig = {
        nEstimators,
        maxDepth,
        runName,
        runs: experiments.length > 0 ? experiments : [{ runName, nEstimators, maxDepth }],
        storageDir,
        servingReplicas: r.int("servingReplicas", LIMITS.servingReplicas.min, LIMITS.servingReplicas.max),
        cluster,
        kubeconfig,
        kubeContext: r.str("kubeContext"),
        imageLoader,
        kindClusterName: r.str("kindClusterName", {
            pattern: /^[a-z0-9][-a-z0-9.]*$/,
            describe: "must be a kind cluster name (lowercase letters, digits, - and .)",
        }),
        sudo: r.bool("sudo"),
        baseImage: r.str("baseImage", {
            pattern: /^$|^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$/,
            describe: "must be empty (the Dockerfiles' default) or an image reference such as python:3.11-slim",
        }),
        pipNoIndex: r.bool("pipNoIndex"),
        servingPort: r.int("servingPort", LIMITS.port.min, LIMITS.port.max),
        promotionPolicy: r.oneOf("promotionPolicy", PROMOTION_POLICIES),
        trainingTimeoutMinutes: r.int("trainingTimeoutMinutes", LIMITS.trainingTimeoutMinutes.min, LIMITS.trainingTimeoutMinutes.max),
        k3sImage: r.str("k3sImage", {
            pattern: /^[A-Za-z0-9][A-Za-z0-9._\-/]*:[A-Za-z0-9._-]+$/,
            describe: "must be an image reference with a pinned tag, e.g. rancher/k3s:v1.31.4-k3s1",
        }),
        embeddedClusterName: r.str("embeddedClusterName", {
            pattern: dnsLabel,
            describe: "must be a container name of lowercase letters, digits and -",
        }),
        apiPort: r.int("apiPort", LIMITS.port.min, LIMITS.port.max),
        servingHostPort: r.int("servingHostPort", LIMITS.port.min, LIMITS.port.max),
        mlflowHostPort: r.int("mlflowHostPort", LIMITS.port.min, LIMITS.port.max),
        autoscaling: readAutoscaling(r),
        nfs: readNfs(r),
        registry: readRegistry(r, imageLoader),
        mlflowBackendUri: readBackendUri(r),
        mlflowMetrics: r.bool("mlflowMetrics"),
        serviceMonitor: r.bool("serviceMonitor"),
        grafanaDashboard: r.bool("grafanaDashboard"),
        prometheusRules: r.bool("prometheusRules"),
        trainingGpus: r.int("trainingGpus", LIMITS.trainingGpus.min, LIMITS.trainingGpus.max),
        gpuRuntimeClass: r.str("gpuRuntimeClass", {
            pattern: /^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/,
            describe: 'must be empty (the node\'s default runtime) or a RuntimeClass name of lowercase letters, digits, - and . (default "nvidia")',
        }),
        networkPolicies: r.bool("networkPolicies"),
        mlflowAuth: readMlflowAuth(r, raw),
        resources: readResources(r),
    };
    if (cfg.autoscaling !== undefined && cfg.servingReplicas === 0) {
        r.fail(
            "servingReplicas",
            0,
            `cannot stop serving while autoscaling is on (the HPA keeps at least autoscalingMinReplicas = ${cfg.autoscaling.minReplicas}); set autoscaling false first`,
        );
    }
    if (cluster === "embedded") {
        const ports = { apiPort: cfg.apiPort, servingHostPort: cfg.servingHostPort, mlflowHostPort: cfg.mlflowHostPort };
        const entries = Object.entries(ports);
        for (let i = 0; i < entries.length; i++) {
            for (let j = i + 1; j < entries.length; j++) {
                if (entries[i][1] === entries[j][1]) {
                    r.fail(entries[j][0], entries[j][1], `must differ from ${entries[i][0]} (${entries[i][1]})`);
                }
            }
        }
    }
    if (r.problems.length > 0) {
        throw new ConfigError(r.problems);
    }
    return cfg;
}
