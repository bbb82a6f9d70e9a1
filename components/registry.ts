/** Pull credentials for imageLoader=registry: a dockerconfigjson Secret in each namespace that runs the images. */
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS } from "./common";
import { RegistryConfig } from "./config";

/** Name of the pull Secret (the same in both namespaces). */
export const PULL_SECRET = "ops-demo-registry";

/** The `.dockerconfigjson` document of the kubelet's pull secrets for one registry. */
export function dockerConfigJson(server: string, username: string, password: string): string {
    const auth = Buffer.from(`${username}:${password}`).toString("base64");
    return JSON.stringify({ auths: { [server]: { username, password, auth } } });
}

export interface RegistryPullSecretsArgs {
    readonly registry: RegistryConfig & { credentials: { username: string; password: string } };
    /** Namespaces whose pods pull the images, by short name. */
    readonly namespaces: Readonly<Record<string, pulumi.Input<string>>>;
}

export class RegistryPullSecrets extends pulumi.ComponentResource {
    /** The Secret's name per namespace key (an Output: pods that name it wait for it). */
    readonly names: Record<string, pulumi.Output<string>> = {};

    constructor(name: string, args: RegistryPullSecretsArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:images:RegistryPullSecrets", name, {}, opts);
        const { server, credentials } = args.registry;
        for (const [key, namespace] of Object.entries(args.namespaces)) {
            const secret = new k8s.core.v1.Secret(
                `${name}-${key}`,
                {
                    metadata: { name: PULL_SECRET, namespace, labels: { ...COMMON_LABELS } },
                    type: "kubernetes.io/dockerconfigjson",
                    stringData: { ".dockerconfigjson": pulumi.secret(dockerConfigJson(server, credentials.username, credentials.password)) },
                },
                { parent: this },
            );
            this.names[key] = secret.metadata.name;
        }
        this.registerOutputs({ names: this.names });
    }
}
