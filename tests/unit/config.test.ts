import * as assert from "assert";
import * as os from "os";
import { DEFAULTS, expandHome, loadConfig, parseIntStrict } from "../../components/config";
import { configProblems, imagesDir } from "./fixtures";
import { cliTypeProblem, projectDeclarations, runProgram, stackConfig, stackFileConfig } from "./harness";

/** loadConfig over a plain map (short keys), without the unknown-key check that reads the Pulumi runtime. */
const load = (values: Record<string, string>, home = "/home/u") => loadConfig((k) => values[k], home, false);

/** The problems loadConfig reports for `values`. */
const problems = configProblems;

describe("config", () => {
    it("has the defaults of DESIGN.md when nothing is set", () => {
        const c = load({});
        assert.strictEqual(c.nEstimators, 100);
        assert.strictEqual(c.maxDepth, 5);
        assert.strictEqual(c.runName, "baseline");
        assert.strictEqual(c.servingReplicas, 2);
        assert.strictEqual(c.storageDir, "/home/u/ops-demo-data/mlops");
        assert.deepStrictEqual(c.runs, [{ runName: "baseline", nEstimators: 100, maxDepth: 5 }]);
    });

    it("declares every key in Pulumi.yaml with type, description and the same default as the program", () => {
        const decls = projectDeclarations();
        assert.deepStrictEqual(Object.keys(decls).sort(), Object.keys(DEFAULTS).sort());
        for (const [k, d] of Object.entries(decls)) {
            assert.ok(d.type, `${k} has no type`);
            assert.ok(d.description && d.description.length > 10, `${k} has no description`);
            assert.deepStrictEqual(d.default, (DEFAULTS as Record<string, unknown>)[k], `default of ${k}`);
        }
    });

    it("declares no key both secret and with a default (the real CLI then refuses every preview and up)", () => {
        // the real check is the real CLI's preview in the real-cluster tier (tests/real); this one is cheap
        for (const [k, d] of Object.entries(projectDeclarations() as Record<string, { secret?: boolean; default?: unknown }>)) {
            assert.ok(!(d.secret === true && d.default !== undefined), `${k} is declared secret: true with a default`);
        }
    });

    for (const stack of ["dev", "k3s"]) {
        it(`Pulumi.${stack}.yaml sets only declared keys of the project, with values of the declared types`, () => {
            const decls = projectDeclarations();
            const raw = stackFileConfig(stack);
            assert.ok(Object.keys(raw).length >= 4);
            for (const [k, v] of Object.entries(raw)) {
                assert.match(k, /^ops-demo:/, `${k} is not namespaced`);
                const decl = decls[k.slice("ops-demo:".length)];
                assert.ok(decl, `${k} is not declared in Pulumi.yaml`);
                assert.strictEqual(cliTypeProblem(k, decl, v), undefined);
            }
            const cfg = loadConfig((k) => stackConfig(stack)[`ops-demo:${k}`], "/home/u", false);
            assert.strictEqual(cfg.cluster, stack === "dev" ? "embedded" : "existing");
            assert.strictEqual(cfg.imageLoader, stack === "dev" ? "embedded" : "k3s");
            assert.strictEqual(cfg.servingReplicas, 2);
        });
    }

    it("checks stack values against the declared types as the CLI does", () => {
        assert.match(String(cliTypeProblem("ops-demo:nEstimators", { type: "integer" }, "abc")), /is not of type integer/);
        assert.match(String(cliTypeProblem("ops-demo:sudo", { type: "boolean" }, "yes")), /is not of type boolean/);
        assert.match(String(cliTypeProblem("ops-demo:experiments", { type: "array", items: { type: "string" } }, [{ runName: "a" }])), /not of type array/);
        assert.strictEqual(cliTypeProblem("ops-demo:experiments", { type: "array", items: { type: "string" } }, ["runName=a"]), undefined);
        assert.strictEqual(cliTypeProblem("ops-demo:nEstimators", { type: "integer" }, 300), undefined);
    });

    const cases: [Record<string, string>, string, RegExp][] = [
        [{ nEstimators: "abc" }, "nEstimators", /ops-demo:nEstimators = "abc": must be a whole number from 1 to 10000/],
        [{ nEstimators: "-5" }, "nEstimators", /ops-demo:nEstimators = "-5": must be a whole number from 1/],
        [{ nEstimators: "2.5" }, "nEstimators", /ops-demo:nEstimators = "2.5": must be a whole number/],
        [{ maxDepth: "0" }, "maxDepth", /ops-demo:maxDepth = "0": must be a whole number from 1 to 1000/],
        [{ servingReplicas: "many" }, "servingReplicas", /ops-demo:servingReplicas = "many"/],
        [{ cluster: "minikube" }, "cluster", /ops-demo:cluster = "minikube": must be one of existing, embedded/],
        [{ imageLoader: "docker-hub" }, "imageLoader", /ops-demo:imageLoader = "docker-hub": must be one of k3s, embedded, kind, registry, none/],
        [{ promotionPolicy: "sometimes" }, "promotionPolicy", /must be one of always, better/],
        [{ sudo: "yes" }, "sudo", /ops-demo:sudo = "yes": must be true or false/],
        [{ runName: "  " }, "runName", /ops-demo:runName = " {2}": must be a non-empty string/],
        [{ storageDir: "data/mlops" }, "storageDir", /ops-demo:storageDir = "data\/mlops": must be an absolute path/],
        [{ k3sImage: "rancher/k3s" }, "k3sImage", /must be an image reference with a pinned tag/],
        [{ cluster: "embedded", imageLoader: "k3s" }, "imageLoader", /ops-demo:imageLoader = "k3s": must be embedded, registry or none when cluster=embedded/],
        [{ imageLoader: "embedded" }, "imageLoader", /embedded needs cluster=embedded/],
        [{ cluster: "embedded", imageLoader: "embedded", apiPort: "5050" }, "mlflowHostPort", /must differ from apiPort/],
    ];
    for (const [values, key, message] of cases) {
        it(`rejects ${JSON.stringify(values)} naming ${key}, the value and what is allowed`, () => {
            const p = problems(values);
            assert.ok(p.some((x) => message.test(x)), `no problem matches ${message}: ${JSON.stringify(p)}`);
        });
    }

    it("reports every problem at once", () => {
        assert.strictEqual(problems({ nEstimators: "abc", maxDepth: "0", cluster: "x" }).length, 3);
    });

    describe("experiments", () => {
        it("reads a list of key=value runs, numbers defaulting to the top-level keys", () => {
            const c = load({
                nEstimators: "150",
                experiments: JSON.stringify(["runName=more-trees,nEstimators=200", "runName=deeper,maxDepth=20", "runName=optimized,nEstimators=300,maxDepth=15"]),
            });
            assert.deepStrictEqual(c.runs, [
                { runName: "more-trees", nEstimators: 200, maxDepth: 5 },
                { runName: "deeper", nEstimators: 150, maxDepth: 20 },
                { runName: "optimized", nEstimators: 300, maxDepth: 15 },
            ]);
        });

        it("also reads objects (structured config)", () => {
            const c = load({ experiments: JSON.stringify([{ runName: "a", nEstimators: 7 }]) });
            assert.deepStrictEqual(c.runs, [{ runName: "a", nEstimators: 7, maxDepth: 5 }]);
        });

        it("falls back to the single run when empty", () => {
            assert.strictEqual(load({ experiments: "[]" }).runs.length, 1);
        });

        const bad: [string, RegExp][] = [
            ["not json", /ops-demo:experiments = "not json": is not a list/],
            ['{"runName":"a"}', /ops-demo:experiments = \{"runName":"a"\}: must be a list of runs/],
            ['["just-a-name"]', /ops-demo:experiments\[0\] = "just-a-name": must be a list of runs/],
            ['["runName=a,nEstimators=abc"]', /ops-demo:experiments\[0\]\.nEstimators = "abc": must be a whole number from 1/],
            ['["runName=a,maxDepth=0"]', /ops-demo:experiments\[0\]\.maxDepth = "0"/],
            ['["nEstimators=5"]', /ops-demo:experiments\[0\]\.runName = undefined: must be a non-empty string/],
            ['["runName=a,depth=3"]', /ops-demo:experiments\[0\]\.depth = "3": unknown field; allowed fields are runName, nEstimators, maxDepth/],
            ['["runName=a","runName=a,nEstimators=9"]', /ops-demo:experiments\[1\]\.runName = "a": must be unique/],
        ];
        for (const [raw, message] of bad) {
            it(`rejects ${raw}`, () => {
                const p = problems({ experiments: raw });
                assert.ok(p.some((x) => message.test(x)), `no problem matches ${message}: ${JSON.stringify(p)}`);
            });
        }
    });

    it("expands $HOME, ${HOME} and ~ on the machine running the program", () => {
        assert.strictEqual(expandHome("$HOME/ops-demo-data/mlops", "/h"), "/h/ops-demo-data/mlops");
        assert.strictEqual(expandHome("${HOME}/x", "/h"), "/h/x");
        assert.strictEqual(expandHome("~/x", "/h"), "/h/x");
        assert.strictEqual(expandHome("/srv/$HOMEDIR", "/h"), "/srv/$HOMEDIR");
        assert.strictEqual(expandHome("$HOME/x"), `${os.homedir()}/x`);
    });

    it("parses only whole decimal numbers", () => {
        assert.strictEqual(parseIntStrict("42"), 42);
        assert.strictEqual(parseIntStrict(" 7 "), 7);
        for (const v of ["abc", "2.5", "1e3", "", "0x10", "12abc"]) {
            assert.strictEqual(parseIntStrict(v), undefined, v);
        }
    });

    describe("in the program (validated before any resource is declared)", () => {
        const images = imagesDir();
        for (const [key, value, shown] of [
            ["nEstimators", "abc", '"abc"'],
            ["maxDepth", "0", '"0"'],
            ["cluster", "gke", '"gke"'],
            ["imageLoader", "ftp", '"ftp"'],
            ["experiments", '["runName=x,nEstimators=-1"]', 'experiments[0].nEstimators = "-1"'],
        ]) {
            it(`pulumi up with ${key}=${value} fails with the key's message and declares nothing`, async () => {
                await assert.rejects(
                    runProgram(stackConfig("k3s", { [key]: value }), "k3s", { OPS_DEMO_IMAGES_DIR: images }),
                    (e: Error & { declared?: number }) => {
                        assert.ok(e.message.includes(`ops-demo:${key}`) && e.message.includes(shown), e.message);
                        assert.ok(/must be/.test(e.message), e.message);
                        assert.strictEqual(e.declared, 0, "resources were declared before validation");
                        return true;
                    },
                );
            });
        }

        it("rejects an unknown key of the project (a typo) naming the known ones", async () => {
            await assert.rejects(
                runProgram(stackConfig("k3s", { nEstimator: "300" }), "k3s", { OPS_DEMO_IMAGES_DIR: images }),
                /ops-demo:nEstimator = "300": unknown key; known keys are nEstimators, maxDepth/,
            );
        });
    });
});
