/** The two images, built locally with @pulumi/docker, tagged by content, never pushed. */
import * as path from "path";
import * as fs from "fs";
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { BuildSpec, imageRef } from "./contentHash";

/** The image repository of both images (the guide's `ops-demo:training`, `ops-demo:serving`). */
export const REPOSITORY = "ops-demo";
export const FLAVOURS = ["training", "serving"] as const;
export type Flavour = (typeof FLAVOURS)[number];

export interface ImagesArgs {
    /** Directory holding `training/` and `serving/`, each a build context with a Dockerfile. */
    readonly imagesDir: string;
    /** Build arg BASE_IMAGE; empty = the Dockerfile's default (the arg is then not passed). */
    readonly baseImage: string;
}

/** One built image. */
export interface BuiltImage {
    /** `ops-demo:<flavour>-<content hash>`, known at program time. */
    readonly ref: string;
    /** The image name as the provider reports it (carries the dependency on the build). */
    readonly name: pulumi.Output<string>;
    /** The local image ID (`sha256:...`): changes exactly when the built image changes. */
    readonly digest: pulumi.Output<string>;
}

/** The build of one flavour: context, Dockerfile and args. Throws a clear error when the Dockerfile is missing. */
export function buildSpec(imagesDir: string, flavour: Flavour, baseImage: string): BuildSpec {
    const context = path.join(imagesDir, flavour);
    const dockerfile = path.join(context, "Dockerfile");
    if (!fs.existsSync(dockerfile)) {
        throw new pulumi.RunError(`image ${flavour}: ${dockerfile} not found (each image is built from images/${flavour}/Dockerfile)`);
    }
    return { context, dockerfile, args: baseImage === "" ? {} : { BASE_IMAGE: baseImage } };
}

export class Images extends pulumi.ComponentResource {
    readonly training: BuiltImage;
    readonly serving: BuiltImage;

    constructor(name: string, args: ImagesArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:images:Images", name, {}, opts);
        const build = (flavour: Flavour): BuiltImage => {
            const spec = buildSpec(args.imagesDir, flavour, args.baseImage);
            const ref = imageRef(REPOSITORY, flavour, spec);
            const image = new docker.Image(
                `${name}-${flavour}`,
                {
                    imageName: ref,
                    skipPush: true,
                    build: { context: spec.context, dockerfile: spec.dockerfile, args: spec.args },
                },
                { parent: this },
            );
            return { ref, name: image.imageName, digest: image.repoDigest };
        };
        this.training = build("training");
        this.serving = build("serving");
        this.registerOutputs({ training: this.training.name, serving: this.serving.name });
    }
}
