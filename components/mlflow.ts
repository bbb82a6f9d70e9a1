/** The MLflow tracking server: Deployment `mlflow-server` + Service `mlflow-service:5000` in mlops-training. */
import * as crypto from "crypto";
import * as command from "@pulumi/command";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS, containerSecurityContext, podSecurityContext, prometheusAnnotations, resourceRequirements, TMP_MOUNT, TMP_VOLUME } from "./common";
import { ContainerResources, MlflowAuthConfig } from "./config";
import { TRAINING_NAMESPACE } from "./namespaces";
import { BASH, shq } from "./shell";

/**
 * Waits (bounded) until every MLflow pod of the Deployment's current revision is ready. The
 * kubernetes provider's Deployment await reported a Recreate update done while the old pod was gone
 * and the new one still starting ("Replicas scaled to 0"); the training Jobs start only after this.
 */
export function rolloutWaitScript(kubectl: string, namespace: string, deployment: string, timeoutSeconds: number): string {
    return [
        "set -uo pipefail",
        `if ! ${kubectl} rollout status -n ${shq(namespace)} deployment/${shq(deployment)} --timeout=${timeoutSeconds}s; then`,
        `  echo "MLflow (deployment/${deployment}) did not become ready within ${timeoutSeconds}s; look at: kubectl describe -n ${namespace} deployment/${deployment}; kubectl logs -n ${namespace} deployment/${deployment}" >&2`,
        `  ${kubectl} get pods -n ${shq(namespace)} -l app=${MLFLOW_DEPLOYMENT} >&2 || true`,
        "  exit 1",
        "fi",
    ].join("\n");
}

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

/** Kubernetes Secret with the MLflow credentials (keys AUTH_KEYS) when basic auth is on. */
export const MLFLOW_AUTH_SECRET = "mlflow-auth";
/** ConfigMap with basic_auth.ini (no secrets in it: the admin credentials come from the Secret's env). */
export const MLFLOW_AUTH_CONFIGMAP = "mlflow-auth-config";
export const MLFLOW_AUTH_DIR = "/etc/mlflow-auth";
export const MLFLOW_AUTH_INI = "basic_auth.ini";
/** The auth app's own user database, beside the tracking store on the shared volume. */
export const MLFLOW_AUTH_DB = "sqlite:////data/mlflow/basic_auth.db";
export const AUTH_KEYS = { username: "username", password: "password", flaskSecretKey: "flask-secret-key" } as const;

/**
 * basic_auth.ini of MLflow's basic-auth app (MLFLOW_AUTH_CONFIG_PATH): its user database on /data
 * (the image's working directory is read-only), READ for users other than the admin.
 */
export function mlflowAuthIni(): string {
    return [
        "[mlflow]",
        "default_permission = READ",
        `database_uri = ${MLFLOW_AUTH_DB}`,
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ].join("\n");
}

/**
 * Flask's secret key of the auth app (CSRF protection; MLflow refuses to start without one), derived
 * from the password: as secret as the password, stable across updates, no extra config key.
 */
export function flaskSecretKey(password: string): string {
    return crypto.createHmac("sha256", password).update("ops-demo mlflow flask secret key").digest("hex");
}

/**
 * A fingerprint of the credentials for the pod template: a new password changes it, which rolls the
 * server so the init container writes the new password into the user database (MLflow itself only
 * uses the configured password to create the admin once). scrypt, salted and truncated: the
 * annotation reveals nothing practical about the password.
 */
export function credentialsFingerprint(username: string, password: string): string {
    return crypto.scryptSync(`${username}:${password}`, "ops-demo-mlflow-auth", 12).toString("hex");
}

/** The env of the server and of its init container: config path, admin credentials, Flask secret key. */
export function mlflowAuthEnv(): k8s.types.input.core.v1.EnvVar[] {
    const fromSecret = (name: string, key: string) => ({ name, valueFrom: { secretKeyRef: { name: MLFLOW_AUTH_SECRET, key } } });
    return [
        { name: "MLFLOW_AUTH_CONFIG_PATH", value: `${MLFLOW_AUTH_DIR}/${MLFLOW_AUTH_INI}` },
        fromSecret("MLFLOW_AUTH_ADMIN_USERNAME", AUTH_KEYS.username),
        fromSecret("MLFLOW_AUTH_ADMIN_PASSWORD", AUTH_KEYS.password),
        fromSecret("MLFLOW_FLASK_SERVER_SECRET_KEY", AUTH_KEYS.flaskSecretKey),
    ];
}

/** The env a client (training Job) needs to log in: MLflow's client reads these two variables. */
export function trackingAuthEnv(): k8s.types.input.core.v1.EnvVar[] {
    return [
        { name: "MLFLOW_TRACKING_USERNAME", valueFrom: { secretKeyRef: { name: MLFLOW_AUTH_SECRET, key: AUTH_KEYS.username } } },
        { name: "MLFLOW_TRACKING_PASSWORD", valueFrom: { secretKeyRef: { name: MLFLOW_AUTH_SECRET, key: AUTH_KEYS.password } } },
    ];
}

/**
 * The init container's script: creates the admin user in the auth database, or sets its password
 * (and admin flag) to the configured one, so a changed mlflowPassword takes effect on the next rollout.
 */
export const SYNC_ADMIN_SCRIPT = [
    "from mlflow.server.auth.config import read_auth_config",
    "from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore",
    "c = read_auth_config()",
    "s = SqlAlchemyStore()",
    "s.init_db(c.database_uri)",
    "if s.has_user(c.admin_username):",
    "    s.update_user(c.admin_username, password=c.admin_password, is_admin=True)",
    "    print(f'mlflow auth: admin user {c.admin_username} updated')",
    "else:",
    "    s.create_user(c.admin_username, c.admin_password, is_admin=True)",
    "    print(f'mlflow auth: admin user {c.admin_username} created')",
].join("\n");

/**
 * The server's command (docs/interfaces.md). With an external backend store the URI is not on the
 * command line (it holds a password): the server reads it from MLFLOW_BACKEND_STORE_URI, which
 * comes from a Secret. With `auth`, MLflow's basic-auth app.
 */
export function mlflowCommand(externalBackend = false, metrics = false, auth = false): string[] {
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
        ...(auth ? ["--app-name", "basic-auth"] : []),
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
    /** Requests and limits of the server's container (the init container of auth gets the same). */
    readonly resources: ContainerResources;
    /** Basic auth (`--app-name basic-auth`); undefined: open server. */
    readonly auth?: MlflowAuthConfig;
    /** Shell prefix running kubectl against the cluster: when set, a command waits for the rollout (`ready`). */
    readonly kubectl?: string;
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
    const auth = args.auth;
    const mounts = [{ name: "data", mountPath: "/data" }, TMP_MOUNT, ...(auth ? [{ name: "auth-config", mountPath: MLFLOW_AUTH_DIR, readOnly: true }] : [])];
    const volumes = [
        { name: "data", persistentVolumeClaim: { claimName: args.dataClaim } },
        TMP_VOLUME,
        ...(auth ? [{ name: "auth-config", configMap: { name: MLFLOW_AUTH_CONFIGMAP } }] : []),
    ];
    const env = [
        // MLflow 3.x otherwise starts a job runner (7 huey consumers, ~230 MiB
        // each) and the pod is OOM-killed at its limit (docs/interfaces.md).
        { name: "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", value: "false" },
        ...(metrics ? [{ name: POD_IP_ENV, valueFrom: { fieldRef: { fieldPath: "status.podIP" } } }] : []),
        ...(external ? [{ name: BACKEND_ENV, valueFrom: { secretKeyRef: { name: args.backendSecret!, key: "uri" } } }] : []),
        ...(auth ? mlflowAuthEnv() : []),
    ];
    const common = {
        image: args.image,
        imagePullPolicy: args.imagePullPolicy,
        resources: resourceRequirements(args.resources),
        securityContext: containerSecurityContext(),
        volumeMounts: mounts,
    };
    const annotations = {
        ...(metrics ? prometheusAnnotations(MLFLOW_PORT, "/metrics") : {}),
        ...(auth ? { "ops-demo/mlflow-auth": pulumi.unsecret(auth.password.apply((p) => credentialsFingerprint(auth.username, p))) } : {}),
    };
    return {
        metadata: { name: MLFLOW_DEPLOYMENT, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
        spec: {
            replicas: 1,
            strategy: external ? { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } } : { type: "Recreate" },
            selector: { matchLabels: labels },
            template: {
                metadata: {
                    labels: { ...COMMON_LABELS, ...labels },
                    ...(Object.keys(annotations).length > 0 ? { annotations } : {}),
                },
                spec: {
                    securityContext: podSecurityContext(),
                    ...(args.imagePullSecret === undefined ? {} : { imagePullSecrets: [{ name: args.imagePullSecret }] }),
                    ...(auth ? { initContainers: [{ name: "auth-admin", ...common, command: ["python", "-c", SYNC_ADMIN_SCRIPT], env }] } : {}),
                    containers: [
                        {
                            name: "mlflow",
                            ...common,
                            command: mlflowCommand(external, metrics, auth !== undefined),
                            env,
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
                        },
                    ],
                    volumes,
                },
            },
        },
    };
}

/** The credentials' Secret: stringData from the Pulumi secret, so it stays encrypted in the state. */
export function mlflowAuthSecret(namespace: pulumi.Input<string>, auth: MlflowAuthConfig): k8s.core.v1.SecretArgs {
    return {
        metadata: { name: MLFLOW_AUTH_SECRET, namespace, labels: { ...COMMON_LABELS, ...labels } },
        type: "Opaque",
        stringData: {
            [AUTH_KEYS.username]: auth.username,
            [AUTH_KEYS.password]: auth.password,
            [AUTH_KEYS.flaskSecretKey]: pulumi.secret(auth.password.apply(flaskSecretKey)),
        },
    };
}

export class MlflowServer extends pulumi.ComponentResource {
    readonly deployment: k8s.apps.v1.Deployment;
    readonly service: k8s.core.v1.Service;
    /** In-cluster URI for MLFLOW_TRACKING_URI, built from the Service's name and namespace. */
    readonly trackingUri: pulumi.Output<string>;
    /** Name of the Secret with the credentials when basic auth is on (the training Jobs read it). */
    readonly authSecret?: string;
    /** Done when the server's current revision is ready (what training waits for); undefined without `kubectl`. */
    readonly ready?: command.local.Command;

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
        const authObjects: pulumi.Resource[] = [];
        if (args.auth !== undefined) {
            authObjects.push(
                new k8s.core.v1.Secret(`${name}-auth`, mlflowAuthSecret(args.namespace, args.auth), { parent: this }),
                new k8s.core.v1.ConfigMap(
                    `${name}-auth-config`,
                    {
                        metadata: { name: MLFLOW_AUTH_CONFIGMAP, namespace: args.namespace, labels: { ...COMMON_LABELS, ...labels } },
                        data: { [MLFLOW_AUTH_INI]: mlflowAuthIni() },
                    },
                    { parent: this },
                ),
            );
        }
        this.authSecret = args.auth !== undefined ? MLFLOW_AUTH_SECRET : undefined;
        this.deployment = new k8s.apps.v1.Deployment(`${name}-deployment`, mlflowDeployment({ ...args, backendSecret }), {
            parent: this,
            dependsOn: authObjects,
        });
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
        if (args.kubectl !== undefined) {
            this.ready = new command.local.Command(
                `${name}-ready`,
                {
                    create: rolloutWaitScript(args.kubectl, TRAINING_NAMESPACE, MLFLOW_DEPLOYMENT, 600),
                    interpreter: BASH,
                    // the generation changes with every change of the Deployment's spec, and only then
                    triggers: [this.deployment.metadata.generation],
                },
                { parent: this, dependsOn: [this.deployment, this.service] },
            );
        }
        this.registerOutputs({ trackingUri: this.trackingUri });
    }
}
