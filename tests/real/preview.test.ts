/**
 * Both committed stacks through the real CLI's config validation and a real preview (no cluster
 * needed: the dev stack's cluster is a container the preview only plans; the k3s stack's kubeconfig
 * may point nowhere for a preview of creates). The regression test of "must be encrypted as it's secret".
 */
import * as assert from "assert";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { missingPrerequisites, plainConfig, projectCopy, resultChanges, selectStack } from "./stack";

describe("real CLI: both stacks' config validation and preview", function () {
    this.timeout(10 * 60 * 1000);
    let workDir = "";

    before(function () {
        const prereq = missingPrerequisites();
        if (prereq !== "") {
            if (process.env.REAL === "required") {
                throw new Error(`the real tier cannot run: ${prereq}`);
            }
            console.log(`skipping: ${prereq}`);
            this.skip();
        }
        workDir = projectCopy();
    });

    for (const stackName of ["dev", "k3s"]) {
        it(`stack ${stackName}: creating it changes its committed file only by the encryptionsalt line; preview passes`, async () => {
            const committed = fs.readFileSync(path.join(workDir, `Pulumi.${stackName}.yaml`), "utf8");
            const stack = await selectStack({ stackName, workDir, stateDir: path.join(workDir, ".state") });
            const after = fs.readFileSync(path.join(workDir, `Pulumi.${stackName}.yaml`), "utf8");
            const added = after.split("\n").filter((l) => !committed.split("\n").includes(l));
            assert.ok(added.every((l) => /^encryptionsalt: /.test(l) || l === ""), `the CLI rewrote: ${added.join(" | ")}`);
            assert.strictEqual(after.replace(/^encryptionsalt: .*\n/m, ""), committed);
            if (stackName === "k3s") {
                // a kubeconfig that exists (the preview plans creates; the provider is not asked to reach it)
                const kc = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kc-")), "config");
                fs.writeFileSync(kc, "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n");
                await stack.setAllConfig(plainConfig({ kubeconfig: kc, storageDir: path.join(workDir, "data") }));
            }
            // a secret key set as the README tells users to (the keys that broke every preview)
            await stack.setConfig("mlflowAuth", { value: "true" });
            await stack.setConfig("mlflowPassword", { value: "a-long-enough-password", secret: true });
            const r = await stack.preview();
            const c = resultChanges(r);
            assert.ok((c.create ?? 0) > 20, `preview of ${stackName}: ${JSON.stringify(c)}`);
            console.log(`      ${stackName}: preview plans ${JSON.stringify(c)}`);
        });
    }

    it("a bad value fails the preview before any resource, naming the key, the value and what is allowed", async () => {
        const stack = await selectStack({ stackName: "dev", workDir, stateDir: path.join(workDir, ".state") });
        await stack.setConfig("nEstimators", { value: "0" });
        try {
            await assert.rejects(stack.preview(), (e: Error) => {
                assert.match(e.message, /nEstimators/);
                assert.match(e.message, /0/);
                assert.match(e.message, /from 1 to 10000|at least 1|>= ?1/);
                return true;
            });
        } finally {
            await stack.removeConfig("nEstimators");
        }
    });
});
