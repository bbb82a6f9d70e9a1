/**
 * Where pods hide in Kubernetes objects. The restricted profile itself is judged by the real API
 * server's Pod Security admission in the real-cluster tier (tests/real/admission.test.ts), over
 * every pod template every variant declares: no copy of its rules lives here.
 */

/* eslint-disable @typescript-eslint/no-explicit-any */

/**
 * The pod templates of a Kubernetes object as [where, spec, metadata]: Pod, the workload kinds with
 * spec.template, CronJob's job template. Anything else that carries containers is reported by the
 * caller (podTemplatesOf returns undefined for kinds it does not know).
 */
export function podTemplatesOf(obj: any): [string, any, any][] | undefined {
    switch (obj?.kind) {
        case "Pod":
            return [["spec", obj.spec, obj.metadata]];
        case "Deployment":
        case "StatefulSet":
        case "DaemonSet":
        case "ReplicaSet":
        case "Job":
        case "ReplicationController":
            return [["spec.template.spec", obj.spec?.template?.spec, obj.spec?.template?.metadata]];
        case "CronJob":
            return [["spec.jobTemplate.spec.template.spec", obj.spec?.jobTemplate?.spec?.template?.spec, obj.spec?.jobTemplate?.spec?.template?.metadata]];
        default:
            return undefined;
    }
}

/** Whether a value holds a `containers` list anywhere (a pod spec hidden in a kind podTemplatesOf does not know). */
export function mentionsContainers(v: unknown): boolean {
    if (Array.isArray(v)) {
        return v.some(mentionsContainers);
    }
    if (v !== null && typeof v === "object") {
        return Object.entries(v).some(([k, x]) => (k === "containers" && Array.isArray(x)) || mentionsContainers(x));
    }
    return false;
}
