import * as assert from "assert";
import { imagesDir } from "./fixtures";
import { kubernetesObjects, Recorded, runProgram, stackConfig } from "./harness";

/* eslint-disable @typescript-eslint/no-require-imports, @typescript-eslint/no-explicit-any */

/** `kubernetes:apps/v1:Deployment` -> the kubernetes-models class (offline OpenAPI schema of the Kubernetes API). */
function modelClass(type: string): new (o: unknown) => { validate(): void } {
    const m = /^kubernetes:([^:]+):([A-Za-z]+)$/.exec(type);
    assert.ok(m, `not a Kubernetes type token: ${type}`);
    const [group, version] = m[1].split("/");
    const module = group === "core" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
    const cls = require(module)[m[2]];
    assert.ok(cls, `kubernetes-models has no ${m[2]} in ${module}`);
    return cls;
}

/** Validates one recorded object; returns the schema's complaint or undefined. */
export function validate(r: Recorded): string | undefined {
    const Model = modelClass(r.type);
    try {
        new Model(JSON.parse(JSON.stringify(r.inputs))).validate();
        return undefined;
    } catch (e) {
        return (e as Error).message;
    }
}

describe("every Kubernetes object validates against the Kubernetes OpenAPI schema", () => {
    const images = imagesDir();
    const variants: [string, Record<string, string>][] = [
        ["k3s", {}],
        ["dev", {}],
        ["k3s", { experiments: JSON.stringify(["runName=a", "runName=Optimized Run #3,nEstimators=300,maxDepth=15"]), imageLoader: "none" }],
    ];
    for (const [stack, set] of variants) {
        it(`stack ${stack} ${JSON.stringify(set)}`, async () => {
            const run = await runProgram(stackConfig(stack, set), stack, { OPS_DEMO_IMAGES_DIR: images });
            const objects = kubernetesObjects(run.resources);
            assert.ok(objects.length >= 11, `only ${objects.length} objects`);
            for (const o of objects) {
                assert.strictEqual(validate(o), undefined, `${o.type} ${o.name}`);
                assert.ok((o.inputs as any).apiVersion && (o.inputs as any).kind, `${o.name} has apiVersion and kind`);
            }
        });
    }

    it("the validator rejects what the API server would (so the checks above can fail)", () => {
        const bad = (inputs: unknown): Recorded => ({ type: "kubernetes:apps/v1:Deployment", name: "bad", inputs: inputs as any, custom: true, id: "x" });
        const ok = { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "d" }, spec: { selector: { matchLabels: { a: "b" } }, template: { spec: { containers: [{ name: "c", image: "i" }] } } } };
        assert.strictEqual(validate(bad(ok)), undefined);
        const noName = JSON.parse(JSON.stringify(ok));
        delete noName.spec.template.spec.containers[0].name;
        assert.match(String(validate(bad(noName))), /name/);
        const wrongType = JSON.parse(JSON.stringify(ok));
        wrongType.spec.replicas = "two";
        assert.match(String(validate(bad(wrongType))), /replicas/);
    });
});
