/**
 * Training runs: one Job per run in mlops-training (pods `app=iris-training`), and a wait per Job so
 * that `pulumi up` finishes only when the run did, and fails with where to look when it did not.
 */
import * as command from "@pulumi/command";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS, containerSecurityContext, podSecurityContext, resourceRequirements, TMP_MOUNT, TMP_VOLUME } from "./common";
import { ContainerResources, PromotionPolicy, TrainingRun } from "./config";
import { jobName, labelValue, runHash } from "./naming";
import { BASH, shq } from "./shell";
import { TRAINING_NAMESPACE } from "./namespaces";
import { MODEL_NAME } from "./serving";

export const TRAINING_APP = "iris-training";
export const EXPERIMENT_NAME = "iris-classification";

export interface TrainingRunsArgs {
    /** mlops-training. */
    readonly namespace: pulumi.Input<string>;
    /** The training image's reference, known at program time (part of each run's identity). */
    readonly imageRef: string;
    /** The same image as an Output of the build (the dependency). */
    readonly image: pulumi.Input<string>;
    readonly imagePullPolicy: string;
    /** Pull Secret in the namespace (imageLoader=registry with credentials). */
    readonly imagePullSecret?: pulumi.Input<string>;
    /** Claim of the shared data volume. */
    readonly dataClaim: pulumi.Input<string>;
    /** The storage key (part of the claim's name, so part of the Job's pod template and name). */
    readonly storageKey?: string;
    /** MLFLOW_TRACKING_URI. */
    readonly trackingUri: pulumi.Input<string>;
    /** The runs, launched in parallel. */
    readonly runs: readonly TrainingRun[];
    /** PROMOTION_POLICY of the trainer. */
    readonly promotionPolicy: PromotionPolicy;
    /** Shell prefix running kubectl against the cluster. */
    readonly kubectl: string;
    /** Minutes to wait for each Job. */
    readonly timeoutMinutes: number;
    /** nvidia.com/gpu limit of each training pod; 0 or undefined: none. */
    readonly gpus?: number;
    /** runtimeClassName of the pods when `gpus` > 0; empty: the node's default runtime. */
    readonly gpuRuntimeClass?: string;
    /** Requests and limits of the trainer's container. */
    readonly resources: ContainerResources;
    /** Env that logs the trainer in to MLflow (MLFLOW_TRACKING_USERNAME/PASSWORD from the auth Secret); empty without auth. */
    readonly trackingAuthEnv?: k8s.types.input.core.v1.EnvVar[];
}

/** The GPU resource name of NVIDIA's device plugin. */
export const GPU_RESOURCE = "nvidia.com/gpu";

/**
 * What a GPU run adds to the pod: the device plugin's resource as a limit (Kubernetes sets the
 * request equal), the runtime class of NVIDIA's container runtime, and a toleration of the taint GPU
 * nodes usually carry (nvidia.com/gpu:NoSchedule), so the run lands on a GPU node and only there.
 */
export function gpuPodSettings(gpus: number, runtimeClass: string): {
    limits: Record<string, string>;
    pod: { runtimeClassName?: string; tolerations?: k8s.types.input.core.v1.Toleration[] };
} {
    if (gpus <= 0) {
        return { limits: {}, pod: {} };
    }
    return {
        limits: { [GPU_RESOURCE]: String(gpus) },
        pod: {
            ...(runtimeClass === "" ? {} : { runtimeClassName: runtimeClass }),
            tolerations: [{ key: GPU_RESOURCE, operator: "Exists", effect: "NoSchedule" }],
        },
    };
}

/** The trainer's command line (docs/interfaces.md). */
export function trainerCommand(run: TrainingRun): string[] {
    return [
        "python", "-m", "trainer",
        "--n-estimators", String(run.nEstimators),
        "--max-depth", String(run.maxDepth),
        "--run-name", run.runName,
    ];
}

/**
 * What, beside the run's parameters, image and promotion policy, shapes a Job's (immutable) pod
 * template: part of the Job's name, so that changing it gives a new Job instead of replacing one
 * under the same name.
 */
export function templateKey(args: TrainingRunsArgs): string {
    const extra = {
        resources: args.resources,
        gpus: args.gpus ?? 0,
        gpuRuntimeClass: (args.gpus ?? 0) > 0 ? (args.gpuRuntimeClass ?? "") : "",
        auth: (args.trackingAuthEnv ?? []).length > 0,
        pullSecret: args.imagePullSecret !== undefined,
        storage: args.storageKey ?? "",
    };
    return JSON.stringify(extra);
}

/**
 * The Job's readiness as Pulumi awaits it: created (its uid is set). Completion is awaited by the wait
 * command below, which reports failures better; unlike `pulumi.com/skipAwait`, this still makes
 * Pulumi wait until a deleted Job is gone before a Job of the same name is created again.
 */
export const JOB_WAIT_FOR = "jsonpath={.metadata.uid}";

/**
 * Where the trainer writes its result (TRAINER_RESULT_FILE): the container's termination message,
 * which Kubernetes keeps in the pod's status (no log retention involved) and the wait reads.
 */
export const TERMINATION_LOG = "/dev/termination-log";
/** The prefix of the wait's stdout line that carries the run's result (JSON), parsed into the stack outputs. */
export const RESULT_PREFIX = "ops-demo-result: ";

/** The result of one run, as the trainer wrote it (status, run_name, accuracy, f1_macro, run_id, run_url, version, promoted, ...). */
export type RunResult = Record<string, unknown>;

/** `url` with its scheme, host and port replaced by those of `base` (the in-cluster MLflow link -> the one the user opens). */
export function rebaseUrl(url: unknown, base: string): string | undefined {
    if (typeof url !== "string" || !/^https?:\/\//.test(url)) {
        return undefined;
    }
    const u = new URL(url);
    return `${base.replace(/\/+$/, "")}${u.pathname}${u.search}${u.hash}`;
}

/** The result line of a wait's stdout; when absent or unreadable, what is known (`fallback`) with status "unknown". */
export function parseRunResult(stdout: string, fallback: RunResult): RunResult {
    const line = stdout.split("\n").find((l) => l.startsWith(RESULT_PREFIX));
    if (line !== undefined) {
        try {
            const parsed = JSON.parse(line.slice(RESULT_PREFIX.length));
            if (parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)) {
                return { ...fallback, ...parsed };
            }
        } catch {
            // a message that is not JSON: keep the fallback
        }
    }
    return { ...fallback, status: "unknown" };
}

/** The Job of one run. */
export function trainingJob(run: TrainingRun, name: string, args: TrainingRunsArgs): k8s.batch.v1.JobArgs {
    const podLabels = {
        ...COMMON_LABELS,
        app: TRAINING_APP,
        "ops-demo/run": labelValue(run.runName) || "run",
        "ops-demo/run-hash": runHash(run, args.imageRef, args.promotionPolicy, templateKey(args)),
    };
    const gpu = gpuPodSettings(args.gpus ?? 0, args.gpuRuntimeClass ?? "");
    return {
        metadata: {
            name,
            namespace: args.namespace,
            labels: podLabels,
            annotations: {
                "pulumi.com/waitFor": JOB_WAIT_FOR,
                "ops-demo/run-name": run.runName,
                "ops-demo/n-estimators": String(run.nEstimators),
                "ops-demo/max-depth": String(run.maxDepth),
            },
        },
        spec: {
            backoffLimit: 1,
            activeDeadlineSeconds: args.timeoutMinutes * 60,
            template: {
                metadata: { labels: podLabels },
                spec: {
                    restartPolicy: "Never",
                    ...gpu.pod,
                    securityContext: podSecurityContext(),
                    ...(args.imagePullSecret === undefined ? {} : { imagePullSecrets: [{ name: args.imagePullSecret }] }),
                    containers: [
                        {
                            name: "trainer",
                            image: args.image,
                            imagePullPolicy: args.imagePullPolicy,
                            command: trainerCommand(run),
                            env: [
                                { name: "MLFLOW_TRACKING_URI", value: args.trackingUri },
                                { name: "MLFLOW_EXPERIMENT_NAME", value: EXPERIMENT_NAME },
                                { name: "MODELS_DIR", value: "/data/models" },
                                { name: "MODEL_NAME", value: MODEL_NAME },
                                { name: "PROMOTION_POLICY", value: args.promotionPolicy },
                                // the run's result (or the reason it failed) as the container's last words
                                { name: "TRAINER_RESULT_FILE", value: TERMINATION_LOG },
                                ...(args.trackingAuthEnv ?? []),
                            ],
                            terminationMessagePath: TERMINATION_LOG,
                            // a container that died before writing it (OOM kill, crash) leaves its last log lines
                            terminationMessagePolicy: "FallbackToLogsOnError",
                            resources: resourceRequirements(args.resources, gpu.limits),
                            securityContext: containerSecurityContext(),
                            volumeMounts: [{ name: "data", mountPath: "/data" }, TMP_MOUNT],
                        },
                    ],
                    volumes: [{ name: "data", persistentVolumeClaim: { claimName: args.dataClaim } }, TMP_VOLUME],
                },
            },
        },
    };
}

/**
 * Waits (bounded by `timeoutMinutes`) until the Job completes. When it fails or times out it prints
 * what Kubernetes knows, so the reason shows in `pulumi up` without a kubectl session: the Job's
 * conditions (e.g. DeadlineExceeded, BackoffLimitExceeded), the warning events of the Job and its
 * pods (e.g. FailedCreate: a pod the API server refused), each pod's state (waiting reason,
 * exit code, OOMKilled), the last log lines, where to look further and how to run it again.
 */
export function waitScript(kubectl: string, namespace: string, name: string, timeoutMinutes: number, pollSeconds = 5, retry = ""): string {
    const job = `job/${name}`;
    const ns = `-n ${shq(namespace)}`;
    const look = `look at: kubectl logs -n ${namespace} ${job}  (and kubectl describe -n ${namespace} ${job})`;
    const again = retry === "" ? "" : `; to run it again after fixing the cause: ${retry}`;
    return [
        "set -uo pipefail",
        "report() {",
        `  echo "--- job conditions:" >&2`,
        `  ${kubectl} get ${ns} ${shq(job)} -o jsonpath='{range .status.conditions[*]}  {.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true`,
        `  echo "--- warning events of the job and its pods:" >&2`,
        `  ${kubectl} get events ${ns} --field-selector type=Warning --sort-by=.lastTimestamp -o custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message --no-headers 2>/dev/null | grep -F ${shq(name)} | tail -n 10 | sed 's/^/  /' >&2 || true`,
        `  echo "--- pods:" >&2`,
        `  ${kubectl} get pods ${ns} -l ${shq(`job-name=${name}`)} -o jsonpath='{range .items[*]}  {.metadata.name} {.status.phase}{range .status.containerStatuses[*]} waiting={.state.waiting.reason} terminated={.state.terminated.reason} exit={.state.terminated.exitCode}{end}{"\n"}{end}' >&2 || true`,
        `  echo "--- the trainer's last words (termination message):" >&2`,
        `  ${kubectl} get pods ${ns} -l ${shq(`job-name=${name}`)} -o jsonpath='{range .items[*]}  {.status.containerStatuses[0].state.terminated.message}{"\n"}{end}' >&2 || true`,
        `  echo "--- last log lines:" >&2`,
        `  ${kubectl} logs ${ns} ${shq(job)} --tail=20 >&2 2>&1 || echo "  (no logs: no pod of the job ran)" >&2`,
        "}",
        `deadline=$((SECONDS + ${Math.round(timeoutMinutes * 60)}))`,
        "while true; do",
        `  state=$(${kubectl} get ${ns} ${shq(job)} -o jsonpath='{range .status.conditions[*]}{.type}={.status}{" "}{end}' 2>&1) || state="unreachable: $state"`,
        `  case "$state" in`,
        `    *Complete=True*)`,
        `      echo "training run ${name} completed"`,
        `      result=$(${kubectl} get pods ${ns} -l ${shq(`job-name=${name}`)} --field-selector=status.phase=Succeeded -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}' 2>/dev/null | tr -d '\n')`,
        `      case "$result" in "{"*) echo "${RESULT_PREFIX}$result" ;; *) echo "(no result message from the trainer)" ;; esac`,
        "      exit 0 ;;",
        `    *Failed=True*)`,
        `      echo "training run ${name} failed; ${look}${again}" >&2`,
        "      report",
        "      exit 1 ;;",
        "  esac",
        "  if (( SECONDS >= deadline )); then",
        `    echo "training run ${name} did not finish within ${timeoutMinutes} minutes (last state: $state); ${look}${again}" >&2`,
        "    report",
        "    exit 1",
        "  fi",
        `  sleep ${pollSeconds}`,
        "done",
    ].join("\n");
}

export class TrainingRuns extends pulumi.ComponentResource {
    /** The Job names, in the order of the runs. */
    readonly jobNames: string[];
    /** One wait per Job: whatever needs a trained model depends on these. */
    readonly waits: command.local.Command[];
    /** Each run's result as the trainer reported it (the stack output trainingRuns). */
    readonly results: pulumi.Output<RunResult>[];

    constructor(name: string, args: TrainingRunsArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:training:TrainingRuns", name, {}, opts);
        this.jobNames = [];
        this.waits = [];
        this.results = [];
        for (const run of args.runs) {
            const jn = jobName(run, args.imageRef, args.promotionPolicy, templateKey(args));
            // A Job's pod template is immutable and its name is fixed: replace it by delete-then-create.
            const job = new k8s.batch.v1.Job(`${name}-${jn}`, trainingJob(run, jn, args), { parent: this, deleteBeforeReplace: true });
            const wait = new command.local.Command(
                `${name}-${jn}-wait`,
                {
                    create: job.urn.apply((urn) =>
                        waitScript(args.kubectl, TRAINING_NAMESPACE, jn, args.timeoutMinutes, 5, `pulumi up --replace ${shq(urn)}`),
                    ),
                    interpreter: BASH,
                    // the uid: a Job replaced under the same name (pulumi up --replace) is waited for again
                    triggers: [job.metadata.uid],
                },
                { parent: this, dependsOn: [job] },
            );
            this.jobNames.push(jn);
            this.waits.push(wait);
            this.results.push(
                wait.stdout.apply((out) =>
                    parseRunResult(out ?? "", { job: jn, run_name: run.runName, n_estimators: run.nEstimators, max_depth: run.maxDepth }),
                ),
            );
        }
        this.registerOutputs({ jobNames: this.jobNames });
    }
}
