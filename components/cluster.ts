/**
 * Where the Kubernetes objects go: an existing cluster reached through a kubeconfig (the host's k3s),
 * or a self-contained single-node k3s in a Docker container that the stack creates (like k3d).
 */
import * as command from "@pulumi/command";
import * as docker from "@pulumi/docker";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { asRootFunction, BASH, shq } from "./shell";

/** What the rest of the program needs from a cluster. */
export interface ClusterAccess {
    /** The provider every Kubernetes object uses. */
    readonly provider: k8s.Provider;
    /** Shell prefix that runs kubectl against this cluster (used by the training waits). */
    readonly kubectl: string;
    /** Wraps a shell script so that it runs as root where the storage directory lives. */
    rootShell(script: string): string;
    /** Resources that must exist before anything runs in the cluster. */
    readonly ready: pulumi.Resource[];
    /** Name of the embedded cluster's container, if any. */
    readonly containerName?: string;
    /**
     * Changes when the cluster is replaced by a new one (the embedded container's id; the kubeconfig
     * and context of an existing cluster): host-side steps that fill the cluster (image import,
     * storage preparation) carry it as a trigger, so they run again for a new cluster.
     */
    readonly identity: pulumi.Input<string>;
}

export interface ExistingClusterArgs {
    /** Path of the kubeconfig file. */
    readonly kubeconfig: string;
    /** Context in it; empty = its current context. */
    readonly context: string;
    /** Run root commands on this host as root (itself when root, else `sudo -n`). */
    readonly sudo: boolean;
}

/** An existing cluster (the k3s installed on this host by default). */
export class ExistingCluster extends pulumi.ComponentResource implements ClusterAccess {
    readonly provider: k8s.Provider;
    readonly kubectl: string;
    readonly ready: pulumi.Resource[] = [];
    readonly identity: string;
    private readonly sudo: boolean;

    constructor(name: string, args: ExistingClusterArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:cluster:ExistingCluster", name, {}, opts);
        this.sudo = args.sudo;
        this.provider = new k8s.Provider(
            `${name}-k8s`,
            { kubeconfig: args.kubeconfig, context: args.context === "" ? undefined : args.context },
            { parent: this },
        );
        this.kubectl =
            `kubectl --kubeconfig ${shq(args.kubeconfig)}` + (args.context === "" ? "" : ` --context ${shq(args.context)}`);
        this.identity = `${args.kubeconfig}#${args.context}`;
        this.registerOutputs({ kubeconfig: args.kubeconfig });
    }

    rootShell(script: string): string {
        return `${asRootFunction(this.sudo)}\nas_root /bin/sh -c ${shq(script)}`;
    }
}

export interface EmbeddedClusterArgs {
    /** rancher/k3s image with a pinned tag. */
    readonly k3sImage: string;
    /** Docker container name. */
    readonly containerName: string;
    /** Host port of the Kubernetes API (published on 127.0.0.1). */
    readonly apiPort: number;
    /** Host port for the serving LoadBalancer's port 80. */
    readonly servingHostPort: number;
    /** Host port for MLflow (its NodePort). */
    readonly mlflowHostPort: number;
    /** The NodePort of MLflow inside the cluster. */
    readonly mlflowNodePort: number;
    /** The serving LoadBalancer's port inside the cluster (published on servingHostPort). */
    readonly servingPort: number;
    /** Storage directory, bind-mounted at the same path so that hostPath volumes work inside. */
    readonly storageDir: string;
    /** Seconds to wait for the cluster to become ready. */
    readonly readyTimeoutSeconds: number;
}

/** The k3s server arguments of the embedded node. */
export function k3sServerArgs(): string[] {
    return [
        "server",
        "--disable=traefik",
        "--tls-san=127.0.0.1",
        "--tls-san=localhost",
        "--write-kubeconfig-mode=600",
        // the node is a container on a laptop's disk: evict only when it is really full (as k3d does),
        // not at the kubelet's default 10-15% free, which a busy Docker disk reaches quickly
        "--kubelet-arg=eviction-hard=imagefs.available<1%,nodefs.available<1%",
        "--kubelet-arg=eviction-minimum-reclaim=imagefs.available=1%,nodefs.available=1%",
    ];
}

/**
 * A bash script that waits (bounded) until the k3s in `container` answers and has a node, then prints
 * its kubeconfig with the server rewritten to the published API port.
 */
export function kubeconfigScript(container: string, apiPort: number, timeoutSeconds: number): string {
    const c = shq(container);
    return [
        "set -euo pipefail",
        `deadline=$((SECONDS + ${timeoutSeconds}))`,
        `until docker exec ${c} kubectl get --raw=/readyz >/dev/null 2>&1 && docker exec ${c} kubectl get nodes -o name 2>/dev/null | grep -q node/; do`,
        `  if (( SECONDS >= deadline )); then echo "the k3s in container ${container} was not ready after ${timeoutSeconds}s; look at: docker logs ${container}" >&2; exit 1; fi`,
        "  sleep 2",
        "done",
        `docker exec ${c} cat /etc/rancher/k3s/k3s.yaml | sed -e 's#https://127.0.0.1:6443#https://127.0.0.1:${apiPort}#'`,
    ].join("\n");
}

/** A single-node k3s running in a Docker container created by the stack. */
export class EmbeddedCluster extends pulumi.ComponentResource implements ClusterAccess {
    readonly provider: k8s.Provider;
    readonly kubectl: string;
    readonly ready: pulumi.Resource[];
    readonly containerName: string;
    readonly identity: pulumi.Output<string>;
    /** The cluster's kubeconfig (secret), server on the published API port. */
    readonly kubeconfig: pulumi.Output<string>;
    readonly container: docker.Container;

    constructor(name: string, args: EmbeddedClusterArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:cluster:EmbeddedCluster", name, {}, opts);
        this.containerName = args.containerName;
        const image = new docker.RemoteImage(`${name}-image`, { name: args.k3sImage, keepLocally: true }, { parent: this });
        const local = "127.0.0.1";
        this.container = new docker.Container(
            `${name}-node`,
            {
                name: args.containerName,
                image: image.imageId,
                command: k3sServerArgs(),
                privileged: true,
                restart: "unless-stopped",
                mustRun: true,
                hostname: args.containerName,
                tmpfs: { "/run": "", "/var/run": "" },
                ports: [
                    { internal: 6443, external: args.apiPort, ip: local },
                    { internal: args.servingPort, external: args.servingHostPort, ip: local },
                    { internal: args.mlflowNodePort, external: args.mlflowHostPort, ip: local },
                ],
                volumes: [{ hostPath: args.storageDir, containerPath: args.storageDir }],
            },
            { parent: this },
        );
        const kubeconfigCmd = new command.local.Command(
            `${name}-kubeconfig`,
            {
                create: kubeconfigScript(args.containerName, args.apiPort, args.readyTimeoutSeconds),
                interpreter: BASH,
                triggers: [this.container.id],
                // stdout is the admin kubeconfig, client key included: never into the console or CI logs
                logging: "none",
            },
            { parent: this, dependsOn: [this.container], additionalSecretOutputs: ["stdout"] },
        );
        this.kubeconfig = pulumi.secret(kubeconfigCmd.stdout);
        this.provider = new k8s.Provider(`${name}-k8s`, { kubeconfig: this.kubeconfig }, { parent: this });
        this.kubectl = `docker exec ${shq(args.containerName)} kubectl`;
        this.ready = [kubeconfigCmd];
        this.identity = this.container.id;
        this.registerOutputs({ container: this.container.name, kubeconfig: this.kubeconfig });
    }

    rootShell(script: string): string {
        return `docker exec ${shq(this.containerName)} sh -c ${shq(script)}`;
    }
}
