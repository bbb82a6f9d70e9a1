import * as assert from "assert";
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ROOT } from "./harness";

/** A bin directory with the basic tools scripts/up needs, plus fake commands (name -> shell body). */
function binDir(fakes: Record<string, string>): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bin-"));
    for (const tool of ["bash", "sed", "tr", "head", "id", "dirname", "env"]) {
        const real = ["/usr/bin", "/bin"].map((d) => path.join(d, tool)).find((p) => fs.existsSync(p));
        assert.ok(real, `${tool} not found on this machine`);
        fs.symlinkSync(real, path.join(dir, tool));
    }
    fs.symlinkSync(process.execPath, path.join(dir, "node"));
    for (const [name, body] of Object.entries(fakes)) {
        fs.writeFileSync(path.join(dir, name), `#!${path.join(dir, "bash")}\n${body}\n`, { mode: 0o755 });
    }
    return dir;
}

function check(stack: string, fakes: Record<string, string>) {
    const bin = binDir(fakes);
    return spawnSync(path.join(bin, "bash"), [path.join(ROOT, "scripts/up"), stack], {
        encoding: "utf8",
        env: { PATH: bin, HOME: os.homedir(), OPS_DEMO_CHECK_ONLY: "1" },
        timeout: 30000,
    });
}

const ALL = { docker: "exit 0", npm: "exit 0", pulumi: "exit 0", k3s: "exit 0", kubectl: "exit 0" };

describe("scripts/up prerequisites", () => {
    it("passes when everything for the dev stack is there", () => {
        const r = check("dev", ALL);
        assert.strictEqual(r.status, 0, r.stderr);
        assert.match(r.stdout, /prerequisites for the dev stack: ok/);
    });

    it("names a missing Pulumi CLI and how to install it", () => {
        const { pulumi: _omit, ...rest } = ALL;
        const r = check("dev", rest);
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /pulumi: not found\. Install the Pulumi CLI: curl -fsSL https:\/\/get\.pulumi\.com \| sh/);
        assert.doesNotMatch(r.stderr, /docker:/);
        assert.match(r.stderr, /then run scripts\/up dev again/);
    });

    it("names an unreachable Docker daemon and a missing Docker", () => {
        let r = check("dev", { ...ALL, docker: '[ "$1" = info ] && exit 1; exit 0' });
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /docker: installed but the daemon is not reachable/);
        const { docker: _omit, ...rest } = ALL;
        r = check("dev", rest);
        assert.match(r.stderr, /docker: not found\. Every stack builds its images with Docker.*install Docker Engine/);
    });

    it("asks for k3s and kubectl only for the k3s stack", () => {
        const { k3s: _a, kubectl: _b, ...rest } = ALL;
        assert.strictEqual(check("dev", rest).status, 0);
        const r = check("k3s", rest);
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, /k3s: not found\. Install it: curl -sfL https:\/\/get\.k3s\.io/);
        assert.match(r.stderr, /kubectl: not found/);
    });

    it("points DOCKER_HOST at the current docker context's endpoint (colima, Rancher Desktop, rootless)", () => {
        const colima = "unix:///home/u/.colima/default/docker.sock";
        const docker = `[ "$1 $2" = "context inspect" ] && { echo ${colima}; exit 0; }
[ "$1" = info ] && { [ "$DOCKER_HOST" = ${colima} ] && exit 0; echo "Cannot connect to the Docker daemon" >&2; exit 1; }
exit 0`;
        const r = check("dev", { ...ALL, docker });
        assert.strictEqual(r.status, 0, r.stderr);
        assert.match(r.stdout, /using the current docker context's endpoint, DOCKER_HOST=unix:\/\/\/home\/u\/\.colima/);
    });

    it("says that every stack needs Docker, whatever the image loader", () => {
        const { docker: _omit, ...rest } = ALL;
        const r = check("k3s", rest);
        assert.match(r.stderr, /Every stack builds its images with Docker \(also with imageLoader none or registry\)/);
    });

    it("rejects an unknown stack", () => {
        const r = check("prod", ALL);
        assert.strictEqual(r.status, 2);
        assert.match(r.stderr, /unknown stack 'prod' \(allowed: dev, k3s\)/);
    });
});
