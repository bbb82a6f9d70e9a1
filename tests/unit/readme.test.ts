import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { projectDeclarations, ROOT } from "./harness";

/** The rows of README.md's config table: key -> [type, default, description]. */
function readmeTable(): Map<string, [string, string, string]> {
    const text = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
    const m = /<!-- config-table:start -->\n([\s\S]*?)<!-- config-table:end -->/.exec(text);
    assert.ok(m, "README.md has no config table between the markers");
    const rows = new Map<string, [string, string, string]>();
    for (const line of m[1].split("\n").slice(2)) {
        if (line.trim() === "") {
            continue;
        }
        const cells = line.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim().replace(/\\\|/g, "|"));
        assert.strictEqual(cells.length, 4, `malformed row: ${line}`);
        rows.set(cells[0].replace(/`/g, ""), [cells[1], cells[2].replace(/^`|`$/g, ""), cells[3]]);
    }
    return rows;
}

describe("README.md", () => {
    it("documents exactly the config keys of Pulumi.yaml, with their types, defaults and descriptions", () => {
        const rows = readmeTable();
        const decls = projectDeclarations();
        assert.deepStrictEqual([...rows.keys()].sort(), Object.keys(decls).sort());
        for (const [key, d] of Object.entries(decls)) {
            const [type, def, description] = rows.get(key)!;
            assert.strictEqual(type, d.type === "array" ? `array of ${d.items?.type}` : d.type, `type of ${key}`);
            assert.strictEqual(def, JSON.stringify(d.default), `default of ${key}`);
            assert.strictEqual(description, d.description, `description of ${key}`);
        }
    });

    it("names the commands it tells users to run", () => {
        const text = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
        const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
        for (const script of ["test", "test:unit", "lint", "render", "up"]) {
            assert.ok(pkg.scripts[script], `package.json has no ${script} script`);
            assert.ok(text.includes(`npm ${script === "test" ? "test" : `run ${script}`}`) || text.includes(`npm run ${script}`), `README does not mention ${script}`);
        }
        for (const file of ["scripts/up", "scripts/preview", "scripts/destroy"]) {
            assert.ok(fs.existsSync(path.join(ROOT, file)) && text.includes(file), file);
        }
    });
});
