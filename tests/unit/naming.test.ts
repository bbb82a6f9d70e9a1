import * as assert from "assert";
import { isDnsLabel, jobName, labelValue } from "../../components/naming";

const run = (runName: string, nEstimators = 100, maxDepth = 5) => ({ runName, nEstimators, maxDepth });
const IMAGE = "ops-demo:training-0123456789ab";

describe("training Job names", () => {
    const names = [
        "baseline",
        "experiment-001",
        "Optimized Run #3 (300 trees, depth 15)",
        "über_modèle/한국어 실험",
        "한국어",
        "---",
        "x".repeat(250),
        "UPPER.case.dots",
        "-leading-and-trailing-",
    ];
    for (const n of names) {
        it(`is a DNS-1123 label of at most 63 characters for ${JSON.stringify(n.length > 40 ? n.slice(0, 20) + "..." : n)}`, () => {
            const j = jobName(run(n), IMAGE, "always");
            assert.ok(isDnsLabel(j), j);
            assert.ok(j.length <= 63, `${j} has ${j.length} characters`);
            assert.ok(j.startsWith("iris-training-"), j);
        });
    }

    it("keeps a readable run name in it", () => {
        assert.match(jobName(run("experiment-001"), IMAGE, "always"), /^iris-training-experiment-001-[0-9a-f]{8}$/);
        assert.match(jobName(run("한국어"), IMAGE, "always"), /^iris-training-[0-9a-f]{8}$/);
    });

    it("is the same for the same run (no new Job on an unchanged pulumi up)", () => {
        assert.strictEqual(jobName(run("baseline"), IMAGE, "always"), jobName(run("baseline"), IMAGE, "always"));
    });

    it("changes with nEstimators, maxDepth, the run name, the image and the promotion policy", () => {
        const base = jobName(run("baseline"), IMAGE, "always");
        const variants = [
            jobName(run("baseline", 300), IMAGE, "always"),
            jobName(run("baseline", 100, 6), IMAGE, "always"),
            jobName(run("baseline2"), IMAGE, "always"),
            jobName(run("baseline"), "ops-demo:training-ffffffffffff", "always"),
            jobName(run("baseline"), IMAGE, "better"),
        ];
        assert.strictEqual(new Set([base, ...variants]).size, variants.length + 1);
    });

    it("keeps distinct names for long run names that differ only at the end", () => {
        const long = "a".repeat(80);
        assert.notStrictEqual(jobName(run(long + "1"), IMAGE, "always"), jobName(run(long + "2"), IMAGE, "always"));
    });

    it("derives valid label values from any text", () => {
        for (const n of ["Optimized Run #3", "x".repeat(100), "-a-", "한국어 run"]) {
            const v = labelValue(n);
            assert.ok(v.length <= 63 && /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/.test(v), `${n} -> ${v}`);
        }
    });
});
