/** Kubernetes names and labels derived from free text (run names), always valid. */
import * as crypto from "crypto";
import { TrainingRun } from "./config";

/** The longest Kubernetes object name that is also a DNS-1123 label (Jobs: pod names derive from it). */
export const MAX_NAME = 63;

/** Lowercase DNS-1123 slug of any text: [a-z0-9-], no leading/trailing `-`, at most `max` chars; "" if nothing is left. */
export function dnsSlug(text: string, max: number): string {
    const s = text
        .normalize("NFKD")
        .toLowerCase()
        .replace(/[^a-z0-9]+/g, "-")
        .replace(/^-+|-+$/g, "");
    return s.slice(0, max).replace(/-+$/, "");
}

/** A valid label value (<= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends) of any text. */
export function labelValue(text: string): string {
    const s = text.replace(/[^A-Za-z0-9._-]+/g, "-").slice(0, 63);
    return s.replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "");
}

/**
 * Short hash of everything that makes a run distinct: its parameters, the image, the promotion
 * policy and (`template`) whatever else shapes the Job's pod template (resources, GPUs, credentials,
 * pull secret): a Job's template is immutable, so any change must give a new Job under a new name
 * rather than replace one under the same name.
 */
export function runHash(run: TrainingRun, image: string, promotionPolicy: string, template = ""): string {
    const parts: unknown[] = [run.runName, run.nEstimators, run.maxDepth, image, promotionPolicy];
    const key = JSON.stringify(template === "" ? parts : [...parts, template]);
    return crypto.createHash("sha256").update(key).digest("hex").slice(0, 8);
}

/**
 * The Job name of a run: `iris-training-<slug of runName>-<hash>`, a DNS-1123 label of at most 63
 * characters whatever runName holds; a changed parameter or image gives a new name, so a new Job.
 */
export function jobName(run: TrainingRun, image: string, promotionPolicy: string, template = ""): string {
    const prefix = "iris-training";
    const hash = runHash(run, image, promotionPolicy, template);
    const room = MAX_NAME - prefix.length - hash.length - 2;
    const slug = dnsSlug(run.runName, room);
    return slug === "" ? `${prefix}-${hash}` : `${prefix}-${slug}-${hash}`;
}

/** RFC 1123 label check used by the tests and as a last guard. */
export function isDnsLabel(name: string): boolean {
    return name.length <= MAX_NAME && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name);
}
