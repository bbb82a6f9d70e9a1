/** Pieces shared by the Kubernetes components: labels, security context, image pull policy. */
import * as k8s from "@pulumi/kubernetes";
import { ContainerResources, ImageLoader } from "./config";

/** The user and group both images run as (docs/interfaces.md). */
export const APP_UID = 10001;

/** Labels on every object of the project. */
export const COMMON_LABELS = {
    "app.kubernetes.io/part-of": "ops-demo",
    "app.kubernetes.io/managed-by": "pulumi",
} as const;

/** Pod-level security context: non-root 10001:10001, RuntimeDefault seccomp. */
export function podSecurityContext(): k8s.types.input.core.v1.PodSecurityContext {
    return {
        runAsNonRoot: true,
        runAsUser: APP_UID,
        runAsGroup: APP_UID,
        seccompProfile: { type: "RuntimeDefault" },
    };
}

/** Container-level security context: read-only root, no privilege escalation, every capability dropped. */
export function containerSecurityContext(): k8s.types.input.core.v1.SecurityContext {
    return {
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"] },
    };
}

/**
 * The annotations Prometheus' usual `kubernetes-pods` scrape job reads (the community Helm chart's
 * default config): scrape this pod on `port` at `path`.
 */
export function prometheusAnnotations(port: number, path: string): Record<string, string> {
    return { "prometheus.io/scrape": "true", "prometheus.io/port": String(port), "prometheus.io/path": path };
}

/** The writable /tmp every pod needs with a read-only root (the images set HOME=/tmp). */
export const TMP_VOLUME = { name: "tmp", emptyDir: { sizeLimit: "512Mi" } };
export const TMP_MOUNT = { name: "tmp", mountPath: "/tmp" };

/**
 * `Never` when the stack loads the images into the cluster itself (the tag is content-addressed,
 * so a missing image is an import problem, never a reason to reach a registry); `IfNotPresent`
 * with imageLoader=none, where the user brings the images to the nodes (or a registry) another way,
 * and with imageLoader=registry, where pods pull the pushed image by digest (a digest never changes
 * content, so a node that has it need not ask the registry again).
 */
export function imagePullPolicy(loader: ImageLoader): "Never" | "IfNotPresent" {
    return loader === "none" || loader === "registry" ? "IfNotPresent" : "Never";
}

/** A container's `resources` from the stack's validated requests and limits (`extraLimits`: e.g. nvidia.com/gpu). */
export function resourceRequirements(r: ContainerResources, extraLimits: Record<string, string> = {}): k8s.types.input.core.v1.ResourceRequirements {
    return { requests: { ...r.requests }, limits: { ...r.limits, ...extraLimits } };
}
