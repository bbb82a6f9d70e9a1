/** The guide's two namespaces. */
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { COMMON_LABELS } from "./common";

export const TRAINING_NAMESPACE = "mlops-training";
export const SERVING_NAMESPACE = "mlops-serving";

export class Namespaces extends pulumi.ComponentResource {
    /** `mlops-training` (an Output: objects in it wait for it). */
    readonly training: pulumi.Output<string>;
    /** `mlops-serving`. */
    readonly serving: pulumi.Output<string>;

    constructor(name: string, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:k8s:Namespaces", name, {}, opts);
        const ns = (suffix: string, nsName: string, role: string) =>
            new k8s.core.v1.Namespace(
                `${name}-${suffix}`,
                { metadata: { name: nsName, labels: { ...COMMON_LABELS, "ops-demo/role": role } } },
                { parent: this },
            );
        this.training = ns("training", TRAINING_NAMESPACE, "training").metadata.name;
        this.serving = ns("serving", SERVING_NAMESPACE, "serving").metadata.name;
        this.registerOutputs({ training: this.training, serving: this.serving });
    }
}
