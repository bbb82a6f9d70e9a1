/**
 * NetworkPolicies: everything is denied in both namespaces (ingress and egress), then exactly what
 * the environment needs is allowed:
 *   - anyone -> iris-serving pods on the serving port (the public API: LoadBalancer/servicelb, port-forward, scrapes)
 *   - training Job pods (app=iris-training) -> MLflow pods on 5000, and MLflow accepts them
 *   - training Job pods -> cluster DNS (kube-system, k8s-app=kube-dns) on UDP/TCP 53
 * Nothing else reaches MLflow, except, when `mlflowFromAnywhere` is set (the dev stack publishes
 * MLflow on the host through a NodePort), any source on MLflow's port, and with `mlflowMetrics`
 * pods of any namespace (Prometheus) on 5000. With an external backend store (PostgreSQL) MLflow
 * may connect to its port and resolve names.
 * `kubectl port-forward` and `kubectl logs/exec` go through the kubelet and the container runtime,
 * not through the pod network: NetworkPolicies do not apply to them.
 */
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS } from "./common";
import { MLFLOW_DEPLOYMENT, MLFLOW_PORT } from "./mlflow";
import { SERVING_DEPLOYMENT, SERVING_PORT } from "./serving";
import { TRAINING_APP } from "./training";

type Policy = k8s.networking.v1.NetworkPolicyArgs;
type PolicySpec = k8s.types.input.networking.v1.NetworkPolicySpec;

/** Where the cluster DNS runs (CoreDNS in k3s and kubeadm clusters carries this label). */
export const DNS_PEER = {
    namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } },
    podSelector: { matchLabels: { "k8s-app": "kube-dns" } },
};
export const DNS_PORTS = [
    { protocol: "UDP", port: 53 },
    { protocol: "TCP", port: 53 },
];

/** The pods (by their `app` label) that resolve cluster DNS names: the trainer looks up mlflow-service. */
export const DNS_CLIENTS = [TRAINING_APP] as const;

/** The TCP port of a postgresql:// URI (5432 when it names none). */
export function postgresPort(uri: string): number {
    const port = new URL(uri.replace(/^postgresql\+psycopg:/, "postgresql:")).port;
    return port === "" ? 5432 : Number(port);
}

export interface NetworkPoliciesArgs {
    /** mlops-training. */
    readonly trainingNamespace: pulumi.Input<string>;
    /** mlops-serving. */
    readonly servingNamespace: pulumi.Input<string>;
    /** Also admit any source on MLflow's port (the dev stack's NodePort that publishes MLflow on 127.0.0.1). */
    readonly mlflowFromAnywhere: boolean;
    /** MLflow exposes /metrics: admit pods of every namespace (Prometheus, wherever it runs) on 5000. */
    readonly mlflowMetrics?: boolean;
    /** TCP port of MLflow's external backend store (PostgreSQL); undefined: SQLite on the volume, no egress. */
    readonly mlflowBackendPort?: number;
}

const policy = (name: string, namespace: pulumi.Input<string>, spec: PolicySpec): Policy => ({
    metadata: { name, namespace, labels: { ...COMMON_LABELS } },
    spec,
});

/** Selects nothing in, nothing out, for every pod of the namespace: the baseline the allow rules open up. */
export function defaultDeny(namespace: pulumi.Input<string>): Policy {
    return policy("default-deny", namespace, { podSelector: {}, policyTypes: ["Ingress", "Egress"] });
}

/** DNS lookups (UDP and TCP 53) to the cluster DNS, for the pods (by `app`) that resolve names. */
export function allowDns(namespace: pulumi.Input<string>, clients: readonly string[] = DNS_CLIENTS): Policy {
    return policy("allow-dns-egress", namespace, {
        podSelector: { matchExpressions: [{ key: "app", operator: "In", values: [...clients] }] },
        policyTypes: ["Egress"],
        egress: [{ to: [DNS_PEER], ports: DNS_PORTS }],
    });
}

/**
 * MLflow accepts the training Job pods on 5000; with `fromAnywhere` anyone on 5000; with `metrics`
 * pods of every namespace on 5000 (the scrape of /metrics shares the API's port).
 */
export function mlflowIngress(namespace: pulumi.Input<string>, fromAnywhere: boolean, metrics = false): Policy {
    const ports = [{ protocol: "TCP", port: MLFLOW_PORT }];
    return policy(`${MLFLOW_DEPLOYMENT}-ingress`, namespace, {
        podSelector: { matchLabels: { app: MLFLOW_DEPLOYMENT } },
        policyTypes: ["Ingress"],
        ingress: [
            { from: [{ podSelector: { matchLabels: { app: TRAINING_APP } } }], ports },
            ...(metrics ? [{ from: [{ namespaceSelector: {} }], ports }] : []),
            ...(fromAnywhere ? [{ ports }] : []),
        ],
    });
}

/** MLflow connects to its PostgreSQL backend store (any address: the database may live outside the cluster). */
export function mlflowEgress(namespace: pulumi.Input<string>, backendPort: number): Policy {
    return policy(`${MLFLOW_DEPLOYMENT}-egress`, namespace, {
        podSelector: { matchLabels: { app: MLFLOW_DEPLOYMENT } },
        policyTypes: ["Egress"],
        egress: [{ ports: [{ protocol: "TCP", port: backendPort }] }],
    });
}

/** Training Job pods may open connections to the MLflow pods on 5000 and nowhere else (DNS aside). */
export function trainingEgress(namespace: pulumi.Input<string>): Policy {
    return policy(`${TRAINING_APP}-egress`, namespace, {
        podSelector: { matchLabels: { app: TRAINING_APP } },
        policyTypes: ["Egress"],
        egress: [{ to: [{ podSelector: { matchLabels: { app: MLFLOW_DEPLOYMENT } } }], ports: [{ protocol: "TCP", port: MLFLOW_PORT }] }],
    });
}

/** The serving port is the public API: open to every source (LoadBalancer traffic arrives from the node or the client). */
export function servingIngress(namespace: pulumi.Input<string>): Policy {
    return policy(`${SERVING_DEPLOYMENT}-ingress`, namespace, {
        podSelector: { matchLabels: { app: SERVING_DEPLOYMENT } },
        policyTypes: ["Ingress"],
        ingress: [{ ports: [{ protocol: "TCP", port: SERVING_PORT }] }],
    });
}

export class NetworkPolicies extends pulumi.ComponentResource {
    /** Names of the policies, per namespace role. */
    readonly names: { training: string[]; serving: string[] };

    constructor(name: string, args: NetworkPoliciesArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:k8s:NetworkPolicies", name, {}, opts);
        const declare = (suffix: string, p: Policy) => new k8s.networking.v1.NetworkPolicy(`${name}-${suffix}`, p, { parent: this });
        const backend = args.mlflowBackendPort;
        const dnsClients = backend === undefined ? [...DNS_CLIENTS] : [...DNS_CLIENTS, MLFLOW_DEPLOYMENT];
        const training: [string, Policy][] = [
            ["training-default-deny", defaultDeny(args.trainingNamespace)],
            ["training-dns", allowDns(args.trainingNamespace, dnsClients)],
            ["mlflow-ingress", mlflowIngress(args.trainingNamespace, args.mlflowFromAnywhere, args.mlflowMetrics === true)],
            ["training-egress", trainingEgress(args.trainingNamespace)],
            ...(backend === undefined ? [] : ([["mlflow-egress", mlflowEgress(args.trainingNamespace, backend)]] as [string, Policy][])),
        ];
        const serving: [string, Policy][] = [
            ["serving-default-deny", defaultDeny(args.servingNamespace)],
            ["serving-ingress", servingIngress(args.servingNamespace)],
        ];
        for (const [suffix, p] of [...training, ...serving]) {
            declare(suffix, p);
        }
        const names = (ps: [string, Policy][]) => ps.map(([, p]) => String((p.metadata as { name: string }).name));
        this.names = { training: names(training), serving: names(serving) };
        this.registerOutputs({ training: this.names.training, serving: this.names.serving });
    }
}
