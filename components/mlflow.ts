/** The MLflow tracking server: Deployment `mlflow-server` + Service `mlflow-service:5000` in mlops-training. */
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS, containerSecurityContext, podSecurityContext, prometheusAnnotations, TMP_MOUNT, TMP_VOLUME } from "./common";
import { TRAINING_NAMESPACE } from "./namespaces";

export const MLFLOW_DEPLOYMENT = "mlflow-server";
export const MLFLOW_SERVICE = "mlflow-service";
export const MLFLOW_NODEPORT_SERVICE = "mlflow-nodeport";
export const MLFLOW_PORT = 5000;
/** In-cluster tracking URI (cross-namespace DNS, as the guide's troubleshooting says). */
export const TRACKING_URI = `http://${MLFLOW_SERVICE}.${TRAINING_NAMESPACE}.svc.cluster.local:${MLFLOW_PORT}`;

/** The pod's IP as a variable of the container (Kubernetes expands `$(POD_IP)` in the command). */
export const POD_IP_ENV = "POD_IP";
/** Where the Prometheus exporter keeps its multiprocess files: on the writable /tmp emptyDir. */
export const METRICS_DIR = "/tmp/mlflow-metrics";

/**
 * Host headers the server accepts (docs/interfaces.md): the Service's DNS names and loopback
 * (port-forward); with metrics also the pod's own `<IP>:5000`, the Host a Prometheus scrape sends.
 */
export function mlflowAllowedHosts(metrics = false): string {
    const fqdn = `${MLFLOW_SERVICE}.${TRAINING_NAMESPACE}`;
    return [
        `${fqdn}.svc.cluster.local:${MLFLOW_PORT}`,
        `${fqdn}.svc.cluster.local`,
        `${fqdn}.svc:${MLFLOW_PORT}`,
        `${fqdn}:${MLFLOW_PORT}`,
        `${MLFLOW_SERVICE}:${MLFLOW_PORT}`,
        "localhost:*",
        "127.0.0.1:*",
        "localhost",
        "127.0.0.1",
        ...(metrics ? [`$(${POD_IP_ENV}):${MLFLOW_PORT}`] : []),
    ].join(",");
}

/** Secret holding the PostgreSQL backend URI (key `uri`), when there is one. */
export const BACKEND_SECRET = "mlflow-backend";
/** The server reads its backend store from this variable when the flag is absent (MLflow's CLI, click envvar). */
export const BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI";

/**
 * The server's command (docs/interfaces.md). With an external backend store the URI is not on the
 * command line (it holds a password): the server reads it from MLFLOW_BACKEND_STORE_URI, which
 * comes from a Secret.
 */
export function mlflowCommand(externalBackend = false, metrics = false): string[] {
    return [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        String(MLFLOW_PORT),
        "--workers",
        "1",
        ...(externalBackend ? [] : ["--backend-store-uri", "sqlite:////data/mlflow/mlflow.db"]),
        "--artifacts-destination",
        "/data/mlflow/artifacts",
        "--serve-artifacts",
        "--allowed-hosts",
        mlflowAllowedHosts(metrics),
        ...(metrics ? ["--expose-prometheus", METRICS_DIR] : []),
    ];
}

export interface MlflowServerArgs {
    /** mlops-training. */
    readonly namespace: pulumi.Input<string>;
    /** The training image (it also runs the server). */
    readonly image: pulumi.Input<string>;
    readonly imagePullPolicy: string;
    /** Pull Secret in the namespace (imageLoader=registry with credentials). */
    readonly imagePullSecret?: pulumi.Input<string>;
    /** Claim of the shared data volume. */
    readonly dataClaim: pulumi.Input<string>;
    /** When set, also a NodePort Service on this port (the embedded cluster publishes it on the host). */
    readonly nodePort?: number;
    /** PostgreSQL backend store URI (a secret); undefined: SQLite on the data volume. */
    readonly backendUri?: pulumi.Input<string>;
    /** Name of the Secret holding `backendUri` (set by MlflowServer when there is one). */
    readonly backendSecret?: pulumi.Input<string>;
    /** Expose Prometheus metrics on /metrics (mlflow server --expose-prometheus) and annotate the pod for scraping. */
    readonly metrics?: boolean;
}

const labels = { app: MLFLOW_DEPLOYMENT };

/**
 * Deployment of one pod. On SQLite, Recreate: never two servers on one SQLite file, not even during a
 * rollout. On PostgreSQL the database arbitrates concurrent servers, so a rollout starts the new
 * pod before stopping the old one (RollingUpdate, maxUnavailable 0): no gap in tracking.
 */
export function mlflowDeployment(args: MlflowServerArgs): k8s.apps.v1.DeploymentArgs {
    const external = args.backendSecret !== undefined;
    const metrics = args.metrics === true;
    return {
        metadata: { name: MLFLOW_DEPLOYMENT, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
        spec: {
            replicas: 1,
            strategy: external ? { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } } : { type: "Recreate" },
            selector: { matchLabels: labels },
            template: {
                metadata: {
                    labels: { ...COMMON_LABELS, ...labels },
                    ...(metrics ? { annotations: prometheusAnnotations(MLFLOW_PORT, "/metrics") } : {}),
                },
                spec: {
                    securityContext: podSecurityContext(),
                    ...(args.imagePullSecret === undefined ? {} : { imagePullSecrets: [{ name: args.imagePullSecret }] }),
                    containers: [
                        {
                            name: "mlflow",
                            image: args.image,
                            imagePullPolicy: args.imagePullPolicy,
                            command: mlflowCommand(external, metrics),
                            // MLflow 3.x otherwise starts a job runner (7 huey consumers, ~230 MiB
                            // each) and the pod is OOM-killed at its limit (docs/interfaces.md).
                            env: [
                                { name: "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", value: "false" },
                                ...(metrics ? [{ name: POD_IP_ENV, valueFrom: { fieldRef: { fieldPath: "status.podIP" } } }] : []),
                                ...(external ? [{ name: BACKEND_ENV, valueFrom: { secretKeyRef: { name: args.backendSecret!, key: "uri" } } }] : []),
                            ],
                            ports: [{ name: "http", containerPort: MLFLOW_PORT }],
                            readinessProbe: {
                                httpGet: { path: "/health", port: MLFLOW_PORT },
                                periodSeconds: 5,
                                timeoutSeconds: 3,
                                failureThreshold: 3,
                            },
                            livenessProbe: {
                                httpGet: { path: "/health", port: MLFLOW_PORT },
                                initialDelaySeconds: 60,
                                periodSeconds: 20,
                                timeoutSeconds: 5,
                                failureThreshold: 6,
                            },
                            resources: {
                                requests: { cpu: "250m", memory: "512Mi" },
                                limits: { cpu: "1", memory: "1536Mi" },
                            },
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

export class MlflowServer extends pulumi.ComponentResource {
    readonly deployment: k8s.apps.v1.Deployment;
    readonly service: k8s.core.v1.Service;
    /** In-cluster URI for MLFLOW_TRACKING_URI, built from the Service's name and namespace. */
    readonly trackingUri: pulumi.Output<string>;

    constructor(name: string, args: MlflowServerArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:mlflow:MlflowServer", name, {}, opts);
        let backendSecret: pulumi.Output<string> | undefined;
        if (args.backendUri !== undefined) {
            backendSecret = new k8s.core.v1.Secret(
                `${name}-backend`,
                {
                    metadata: { name: BACKEND_SECRET, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
                    type: "Opaque",
                    stringData: { uri: pulumi.secret(args.backendUri) },
                },
                { parent: this },
            ).metadata.name;
        }
        this.deployment = new k8s.apps.v1.Deployment(`${name}-deployment`, mlflowDeployment({ ...args, backendSecret }), { parent: this });
        const ports = [{ name: "http", port: MLFLOW_PORT, targetPort: MLFLOW_PORT, protocol: "TCP" }];
        this.service = new k8s.core.v1.Service(
            `${name}-service`,
            {
                metadata: { name: MLFLOW_SERVICE, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
                spec: { type: "ClusterIP", selector: labels, ports },
            },
            { parent: this },
        );
        if (args.nodePort !== undefined) {
            new k8s.core.v1.Service(
                `${name}-nodeport`,
                {
                    metadata: { name: MLFLOW_NODEPORT_SERVICE, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
                    spec: { type: "NodePort", selector: labels, ports: [{ ...ports[0], nodePort: args.nodePort }] },
                },
                { parent: this },
            );
        }
        this.trackingUri = pulumi.interpolate`http://${this.service.metadata.name}.${this.service.metadata.namespace}.svc.cluster.local:${MLFLOW_PORT}`;
        this.registerOutputs({ trackingUri: this.trackingUri });
    }
}
