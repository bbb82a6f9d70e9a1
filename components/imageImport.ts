/** Loads the built images into the cluster's container runtime; re-runs exactly when an image digest or the cluster changes. */
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { ImageLoader } from "./config";
import { asRootFunction, BASH, resolveProgram, shq } from "./shell";
import { BuiltImage } from "./images";

export interface ImportOptions {
    /** Run `k3s ctr` as root (itself when root, else `sudo -n`). */
    readonly sudo: boolean;
    /** Container of the embedded k3s (imageLoader=embedded). */
    readonly embeddedContainer: string;
    /** kind cluster name (imageLoader=kind). */
    readonly kindClusterName: string;
}

/** containerd's name of a Docker short reference (`ops-demo:x` is `docker.io/library/ops-demo:x`). */
export function containerdName(ref: string): string {
    const first = ref.split("/")[0];
    const hasRegistry = ref.includes("/") && (first.includes(".") || first.includes(":") || first === "localhost");
    if (hasRegistry) {
        return ref;
    }
    return ref.includes("/") ? `docker.io/${ref}` : `docker.io/library/${ref}`;
}

/**
 * The shell command that loads `ref` into the cluster, or undefined for imageLoader=registry and none.
 * The tag carries a hash of the build context, so an image already in containerd under that name is
 * this very build: it is not imported again (a re-up after destroy, or a second stack).
 */
export function importCommand(loader: ImageLoader, ref: string, o: ImportOptions): string | undefined {
    const name = shq(containerdName(ref));
    const skipIfPresent = (ctr: string) =>
        `if ${ctr} images ls -q "name==${containerdName(ref)}" 2>/dev/null | grep -qx ${name}; then echo "${ref}: already in the cluster's containerd, not imported again"; exit 0; fi`;
    switch (loader) {
        case "k3s": {
            const ctr = 'as_root "$k3s" ctr';
            return [
                "set -euo pipefail",
                asRootFunction(o.sudo),
                resolveProgram("k3s", "k3s", "install k3s, or choose another imageLoader (pulumi config set imageLoader none|kind|registry)"),
                skipIfPresent(ctr),
                `docker save ${shq(ref)} | ${ctr} images import -`,
            ].join("\n");
        }
        case "embedded": {
            const ctr = `docker exec -i ${shq(o.embeddedContainer)} ctr`;
            return ["set -euo pipefail", skipIfPresent(ctr), `docker save ${shq(ref)} | ${ctr} images import -`].join("\n");
        }
        case "kind":
            return `set -euo pipefail; kind load docker-image ${shq(ref)} --name ${shq(o.kindClusterName)}`;
        case "registry": // pushed by the build (components/images.ts); nodes pull it
        case "none":
            return undefined;
    }
}

export interface ImageImportArgs extends ImportOptions {
    /** How the images reach the cluster. */
    readonly loader: ImageLoader;
    /** The images to load, by short name. */
    readonly images: Readonly<Record<string, BuiltImage>>;
    /** Changes when the cluster is a new one (the embedded cluster's container id): the images are loaded again. */
    readonly clusterIdentity: pulumi.Input<string>;
}

export class ImageImport extends pulumi.ComponentResource {
    /** One command per image (empty for imageLoader=none); workloads depend on them. */
    readonly commands: command.local.Command[] = [];

    constructor(name: string, args: ImageImportArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:images:ImageImport", name, {}, opts);
        for (const [key, image] of Object.entries(args.images)) {
            const create = importCommand(args.loader, image.ref, args);
            if (create === undefined) {
                continue;
            }
            this.commands.push(
                new command.local.Command(
                    `${name}-${key}`,
                    // The digest (an Output of the build) is both a trigger and the dependency on the build;
                    // the cluster's identity re-runs the import into a replaced cluster (a dependsOn would not).
                    { create, interpreter: BASH, triggers: [image.digest, args.clusterIdentity] },
                    { parent: this },
                ),
            );
        }
        this.registerOutputs({ commands: this.commands.map((c) => c.create) });
    }
}
