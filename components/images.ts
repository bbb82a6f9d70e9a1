/** The two images, built locally with @pulumi/docker, tagged by content; pushed only with imageLoader=registry. */
import * as path from "path";
import * as fs from "fs";
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { RegistryConfig } from "./config";
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
    /** Build arg PIP_NO_INDEX=1: pip installs only from the build context's wheels/. */
    readonly pipNoIndex?: boolean;
    /** Push to this registry (imageLoader=registry); undefined: local images, never pushed. */
    readonly registry?: RegistryConfig;
}

/** One built image. */
export interface BuiltImage {
    /** `ops-demo:<flavour>-<content hash>` (`<registry>/ops-demo:...` when pushed), known at program time. */
    readonly ref: string;
    /** The image name as the provider reports it (carries the dependency on the build). */
    readonly name: pulumi.Output<string>;
    /** The local image ID (`sha256:...`), or the pushed `<repo>@sha256:...`: changes exactly when the image does. */
    readonly digest: pulumi.Output<string>;
    /** What pods reference: the image name, or for a pushed image its repo digest (immutable). */
    readonly podImage: pulumi.Output<string>;
}

/**
 * The platform the images are built for: this machine's, which is the k3s node's when k3s runs here
 * (said explicitly: the docker provider warns on every preview when it is left implicit).
 */
export function buildPlatform(arch: string = process.arch): string {
    return `linux/${arch === "x64" ? "amd64" : arch}`;
}

/** The build of one flavour: context, Dockerfile and args. Throws a clear error when the Dockerfile is missing. */
export function buildSpec(imagesDir: string, flavour: Flavour, baseImage: string, pipNoIndex = false): BuildSpec {
    const context = path.join(imagesDir, flavour);
    const dockerfile = path.join(context, "Dockerfile");
    if (!fs.existsSync(dockerfile)) {
        throw new pulumi.RunError(`image ${flavour}: ${dockerfile} not found (each image is built from images/${flavour}/Dockerfile)`);
    }
    return {
        context,
        dockerfile,
        args: { ...(baseImage === "" ? {} : { BASE_IMAGE: baseImage }), ...(pipNoIndex ? { PIP_NO_INDEX: "1" } : {}) },
    };
}

export class Images extends pulumi.ComponentResource {
    readonly training: BuiltImage;
    readonly serving: BuiltImage;

    constructor(name: string, args: ImagesArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:images:Images", name, {}, opts);
        const build = (flavour: Flavour): BuiltImage => {
            const spec = buildSpec(args.imagesDir, flavour, args.baseImage, args.pipNoIndex);
            const repository = args.registry === undefined ? REPOSITORY : `${args.registry.prefix}/${REPOSITORY}`;
            const ref = imageRef(repository, flavour, spec);
            const creds = args.registry?.credentials;
            const image = new docker.Image(
                `${name}-${flavour}`,
                {
                    imageName: ref,
                    skipPush: args.registry === undefined,
                    build: { context: spec.context, dockerfile: spec.dockerfile, args: spec.args, platform: buildPlatform() },
                    ...(args.registry === undefined
                        ? {}
                        : {
                              registry: {
                                  server: args.registry.server,
                                  ...(creds ? { username: creds.username, password: pulumi.secret(creds.password) } : {}),
                              },
                          }),
                },
                { parent: this },
            );
            const podImage = args.registry === undefined ? image.imageName : image.repoDigest;
            return { ref, name: image.imageName, digest: image.repoDigest, podImage };
        };
        this.training = build("training");
        this.serving = build("serving");
        this.registerOutputs({ training: this.training.name, serving: this.serving.name });
    }
}
