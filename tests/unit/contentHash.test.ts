import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { contextFiles, contentHash, imageRef, isIgnored, parseDockerignore } from "../../components/contentHash";
import { buildPlatform, buildSpec } from "../../components/images";
import { tempTree } from "./fixtures";

const spec = (dir: string, args: Record<string, string> = {}) => ({ context: dir, dockerfile: path.join(dir, "Dockerfile"), args });

function context(): string {
    return tempTree({
        Dockerfile: "FROM python:3.11-slim\nCOPY app /app\n",
        ".dockerignore": "# comment\ntests/\n**/__pycache__\n*.log\n!keep.log\n",
        "app/main.py": "print(1)\n",
        "app/__pycache__/main.cpython-311.pyc": "bytecode",
        "tests/test_main.py": "def test(): pass\n",
        "debug.log": "noise",
        "keep.log": "kept",
    });
}

describe("content-addressed image tags", () => {
    it("sends the files Docker would send, honouring .dockerignore and its exceptions", () => {
        assert.deepStrictEqual(contextFiles(context()), [".dockerignore", "Dockerfile", "app/main.py", "keep.log"]);
    });

    it("gives the same tag for the same content in another directory, whatever the mtimes", () => {
        const a = context();
        const b = context();
        fs.utimesSync(path.join(b, "app/main.py"), new Date(2001, 1, 1), new Date(2001, 1, 1));
        assert.strictEqual(imageRef("ops-demo", "training", spec(a)), imageRef("ops-demo", "training", spec(b)));
    });

    it("changes the tag when the app changes", () => {
        const dir = context();
        const before = contentHash(spec(dir));
        fs.writeFileSync(path.join(dir, "app/main.py"), "print(2)\n");
        assert.notStrictEqual(contentHash(spec(dir)), before);
    });

    it("changes the tag when the Dockerfile changes", () => {
        const dir = context();
        const before = contentHash(spec(dir));
        fs.appendFileSync(path.join(dir, "Dockerfile"), "USER 10001:10001\n");
        assert.notStrictEqual(contentHash(spec(dir)), before);
    });

    it("changes the tag when a file is added, or when a build arg changes", () => {
        const dir = context();
        const before = contentHash(spec(dir));
        assert.notStrictEqual(contentHash(spec(dir, { BASE_IMAGE: "python:3.12-slim" })), before);
        fs.writeFileSync(path.join(dir, "app/extra.py"), "");
        assert.notStrictEqual(contentHash(spec(dir)), before);
    });

    it("keeps the tag when only ignored files change", () => {
        const dir = context();
        const before = contentHash(spec(dir));
        fs.writeFileSync(path.join(dir, "tests/test_main.py"), "changed");
        fs.writeFileSync(path.join(dir, "app/__pycache__/other.pyc"), "more bytecode");
        fs.writeFileSync(path.join(dir, "debug.log"), "more noise");
        assert.strictEqual(contentHash(spec(dir)), before);
    });

    it("names images ops-demo:<flavour>-<12 hex>, never latest", () => {
        assert.match(imageRef("ops-demo", "serving", spec(context())), /^ops-demo:serving-[0-9a-f]{12}$/);
    });

    it("matches Docker's pattern rules", () => {
        const rules = parseDockerignore("*.md\n!README.md\ndocs\n/build/\n**/*.tmp\na?c\n");
        const cases: [string, boolean][] = [
            ["CHANGES.md", true],
            ["README.md", false],
            ["sub/CHANGES.md", false], // `*` does not cross directories
            ["docs/x/y.txt", true],
            ["build/out.bin", true],
            ["x/y/z.tmp", true],
            ["z.tmp", true],
            ["abc", true],
            ["abbc", false],
            ["src/main.py", false],
        ];
        for (const [p, ignored] of cases) {
            assert.strictEqual(isIgnored(p, rules), ignored, p);
        }
    });

    it("fails clearly when an image's Dockerfile is missing", () => {
        const dir = tempTree({ "serving/Dockerfile": "FROM scratch\n" });
        assert.throws(() => buildSpec(dir, "training", ""), /image training: .*training\/Dockerfile not found/);
        assert.deepStrictEqual(buildSpec(dir, "serving", "python:3.12").args, { BASE_IMAGE: "python:3.12" });
        assert.deepStrictEqual(buildSpec(dir, "serving", "").args, {});
        // pipNoIndex: pip installs only from the context's wheels/ (offline builds); the tag changes with it
        assert.deepStrictEqual(buildSpec(dir, "serving", "python:3.12", true).args, { BASE_IMAGE: "python:3.12", PIP_NO_INDEX: "1" });
        assert.strictEqual(buildPlatform("x64"), "linux/amd64");
        assert.strictEqual(buildPlatform("arm64"), "linux/arm64");
    });
});
