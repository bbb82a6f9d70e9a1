/** Loads the built images into the cluster's container runtime; re-runs exactly when an image digest changes. */
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { ImageLoader } from "./config";
import { BASH, shq, sudoPrefix } from "./shell";
import { BuiltImage } from "./images";

export interface ImportOptions {
    /** Prefix `k3s ctr` with `sudo -n`. */
    readonly sudo: boolean;
    /** Container of the embedded k3s (imageLoader=embedded). */
    readonly embeddedContainer: string;
    /** kind cluster name (imageLoader=kind). */
    readonly kindClusterName: string;
}

/** The shell command that loads `ref` into the cluster, or undefined for imageLoader=registry and none. */
export function importCommand(loader: ImageLoader, ref: string, o: ImportOptions): string | undefined {
    switch (loader) {
        case "k3s":
            return `set -euo pipefail; docker save ${shq(ref)} | ${sudoPrefix(o.sudo)}k3s ctr images import -`;
        case "embedded":
            return `set -euo pipefail; docker save ${shq(ref)} | docker exec -i ${shq(o.embeddedContainer)} ctr images import -`;
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
                    // The digest (an Output of the build) is both the trigger and the dependency on the build.
                    { create, interpreter: BASH, triggers: [image.digest] },
                    { parent: this },
                ),
            );
        }
        this.registerOutputs({ commands: this.commands.map((c) => c.create) });
    }
}
