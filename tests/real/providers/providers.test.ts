/**
 * The stand-in command and docker providers (this directory) under the real Pulumi engine: an
 * Automation API inline program with a local file backend runs preview, up, a trigger change
 * (replace), a context change (image update, import re-run), an up without changes, destroy, and a
 * failing command. Skips when the CLI built by tests/real/build.sh or a Docker engine is missing.
 *
 *   npx mocha -r ts-node/register/transpile-only --timeout 900000 tests/real/providers/providers.test.ts
 */
import * as assert from "assert";
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as command from "@pulumi/command";
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { LocalWorkspace, OpMap, PulumiCommand, Stack } from "@pulumi/pulumi/automation";

const CACHE = process.env.OPS_DEMO_CACHE ?? "/var/cache/ops-demo";
const PULUMI = path.join(CACHE, "bin", "pulumi");
const PROVIDERS_BIN = path.join(__dirname, "bin");
const BASH = ["/bin/bash", "-c"];

function dockerUsable(): boolean {
    try {
        execFileSync("docker", ["info"], { stdio: "ignore", timeout: 20000 });
        return true;
    } catch {
        return false;
    }
}

/** Counts of the operations in a summary, without the resources that stay the same. */
function changes(m: OpMap | undefined): Record<string, number> {
    return Object.fromEntries(Object.entries(m ?? {}).filter(([op, n]) => op !== "same" && (n ?? 0) > 0));
}

describe("stand-in command and docker providers under the real engine", function () {
    this.timeout(15 * 60 * 1000);
    let work: string;
    let stack: Stack;
    let failing: Stack;
    let events: string;
    let ctx: string;
    const state = { trigger: "a" };
    const tag = `t${process.pid}`;

    const program = async () => {
        const hello = new command.local.Command("hello", {
            create: `echo "hello $WHO"; echo "create $WHO" >> ${events}`,
            delete: `echo "delete $WHO $PULUMI_COMMAND_STDOUT" >> ${events}`,
            interpreter: BASH,
            environment: { WHO: "world" },
            triggers: [state.trigger],
        });
        const image = new docker.Image("image", {
            imageName: `ops-demo-standin:${tag}`,
            skipPush: true,
            build: { context: ctx, dockerfile: path.join(ctx, "Dockerfile"), args: { MSG: "from-args" } },
        });
        // As components/imageImport.ts: re-run exactly when the image digest changes.
        const load = new command.local.Command("load", {
            create: pulumi.interpolate`docker image inspect --format '{{.Id}}' ${image.imageName}; echo "load" >> ${events}`,
            interpreter: BASH,
            triggers: [image.repoDigest],
        });
        const quiet = new command.local.Command("quiet", {
            create: "echo \"token=$TOKEN\"",
            interpreter: BASH,
            environment: { TOKEN: pulumi.secret("s3cret") },
            logging: "none",
        });
        return {
            helloStdout: hello.stdout,
            imageName: image.imageName,
            repoDigest: image.repoDigest,
            dockerfile: image.dockerfile,
            platform: image.platform,
            loadStdout: load.stdout,
            quietStdout: quiet.stdout,
        };
    };

    before(async function () {
        if (!fs.existsSync(PULUMI)) {
            console.log(`    skipped: ${PULUMI} is absent (build it with tests/real/build.sh pulumi)`);
            this.skip();
        }
        if (!dockerUsable()) {
            console.log("    skipped: no usable Docker engine (start one with scripts/docker-engine)");
            this.skip();
        }
        work = fs.mkdtempSync(path.join(os.tmpdir(), "ops-demo-standins-"));
        events = path.join(work, "events.log");
        ctx = path.join(work, "context");
        fs.mkdirSync(ctx);
        fs.writeFileSync(path.join(ctx, "Dockerfile"), "FROM scratch\nCOPY payload.txt /payload.txt\nARG MSG=none\nLABEL msg=$MSG\n");
        fs.writeFileSync(path.join(ctx, "payload.txt"), "one\n");
        fs.writeFileSync(path.join(ctx, "notes.md"), "ignored\n");
        fs.writeFileSync(path.join(ctx, ".dockerignore"), "*.md\n");
        fs.writeFileSync(events, "");
        const backend = path.join(work, "state");
        fs.mkdirSync(backend);
        const envVars = {
            PATH: `${PROVIDERS_BIN}:${path.dirname(PULUMI)}:${process.env.PATH}`,
            PULUMI_BACKEND_URL: `file://${backend}`,
            PULUMI_CONFIG_PASSPHRASE: "test",
            PULUMI_HOME: path.join(work, "home"),
            PULUMI_SKIP_UPDATE_CHECK: "true",
        };
        const pulumiCommand = await PulumiCommand.get({ root: path.dirname(path.dirname(PULUMI)), skipVersionCheck: true });
        const opts = { envVars, pulumiCommand, projectSettings: { name: "standins", runtime: "nodejs" as const, backend: { url: envVars.PULUMI_BACKEND_URL } } };
        stack = await LocalWorkspace.createOrSelectStack({ stackName: "main", projectName: "standins", program }, opts);
        failing = await LocalWorkspace.createOrSelectStack(
            {
                stackName: "failing",
                projectName: "standins",
                program: async () => {
                    new command.local.Command("broken", { create: "echo out-line; echo err-line >&2; exit 7", interpreter: BASH });
                },
            },
            opts,
        );
    });

    after(async function () {
        if (stack) {
            await stack.destroy().catch(() => undefined);
        }
        if (failing) {
            await failing.destroy().catch(() => undefined);
        }
        try {
            execFileSync("docker", ["image", "rm", "-f", `ops-demo-standin:${tag}`], { stdio: "ignore" });
        } catch {
            // already gone
        }
        if (work) {
            fs.rmSync(work, { recursive: true, force: true });
        }
    });

    const eventLines = () => fs.readFileSync(events, "utf8").split("\n").filter((l) => l !== "");

    it("preview plans the creates without running anything", async () => {
        const p = await stack.preview();
        assert.deepStrictEqual(changes(p.changeSummary), { create: 5 }); // the stack and 4 resources
        assert.deepStrictEqual(eventLines(), []);
    });

    it("up runs the commands and builds the image; outputs are those of the real providers", async () => {
        const up = await stack.up();
        assert.deepStrictEqual(changes(up.summary.resourceChanges), { create: 5 });
        const o = up.outputs;
        assert.strictEqual(o.helloStdout.value, "hello world");
        assert.strictEqual(o.imageName.value, `ops-demo-standin:${tag}`);
        // skipPush: repoDigest is the local image ID.
        const id = execFileSync("docker", ["image", "inspect", "--format", "{{.Id}}", `ops-demo-standin:${tag}`], { encoding: "utf8" }).trim();
        assert.match(o.repoDigest.value, /^sha256:[0-9a-f]{64}$/);
        assert.strictEqual(o.repoDigest.value, id);
        assert.strictEqual(o.loadStdout.value, id);
        assert.strictEqual(o.dockerfile.value, "Dockerfile");
        assert.strictEqual(o.platform.value, "linux/amd64");
        assert.strictEqual(o.quietStdout.value, "token=s3cret");
        assert.strictEqual(o.quietStdout.secret, true);
        assert.deepStrictEqual(eventLines(), ["create world", "load"]);
    });

    it("a trigger change replaces the command (create the new, then delete the old)", async () => {
        state.trigger = "b";
        const up = await stack.up();
        assert.deepStrictEqual(changes(up.summary.resourceChanges), { replace: 1 });
        assert.deepStrictEqual(eventLines().slice(2), ["create world", "delete world hello world"]);
    });

    it("a change in the build context updates the image and re-runs the command triggered by its digest", async () => {
        const before = (await stack.outputs()).repoDigest.value;
        fs.writeFileSync(path.join(ctx, "notes.md"), "still ignored\n");
        assert.deepStrictEqual(changes((await stack.preview()).changeSummary), {});
        fs.writeFileSync(path.join(ctx, "payload.txt"), "two\n");
        const up = await stack.up();
        assert.deepStrictEqual(changes(up.summary.resourceChanges), { update: 1, replace: 1 });
        const after = up.outputs.repoDigest.value;
        assert.notStrictEqual(after, before);
        assert.strictEqual(up.outputs.loadStdout.value, after);
    });

    it("up again changes nothing", async () => {
        const n = eventLines().length;
        const up = await stack.up();
        assert.deepStrictEqual(changes(up.summary.resourceChanges), {});
        assert.strictEqual(eventLines().length, n);
    });

    it("destroy runs the delete command", async () => {
        const d = await stack.destroy();
        assert.deepStrictEqual(changes(d.summary.resourceChanges), { delete: 5 });
        assert.strictEqual(eventLines().pop(), "delete world hello world");
    });

    it("a failing command fails the up with its exit status, stdout and stderr", async () => {
        await assert.rejects(failing.up(), (e: Error) => {
            assert.match(e.message, /exit status 7: running "echo out-line; echo err-line >&2; exit 7"/);
            assert.match(e.message, /out-line/);
            assert.match(e.message, /err-line/);
            return true;
        });
    });
});
