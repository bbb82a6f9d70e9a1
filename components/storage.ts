/**
 * Shared storage: the host directory prepared for user 10001, two hostPath PersistentVolumes
 * (Retain: `pulumi destroy` leaves the data on the host) bound explicitly to one claim each.
 * On several nodes the same two volumes are NFS volumes on one export (`nfs`): a hostPath is a
 * different directory on every node.
 */
import * as crypto from "crypto";
import * as command from "@pulumi/command";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { APP_UID, COMMON_LABELS } from "./common";
import { BASH, shq } from "./shell";

/** Claim name prefixes of docs/interfaces.md (the full names end in the storage key). */
export const DATA_CLAIM = "mlops-data";
export const MODELS_CLAIM = "mlops-models";
/** PV name prefixes (cluster-scoped; named so that claimRef and volumeName bind them both ways). */
export const DATA_PV = "mlops-data-pv";
export const MODELS_PV = "mlops-models-pv";

/**
 * A short hash of where the data lives (storageDir, or the NFS export). The volumes and claims carry
 * it in their names, Kubernetes' and Pulumi's: moving the data declares new volumes and claims, the
 * workloads roll over to them, and only then are the old ones deleted. With fixed names, a change
 * replaced the claims in place: their deletion waited on pvc-protection for the pods still mounting
 * them, and the update hung for 10 minutes, leaving half-deleted storage.
 */
export function storageKey(storageDir: string, nfs?: { readonly server: string; readonly path: string }): string {
    const source = nfs === undefined ? { hostPath: storageDir } : { nfs: [nfs.server, nfs.path] };
    return crypto.createHash("sha256").update(JSON.stringify(source)).digest("hex").slice(0, 8);
}
export const STORAGE_SIZE = "10Gi";

export interface SharedStorageArgs {
    /** Absolute host directory. */
    readonly storageDir: string;
    /** Namespace of the data claim (mlops-training). */
    readonly trainingNamespace: pulumi.Input<string>;
    /** Namespace of the models claim (mlops-serving). */
    readonly servingNamespace: pulumi.Input<string>;
    /** Wraps the preparation script so that it runs as root next to the directory. */
    readonly rootShell: (script: string) => string;
    /** Resources the preparation waits for (the embedded cluster's container). */
    readonly prepareAfter: pulumi.Resource[];
    /** The cluster's identity: a new cluster gets the directory prepared again. */
    readonly clusterIdentity: pulumi.Input<string>;
    /**
     * When set, the volumes are this NFS export (`path`) and its `models` directory instead of
     * hostPaths under storageDir; the export is prepared on the NFS server (docs/multinode.md), not here.
     */
    readonly nfs?: { readonly server: string; readonly path: string };
}

/** The directories of the layout, created and handed to 10001:10001 before any PV exists. */
export function prepareScript(storageDir: string): string {
    const d = shq(storageDir);
    const dirs = [storageDir, `${storageDir}/mlflow`, `${storageDir}/mlflow/artifacts`, `${storageDir}/models`].map(shq);
    return `set -eu; mkdir -p ${dirs.join(" ")} && chown -R ${APP_UID}:${APP_UID} ${d}`;
}

/** Where a PV's data lives: a directory on the node, or a directory of an NFS export. */
export type VolumeSource =
    | { readonly hostPath: { readonly path: string; readonly type: "Directory" } }
    | { readonly nfs: { readonly server: string; readonly path: string; readonly readOnly?: boolean } };

/** A hostPath PV with Retain, no storage class (never k3s's local-path), pre-bound to one claim. */
export function hostPathVolume(
    pvName: string,
    hostPath: string,
    accessMode: string,
    claim: { namespace: pulumi.Input<string>; name: string },
): k8s.core.v1.PersistentVolumeArgs {
    return boundVolume(pvName, { hostPath: { path: hostPath, type: "Directory" } }, accessMode, claim);
}

/** A PV with Retain, no storage class (never a provisioner's), `source` as its data, pre-bound to one claim. */
export function boundVolume(
    pvName: string,
    source: VolumeSource,
    accessMode: string,
    claim: { namespace: pulumi.Input<string>; name: string },
): k8s.core.v1.PersistentVolumeArgs {
    return {
        metadata: { name: pvName, labels: { ...COMMON_LABELS } },
        spec: {
            capacity: { storage: STORAGE_SIZE },
            accessModes: [accessMode],
            persistentVolumeReclaimPolicy: "Retain",
            storageClassName: "",
            volumeMode: "Filesystem",
            ...source,
            claimRef: { namespace: claim.namespace, name: claim.name },
        },
    };
}

/**
 * The claim's readiness as Pulumi awaits it: Bound. Said explicitly because the provider's default
 * claim await looks up the claim's storage class first and warns "no storage class found" on every
 * update for a pre-bound claim without one (storageClassName "", on purpose: never a provisioner's).
 */
export const CLAIM_WAIT_FOR = "jsonpath={.status.phase}=Bound";

/** The claim bound to exactly `volumeName`. */
export function boundClaim(
    name: string,
    namespace: pulumi.Input<string>,
    volumeName: pulumi.Input<string>,
    accessMode: string,
): k8s.core.v1.PersistentVolumeClaimArgs {
    return {
        metadata: { name, namespace, labels: { ...COMMON_LABELS }, annotations: { "pulumi.com/waitFor": CLAIM_WAIT_FOR } },
        spec: {
            accessModes: [accessMode],
            storageClassName: "",
            volumeName,
            volumeMode: "Filesystem",
            resources: { requests: { storage: STORAGE_SIZE } },
        },
    };
}

export class SharedStorage extends pulumi.ComponentResource {
    /** Claim `mlops-data` in mlops-training (MLflow and the training Jobs). */
    readonly dataClaim: pulumi.Output<string>;
    /** Claim `mlops-models` in mlops-serving (serving, read-only). */
    readonly modelsClaim: pulumi.Output<string>;
    /** The host preparation (hostPath only; undefined with NFS). */
    readonly prepare?: command.local.Command;
    /** storageKey of the source: part of every volume and claim name. */
    readonly key: string;

    constructor(name: string, args: SharedStorageArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:storage:SharedStorage", name, {}, opts);
        if (args.nfs === undefined) {
            this.prepare = new command.local.Command(
                `${name}-prepare`,
                { create: args.rootShell(prepareScript(args.storageDir)), interpreter: BASH, triggers: [args.storageDir, args.clusterIdentity] },
                { parent: this, dependsOn: args.prepareAfter },
            );
        }
        const after = { parent: this, dependsOn: this.prepare ? [this.prepare] : [], deleteBeforeReplace: true };
        const key = storageKey(args.storageDir, args.nfs);
        this.key = key;
        const nfs = args.nfs;
        const dataSource: VolumeSource = nfs
            ? { nfs: { server: nfs.server, path: nfs.path } }
            : { hostPath: { path: args.storageDir, type: "Directory" } };
        const modelsSource: VolumeSource = nfs
            ? { nfs: { server: nfs.server, path: `${nfs.path.replace(/\/+$/, "")}/models`, readOnly: true } }
            : { hostPath: { path: `${args.storageDir}/models`, type: "Directory" } };
        const dataClaim = `${DATA_CLAIM}-${key}`;
        const modelsClaim = `${MODELS_CLAIM}-${key}`;
        const dataPv = new k8s.core.v1.PersistentVolume(
            `${name}-data-pv-${key}`,
            boundVolume(`${DATA_PV}-${key}`, dataSource, "ReadWriteMany", { namespace: args.trainingNamespace, name: dataClaim }),
            after,
        );
        const modelsPv = new k8s.core.v1.PersistentVolume(
            `${name}-models-pv-${key}`,
            boundVolume(`${MODELS_PV}-${key}`, modelsSource, "ReadOnlyMany", { namespace: args.servingNamespace, name: modelsClaim }),
            after,
        );
        // The kubernetes provider waits for a claim to be Bound; pre-binding makes that immediate.
        const dataPvc = new k8s.core.v1.PersistentVolumeClaim(
            `${name}-data-${key}`,
            boundClaim(dataClaim, args.trainingNamespace, dataPv.metadata.name, "ReadWriteMany"),
            { parent: this, deleteBeforeReplace: true },
        );
        const modelsPvc = new k8s.core.v1.PersistentVolumeClaim(
            `${name}-models-${key}`,
            boundClaim(modelsClaim, args.servingNamespace, modelsPv.metadata.name, "ReadOnlyMany"),
            { parent: this, deleteBeforeReplace: true },
        );
        this.dataClaim = dataPvc.metadata.name;
        this.modelsClaim = modelsPvc.metadata.name;
        this.registerOutputs({ dataClaim: this.dataClaim, modelsClaim: this.modelsClaim });
    }
}
