/** The guide's two namespaces. */
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS } from "./common";

export const TRAINING_NAMESPACE = "mlops-training";
export const SERVING_NAMESPACE = "mlops-serving";

/** The Pod Security Standard both namespaces enforce, warn about and audit. */
export const POD_SECURITY_LEVEL = "restricted";
/**
 * The version of the standard's rules: pinned to the Kubernetes minor of the stacks' k3s, so a
 * cluster upgrade cannot tighten the rules under running workloads unannounced ("latest" would).
 */
export const POD_SECURITY_VERSION = "v1.31";

/** Pod Security Admission labels: enforce, warn and audit the restricted profile, pinned version. */
export function podSecurityLabels(): Record<string, string> {
    const labels: Record<string, string> = {};
    for (const mode of ["enforce", "warn", "audit"]) {
        labels[`pod-security.kubernetes.io/${mode}`] = POD_SECURITY_LEVEL;
        labels[`pod-security.kubernetes.io/${mode}-version`] = POD_SECURITY_VERSION;
    }
    return labels;
}

/** A namespace of the project: its name, role label and the Pod Security Admission labels. */
export function namespaceArgs(nsName: string, role: string): k8s.core.v1.NamespaceArgs {
    return { metadata: { name: nsName, labels: { ...COMMON_LABELS, "ops-demo/role": role, ...podSecurityLabels() } } };
}

export class Namespaces extends pulumi.ComponentResource {
    /** `mlops-training` (an Output: objects in it wait for it). */
    readonly training: pulumi.Output<string>;
    /** `mlops-serving`. */
    readonly serving: pulumi.Output<string>;

    constructor(name: string, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:k8s:Namespaces", name, {}, opts);
        const ns = (suffix: string, nsName: string, role: string) =>
            new k8s.core.v1.Namespace(`${name}-${suffix}`, namespaceArgs(nsName, role), { parent: this });
        this.training = ns("training", TRAINING_NAMESPACE, "training").metadata.name;
        this.serving = ns("serving", SERVING_NAMESPACE, "serving").metadata.name;
        this.registerOutputs({ training: this.training, serving: this.serving });
    }
}
