/**
 * The Pod Security Standards' "restricted" profile (which includes "baseline") as a check over a pod
 * spec, written from https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy
 * version v1.31, the version the namespaces pin). Each rule names the control of the document.
 * Returns the violations; an empty list means the Pod Security Admission would admit the pod into a
 * namespace that enforces restricted.
 */

/* eslint-disable @typescript-eslint/no-explicit-any */

/** Baseline "Capabilities": the only capabilities a container may add. */
const BASELINE_CAPABILITIES = [
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
];
/** Baseline "Sysctls": the safe set. */
const SAFE_SYSCTLS = [
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/** Baseline "SELinux": the allowed types. */
const SELINUX_TYPES = ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
/** Restricted "Volume Types": the only volume sources allowed. */
const RESTRICTED_VOLUMES = ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/** Every container of a pod spec, with where it sits (containers, initContainers, ephemeralContainers). */
function containersOf(spec: any): [string, any][] {
    const out: [string, any][] = [];
    for (const field of ["containers", "initContainers", "ephemeralContainers"]) {
        for (const c of spec?.[field] ?? []) {
            out.push([`${field}[${c?.name}]`, c]);
        }
    }
    return out;
}

export function restrictedViolations(spec: any, metadata: any = {}): string[] {
    const v: string[] = [];
    const podSc = spec?.securityContext ?? {};
    const containers = containersOf(spec);

    // --- baseline ---------------------------------------------------------------------------
    // HostProcess
    if (podSc.windowsOptions?.hostProcess === true) {
        v.push("HostProcess: spec.securityContext.windowsOptions.hostProcess must be unset or false");
    }
    // Host Namespaces
    for (const f of ["hostNetwork", "hostPID", "hostIPC"]) {
        if (spec?.[f] === true) {
            v.push(`Host Namespaces: spec.${f} must be unset or false`);
        }
    }
    // Sysctls
    for (const s of podSc.sysctls ?? []) {
        if (!SAFE_SYSCTLS.includes(s.name)) {
            v.push(`Sysctls: ${s.name} is not in the safe set`);
        }
    }
    // AppArmor, SELinux, Seccomp (baseline part) at pod level
    const checkSecurityOptions = (sc: any, where: string) => {
        if (sc.appArmorProfile?.type !== undefined && !["RuntimeDefault", "Localhost"].includes(sc.appArmorProfile.type)) {
            v.push(`AppArmor: ${where}.appArmorProfile.type ${sc.appArmorProfile.type} (allowed: RuntimeDefault, Localhost, unset)`);
        }
        const se = sc.seLinuxOptions;
        if (se !== undefined) {
            if (!SELINUX_TYPES.includes(se.type ?? "")) {
                v.push(`SELinux: ${where}.seLinuxOptions.type ${se.type}`);
            }
            if (se.user || se.role) {
                v.push(`SELinux: ${where}.seLinuxOptions.user/role must be unset`);
            }
        }
        if (sc.seccompProfile?.type === "Unconfined") {
            v.push(`Seccomp: ${where}.seccompProfile.type must not be Unconfined`);
        }
        if (sc.windowsOptions?.hostProcess === true) {
            v.push(`HostProcess: ${where}.windowsOptions.hostProcess must be unset or false`);
        }
    };
    checkSecurityOptions(podSc, "spec.securityContext");
    for (const [k, a] of Object.entries(metadata?.annotations ?? {})) {
        if (k.startsWith("container.apparmor.security.beta.kubernetes.io/") && !(a === "runtime/default" || String(a).startsWith("localhost/"))) {
            v.push(`AppArmor: annotation ${k}=${a}`);
        }
    }
    // HostPath Volumes (baseline) and Volume Types (restricted)
    for (const vol of spec?.volumes ?? []) {
        const sources = Object.keys(vol).filter((k) => k !== "name");
        for (const s of sources) {
            if (!RESTRICTED_VOLUMES.includes(s)) {
                v.push(`Volume Types: volume ${vol.name} uses ${s} (allowed: ${RESTRICTED_VOLUMES.join(", ")})`);
            }
        }
    }

    // --- restricted, pod level --------------------------------------------------------------
    const podNonRoot = podSc.runAsNonRoot === true;
    const podSeccomp = ["RuntimeDefault", "Localhost"].includes(podSc.seccompProfile?.type);
    if (podSc.runAsUser === 0) {
        v.push("Running as Non-root user: spec.securityContext.runAsUser must not be 0");
    }

    for (const [where, c] of containers) {
        const sc = c.securityContext ?? {};
        checkSecurityOptions(sc, `${where}.securityContext`);
        // Privileged Containers
        if (sc.privileged === true) {
            v.push(`Privileged Containers: ${where} is privileged`);
        }
        // Capabilities (baseline: add only the default set; restricted: drop ALL, add only NET_BIND_SERVICE)
        const add: string[] = sc.capabilities?.add ?? [];
        for (const cap of add) {
            if (!BASELINE_CAPABILITIES.includes(cap)) {
                v.push(`Capabilities (baseline): ${where} adds ${cap}`);
            } else if (cap !== "NET_BIND_SERVICE") {
                v.push(`Capabilities: ${where} adds ${cap} (restricted allows only NET_BIND_SERVICE)`);
            }
        }
        if (!(sc.capabilities?.drop ?? []).includes("ALL")) {
            v.push(`Capabilities: ${where} must drop ALL`);
        }
        // Host Ports
        for (const p of c.ports ?? []) {
            if (p.hostPort !== undefined && p.hostPort !== 0) {
                v.push(`Host Ports: ${where} uses hostPort ${p.hostPort}`);
            }
        }
        // /proc Mount Type
        if (sc.procMount !== undefined && sc.procMount !== "Default") {
            v.push(`/proc Mount Type: ${where} procMount ${sc.procMount}`);
        }
        // Privilege Escalation
        if (sc.allowPrivilegeEscalation !== false) {
            v.push(`Privilege Escalation: ${where}.securityContext.allowPrivilegeEscalation must be false`);
        }
        // Running as Non-root: pod-level true (and no container false), or every container true
        if (sc.runAsNonRoot === false || (!podNonRoot && sc.runAsNonRoot !== true)) {
            v.push(`Running as Non-root: ${where} must run with runAsNonRoot true (pod or container level, not false)`);
        }
        // Running as Non-root user
        if (sc.runAsUser === 0) {
            v.push(`Running as Non-root user: ${where}.securityContext.runAsUser must not be 0`);
        }
        // Seccomp: RuntimeDefault or Localhost at pod level, or on every container
        if (!podSeccomp && !["RuntimeDefault", "Localhost"].includes(sc.seccompProfile?.type)) {
            v.push(`Seccomp: ${where} needs seccompProfile RuntimeDefault or Localhost (pod or container level)`);
        }
    }
    if (containers.length === 0) {
        v.push("the pod declares no containers");
    }
    return v;
}

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
