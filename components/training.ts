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
                                ...(args.trackingAuthEnv ?? []),
                            ],
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
        `  echo "--- last log lines:" >&2`,
        `  ${kubectl} logs ${ns} ${shq(job)} --tail=20 >&2 2>&1 || echo "  (no logs: no pod of the job ran)" >&2`,
        "}",
        `deadline=$((SECONDS + ${Math.round(timeoutMinutes * 60)}))`,
        "while true; do",
        `  state=$(${kubectl} get ${ns} ${shq(job)} -o jsonpath='{range .status.conditions[*]}{.type}={.status}{" "}{end}' 2>&1) || state="unreachable: $state"`,
        `  case "$state" in`,
        `    *Complete=True*) echo "training run ${name} completed"; exit 0 ;;`,
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

    constructor(name: string, args: TrainingRunsArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:training:TrainingRuns", name, {}, opts);
        this.jobNames = [];
        this.waits = [];
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
        }
        this.registerOutputs({ jobNames: this.jobNames });
    }
}
