/**
 * The replacement policy every Kubernetes object gets (components/replacement.ts). The effect is
 * checked for real in the real-cluster tier (`pulumi up --replace` of the Service and a Job leaves
 * them in the cluster); here the options the transformation gives.
 */
import * as assert from "assert";
import * as pulumi from "@pulumi/pulumi";
import { replacementOptions, replacementTransformation } from "../../components/replacement";

describe("replacement policy", () => {
    const container = { urn: "container" } as unknown as pulumi.Resource;

    it("replaces fixed-name Kubernetes objects delete-first (a create-first replacement deletes the new object)", () => {
        const o = replacementOptions("kubernetes:core/v1:Service", { metadata: { name: "iris-serving-service" } }, {}, {});
        assert.deepStrictEqual(o, { deleteBeforeReplace: true });
    });

    it("leaves auto-named objects, other resources and the provider alone", () => {
        assert.deepStrictEqual(replacementOptions("kubernetes:core/v1:ConfigMap", { metadata: {} }, {}, {}), {});
        assert.strictEqual(replacementOptions("command:local:Command", { create: "x" }, {}, { deletedWith: container }), undefined);
        assert.strictEqual(replacementOptions("pulumi:providers:kubernetes", { kubeconfig: "x" }, {}, { deletedWith: container }), undefined);
    });

    it("in the embedded cluster, deletes every object with the cluster's container; keeps options it was given", () => {
        const own = { urn: "own" } as unknown as pulumi.Resource;
        const o = replacementOptions("kubernetes:batch/v1:Job", { metadata: { name: "j" } }, { parent: own, ignoreChanges: ["x"] }, { deletedWith: container });
        assert.deepStrictEqual(o, { parent: own, ignoreChanges: ["x"], deleteBeforeReplace: true, deletedWith: container });
        const mine = replacementOptions("kubernetes:batch/v1:Job", { metadata: { name: "j" } }, { deletedWith: own }, { deletedWith: container });
        assert.strictEqual(mine?.deletedWith, own);
    });

    it("as a transformation: returns the props unchanged with the new options", () => {
        const t = replacementTransformation({});
        const props = { metadata: { name: "mlflow-server" } };
        const r = t({ type: "kubernetes:apps/v1:Deployment", name: "d", props, opts: {} } as unknown as pulumi.ResourceTransformationArgs);
        assert.deepStrictEqual(r, { props, opts: { deleteBeforeReplace: true } });
    });
});
