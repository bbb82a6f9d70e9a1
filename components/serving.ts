/** The serving API: Deployment `iris-serving` + LoadBalancer Service `iris-serving-service` (80 -> 8000) in mlops-serving. */
import * as command from "@pulumi/command";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import {
    COMMON_LABELS,
    containerSecurityContext,
    podSecurityContext,
    prometheusAnnotations,
    resourceRequirements,
    TMP_MOUNT,
    TMP_VOLUME,
} from "./common";
import { AutoscalingConfig, ContainerResources } from "./config";
import { BASH, shq } from "./shell";

export const SERVING_DEPLOYMENT = "iris-serving";
export const SERVING_SERVICE = "iris-serving-service";
export const SERVING_CONTAINER = "serving";
export const SERVING_PORT = 8000;
export const MODEL_NAME = "iris-classifier";
/**
 * Seconds a terminating pod keeps serving before the server gets SIGTERM (preStop sleep): the time
 * for the endpoint removal to reach kube-proxy/servicelb, so no new connection lands on a closing pod.
 */
export const SERVING_DRAIN_SECONDS = 5;
/** Time from the start of termination to SIGKILL: the drain pause plus uvicorn's graceful shutdown of requests in flight. */
export const SERVING_GRACE_SECONDS = 30;
/** Startup budget: /health gets failureThreshold x periodSeconds (120 s) before the kubelet restarts the container. */
export const SERVING_STARTUP = { periodSeconds: 2, failureThreshold: 60 } as const;
/** Where the serving app exposes Prometheus metrics (images/serving/app/metrics.py). */
export const SERVING_METRICS_PATH = "/metrics";

export interface ServingApiArgs {
    /** mlops-serving. */
    readonly namespace: pulumi.Input<string>;
    /** The serving image. */
    readonly image: pulumi.Input<string>;
    readonly imagePullPolicy: string;
    /** Pull Secret in the namespace (imageLoader=registry with credentials). */
    readonly imagePullSecret?: pulumi.Input<string>;
    /** Claim of the models volume (mounted read-only). */
    readonly modelsClaim: pulumi.Input<string>;
    /** Replicas (ignored when `autoscaling` is set: the HPA owns the count). */
    readonly replicas: number;
    /** When set, a HorizontalPodAutoscaler scales the Deployment and the Deployment declares no replicas. */
    readonly autoscaling?: AutoscalingConfig;
    /** Requests and limits of the serving container. */
    readonly resources: ContainerResources;
    /** Port of the LoadBalancer Service (the guide's 80). */
    readonly servicePort?: number;
    /** Shell prefix running kubectl against the cluster: when set, `pulumi up` reads what serving answers with (`servedModel`). */
    readonly kubectl?: string;
    /** The model version this update promoted ("" when none): the read waits (bounded) until serving answers with it. */
    readonly expectedVersion?: pulumi.Input<string>;
}

/**
 * Waits (bounded: `timeoutSeconds`) for the LoadBalancer's address and prints it; prints nothing, and
 * says why on stderr, when none comes (a default k3s whose Traefik holds the port, kind, kubeadm):
 * `pulumi up` neither blocks on it nor fails, and the stack points at the port-forward instead.
 */
export function loadBalancerScript(kubectl: string, namespace: string, timeoutSeconds = 60): string {
    const get = `${kubectl} get svc -n ${shq(namespace)} ${SERVING_SERVICE} -o jsonpath='{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}'`;
    return [
        "set -uo pipefail",
        `deadline=$((SECONDS + ${timeoutSeconds}))`,
        "while true; do",
        `  address=$(${get} 2>/dev/null)`,
        '  if [ -n "$address" ]; then echo "$address"; exit 0; fi',
        "  if (( SECONDS >= deadline )); then",
        `    echo "${SERVING_SERVICE} got no LoadBalancer address within ${timeoutSeconds}s (on k3s: servicelb needs the port free on the node; Traefik holds 80 on a default install): use the port-forward (pulumi stack output servingPortForward), or see docs/troubleshooting.md" >&2`,
        "    exit 0",
        "  fi",
        "  sleep 2",
        "done",
    ].join("\n");
}

/** The prefix of the served-model read's stdout line carrying serving's GET /model answer (JSON). */
export const SERVED_PREFIX = "ops-demo-serving: ";

/**
 * After the rollout, asks a serving pod (kubectl exec, from inside: no address needed) what it
 * answers with (GET /model), waiting up to `timeoutSeconds` for `expected` (the version this update
 * promoted; serving hot-reloads it from the shared volume within seconds). Never fails the update for
 * a slow reload: it then reports what is served and says so.
 */
export function servedModelScript(kubectl: string, namespace: string, expected: string, timeoutSeconds = 90): string {
    const ns = `-n ${shq(namespace)}`;
    // the pod prints the served version, then the whole answer, on two lines
    const read = `${kubectl} exec ${ns} deploy/${SERVING_DEPLOYMENT} -c ${SERVING_CONTAINER} -- python -c ${shq(
        `import json, urllib.request; m = json.load(urllib.request.urlopen("http://127.0.0.1:${SERVING_PORT}/model", timeout=5)); print(m.get("version", "")); print(json.dumps(m))`,
    )}`;
    return [
        "set -uo pipefail",
        `${kubectl} rollout status ${ns} deployment/${SERVING_DEPLOYMENT} --timeout=600s >&2 || exit 1`,
        `want=${shq(expected)}`,
        `deadline=$((SECONDS + ${timeoutSeconds}))`,
        "while true; do",
        `  answer=$(${read} 2>/dev/null)`,
        `  version=$(printf '%s\n' "$answer" | head -n 1)`,
        `  model=$(printf '%s\n' "$answer" | sed -n 2p)`,
        `  if [ -n "$model" ] && { [ -z "$want" ] || [ "$version" = "$want" ]; }; then echo "${SERVED_PREFIX}$model"; exit 0; fi`,
        "  if (( SECONDS >= deadline )); then",
        `    echo "serving did not answer with version $want within ${timeoutSeconds}s (it answers: \${model:-nothing}); it reloads from the shared volume: kubectl logs -n ${namespace} deployment/${SERVING_DEPLOYMENT}" >&2`,
        `    echo "${SERVED_PREFIX}\${model:-null}"`,
        "    exit 0",
        "  fi",
        "  sleep 2",
        "done",
    ].join("\n");
}

/**
 * The Service's readiness as Pulumi awaits it: created (a cluster IP assigned). Pulumi's default
 * await for a LoadBalancer blocks `pulumi up` for 10 minutes and then fails wherever no address comes
 * (a default k3s whose Traefik holds the port, kind, kubeadm); the Deployment's readiness already
 * proves the pods serve, and the port-forward works without an address. Unlike skipAwait, deletion
 * is still awaited (a same-name replacement needs the old Service gone first).
 */
export const SERVICE_WAIT_FOR = "jsonpath={.spec.clusterIP}";

/** The LoadBalancer Service iris-serving-service: `port` -> the pods' 8000. */
export function servingService(namespace: pulumi.Input<string>, labelsOfService: Record<string, string>, port = 80): k8s.core.v1.ServiceArgs {
    return {
        metadata: {
            name: SERVING_SERVICE,
            namespace,
            labels: labelsOfService,
            annotations: { "pulumi.com/waitFor": SERVICE_WAIT_FOR },
        },
        spec: {
            type: "LoadBalancer",
            selector: labels,
            ports: [{ name: "http", port, targetPort: SERVING_PORT, protocol: "TCP" }],
        },
    };
}

const labels = { app: SERVING_DEPLOYMENT };

/**
 * Rolling updates that never drop below the desired replicas; the model comes from the shared volume.
 * Probes by purpose: startup (/health, up to 120 s for a slow first start, holds the other two
 * back), liveness (/health: the process answers; never depends on the model), readiness (/ready: a
 * model is loaded, so traffic only reaches pods that can answer). On termination the pod first
 * sleeps SERVING_DRAIN_SECONDS (preStop) while the endpoints drop it, then gets SIGTERM and lets
 * requests in flight finish within SERVING_GRACE_SECONDS. Replicas spread over nodes when there
 * are several (ScheduleAnyway: one node still takes them all).
 * With autoscaling, `replicas` is left out: the HPA owns the field (Kubernetes' advice for a
 * Deployment under an HPA). Pulumi applies server-side, so a field it does not send is one it does
 * not fight over; `ignoreChanges` would instead re-send the last declared value on every update.
 */
export function servingDeployment(args: ServingApiArgs): k8s.apps.v1.DeploymentArgs {
    return {
        metadata: { name: SERVING_DEPLOYMENT, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
        spec: {
            ...(args.autoscaling === undefined ? { replicas: args.replicas } : {}),
            strategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
            revisionHistoryLimit: 10,
            selector: { matchLabels: labels },
            template: {
                metadata: {
                    labels: { ...COMMON_LABELS, ...labels },
                    annotations: prometheusAnnotations(SERVING_PORT, SERVING_METRICS_PATH),
                },
                spec: {
                    securityContext: podSecurityContext(),
                    ...(args.imagePullSecret === undefined ? {} : { imagePullSecrets: [{ name: args.imagePullSecret }] }),
                    containers: [
                        {
                            name: SERVING_CONTAINER,
                            image: args.image,
                            imagePullPolicy: args.imagePullPolicy,
                            command: ["python", "-m", "app.serve"],
                            env: [
                                { name: "MODELS_DIR", value: "/models" },
                                { name: "MODEL_NAME", value: MODEL_NAME },
                                { name: "PORT", value: String(SERVING_PORT) },
                                { name: "WORKERS", value: "2" },
                                { name: "RELOAD_INTERVAL_SECONDS", value: "2" },
                                // every worker and pod switches to a new model at published_at + 5 s,
                                // so a client never sees a version and then the one before it
                                { name: "SWAP_DELAY_SECONDS", value: "5" },
                            ],
                            ports: [{ name: "http", containerPort: SERVING_PORT }],
                            startupProbe: {
                                httpGet: { path: "/health", port: SERVING_PORT },
                                periodSeconds: SERVING_STARTUP.periodSeconds,
                                timeoutSeconds: 2,
                                failureThreshold: SERVING_STARTUP.failureThreshold,
                            },
                            livenessProbe: {
                                httpGet: { path: "/health", port: SERVING_PORT },
                                periodSeconds: 10,
                                timeoutSeconds: 3,
                                failureThreshold: 3,
                            },
                            // Probed every second: a new pod starts answering within a second of being
                            // able to (the server is up in 1-3 s); 5 failures in a row (5-15 s) take it
                            // out of the Service, about as before (2 x 5 s).
                            readinessProbe: {
                                httpGet: { path: "/ready", port: SERVING_PORT },
                                periodSeconds: 1,
                                timeoutSeconds: 2,
                                failureThreshold: 5,
                            },
                            // Kubernetes >= 1.30 (sleep action beta, on by default); no shell or sleep binary needed.
                            lifecycle: { preStop: { sleep: { seconds: SERVING_DRAIN_SECONDS } } },
                            resources: resourceRequirements(args.resources),
                            securityContext: containerSecurityContext(),
                            volumeMounts: [{ name: "models", mountPath: "/models", readOnly: true }, TMP_MOUNT],
                        },
                    ],
                    terminationGracePeriodSeconds: SERVING_GRACE_SECONDS,
                    topologySpreadConstraints: [
                        {
                            maxSkew: 1,
                            topologyKey: "kubernetes.io/hostname",
                            whenUnsatisfiable: "ScheduleAnyway",
                            labelSelector: { matchLabels: labels },
                            // spread each ReplicaSet's pods on its own, so a rollout's new pods spread too
                            matchLabelKeys: ["pod-template-hash"],
                        },
                    ],
                    volumes: [{ name: "models", persistentVolumeClaim: { claimName: args.modelsClaim, readOnly: true } }, TMP_VOLUME],
                },
            },
        },
    };
}

/**
 * At most one serving pod evicted at a time (node drains, cluster upgrades). maxUnavailable rather than
 * minAvailable: with a single replica (servingReplicas 1, or an autoscaler at its minimum of 1) a
 * drain still proceeds instead of blocking forever; with two or more, one pod keeps answering.
 * AlwaysAllow lets a drain evict pods that are not ready anyway (no model yet) instead of counting
 * them against the budget and blocking.
 */
export function servingDisruptionBudget(namespace: pulumi.Input<string>): k8s.policy.v1.PodDisruptionBudgetArgs {
    return {
        metadata: { name: SERVING_DEPLOYMENT, namespace, labels: { ...COMMON_LABELS, ...labels } },
        spec: { maxUnavailable: 1, selector: { matchLabels: labels }, unhealthyPodEvictionPolicy: "AlwaysAllow" },
    };
}

/** autoscaling/v2 HPA on average CPU utilization (the guide: 2 to 10 replicas at 70%). */
export function servingAutoscaler(namespace: pulumi.Input<string>, a: AutoscalingConfig): k8s.autoscaling.v2.HorizontalPodAutoscalerArgs {
    return {
        metadata: { name: SERVING_DEPLOYMENT, namespace, labels: { ...COMMON_LABELS, ...labels } },
        spec: {
            scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name: SERVING_DEPLOYMENT },
            minReplicas: a.minReplicas,
            maxReplicas: a.maxReplicas,
            metrics: [
                {
                    type: "Resource",
                    resource: { name: "cpu", target: { type: "Utilization", averageUtilization: a.targetCpuPercent } },
                },
            ],
        },
    };
}

export class ServingApi extends pulumi.ComponentResource {
    readonly deployment: k8s.apps.v1.Deployment;
    /** The HPA, when autoscaling is on. */
    readonly autoscaler?: k8s.autoscaling.v2.HorizontalPodAutoscaler;
    readonly disruptionBudget: k8s.policy.v1.PodDisruptionBudget;
    readonly service: k8s.core.v1.Service;
    /** Labels of the Service (what a ServiceMonitor selects). */
    readonly serviceLabels: Record<string, string> = { ...COMMON_LABELS, ...labels };
    /** What serving answered GET /model with at the end of `pulumi up` (undefined without `kubectl`). */
    readonly servedModel?: pulumi.Output<Record<string, unknown>>;
    /** The LoadBalancer's address when `pulumi up` ended ("" while pending: not awaited, see SERVICE_WAIT_FOR). */
    readonly loadBalancerAddress: pulumi.Output<string>;

    constructor(name: string, args: ServingApiArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:serving:ServingApi", name, {}, opts);
        this.deployment = new k8s.apps.v1.Deployment(`${name}-deployment`, servingDeployment(args), { parent: this });
        this.service = new k8s.core.v1.Service(
            `${name}-service`,
            servingService(args.namespace, this.serviceLabels, args.servicePort),
            { parent: this, dependsOn: [this.deployment] },
        );
        this.disruptionBudget = new k8s.policy.v1.PodDisruptionBudget(`${name}-pdb`, servingDisruptionBudget(args.namespace), {
            parent: this,
        });
        if (args.autoscaling !== undefined) {
            this.autoscaler = new k8s.autoscaling.v2.HorizontalPodAutoscaler(
                `${name}-hpa`,
                servingAutoscaler(args.namespace, args.autoscaling),
                { parent: this, dependsOn: [this.deployment] },
            );
        }
        if (args.kubectl !== undefined) {
            const kubectl = args.kubectl;
            const read = new command.local.Command(
                `${name}-served-model`,
                {
                    create: pulumi.interpolate`${pulumi.output(args.expectedVersion ?? "").apply((v) => servedModelScript(kubectl, "mlops-serving", v))}`,
                    interpreter: BASH,
                    // read again after every rollout and every update that promoted a model
                    triggers: [this.deployment.metadata.generation, args.expectedVersion ?? ""],
                },
                { parent: this, dependsOn: [this.deployment] },
            );
            this.servedModel = read.stdout.apply((out) => {
                const line = (out ?? "").split("\n").find((l) => l.startsWith(SERVED_PREFIX));
                try {
                    return line === undefined ? {} : (JSON.parse(line.slice(SERVED_PREFIX.length)) as Record<string, unknown>);
                } catch {
                    return {};
                }
            });
        }
        if (args.kubectl !== undefined) {
            // the Service is not awaited (SERVICE_WAIT_FOR): its address is read by a bounded wait instead
            const lb = new command.local.Command(
                `${name}-lb-address`,
                {
                    create: loadBalancerScript(args.kubectl, "mlops-serving"),
                    interpreter: BASH,
                    triggers: [this.service.metadata.uid, args.servicePort ?? 80],
                },
                { parent: this, dependsOn: [this.service] },
            );
            this.loadBalancerAddress = lb.stdout.apply((out) => (out ?? "").trim().split("\n").pop() ?? "");
        } else {
            this.loadBalancerAddress = this.service.status.apply((s) => {
                const ingress = s?.loadBalancer?.ingress?.[0];
                return ingress?.ip ?? ingress?.hostname ?? "";
            });
        }
        this.registerOutputs({ loadBalancerAddress: this.loadBalancerAddress });
    }
}
