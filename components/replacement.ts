/**
 * How the stack's Kubernetes objects are replaced and deleted, for every one of them at once (a
 * transformation that index.ts gives every Kubernetes component, so it reaches all their children).
 *
 * - Every object carries a fixed `metadata.name` (the names users type). Pulumi's default
 *   replacement creates the new object first and then deletes "the old one", which by then is the
 *   new one (same name; pulumi-kubernetes issue 4522): a replaced Service vanished while `pulumi up`
 *   reported success. Fixed-name objects are therefore replaced delete-first.
 * - In the embedded cluster (a k3s container the stack owns) the objects live and die with the
 *   container: `deletedWith` it, so `pulumi destroy` does not ask an API server that is already gone.
 */
import * as pulumi from "@pulumi/pulumi";

export interface ReplacementPolicy {
    /** The resource whose deletion deletes every Kubernetes object too (the embedded cluster's container). */
    readonly deletedWith?: pulumi.Resource;
}

/** Kubernetes object types: `kubernetes:<group>/<version>:<Kind>` (not the provider itself, `pulumi:providers:kubernetes`). */
export function isKubernetesObject(type: string): boolean {
    return type.startsWith("kubernetes:");
}

/** The options a Kubernetes object of the stack gets on top of its own (undefined: leave it alone). */
export function replacementOptions(
    type: string,
    props: Record<string, unknown>,
    opts: pulumi.CustomResourceOptions,
    policy: ReplacementPolicy,
): pulumi.CustomResourceOptions | undefined {
    if (!isKubernetesObject(type)) {
        return undefined;
    }
    const metadata = props["metadata"] as { name?: unknown } | undefined;
    const fixedName = metadata !== undefined && metadata.name !== undefined;
    const deletedWith = opts.deletedWith ?? policy.deletedWith;
    return {
        ...opts,
        ...(fixedName ? { deleteBeforeReplace: true } : {}),
        ...(deletedWith === undefined ? {} : { deletedWith }),
    };
}

/** The policy as a resource transformation (`transformations` of a component applies to all its children). */
export function replacementTransformation(policy: ReplacementPolicy): pulumi.ResourceTransformation {
    return (a) => {
        const opts = replacementOptions(a.type, a.props, a.opts as pulumi.CustomResourceOptions, policy);
        return opts === undefined ? undefined : { props: a.props, opts };
    };
}
