import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { projectDeclarations, ROOT } from "./harness";

/** The reference page that holds the config table (README.md links it). */
const CONFIG_PAGE = "docs/configuration.md";

function read(file: string): string {
    return fs.readFileSync(path.join(ROOT, file), "utf8");
}

/** The rows of the config table of docs/configuration.md: key -> [type, default, description]. */
function configTable(): Map<string, [string, string, string]> {
    const text = read(CONFIG_PAGE);
    const m = /<!-- config-table:start -->\n([\s\S]*?)<!-- config-table:end -->/.exec(text);
    assert.ok(m, `${CONFIG_PAGE} has no config table between the markers`);
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

/** The documentation pages: README.md and every docs/*.md. */
function markdownPages(): string[] {
    const docs = fs.readdirSync(path.join(ROOT, "docs")).filter((f) => f.endsWith(".md")).sort();
    return ["README.md", ...docs.map((f) => `docs/${f}`)];
}

/** Markdown without fenced code blocks and inline code (neither holds headings or links). */
function prose(text: string): string {
    return text.replace(/^```[\s\S]*?^```/gm, "").replace(/`[^`\n]*`/g, "");
}

/** GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to hyphens). */
function anchors(text: string): Set<string> {
    const seen = new Set<string>();
    for (const m of prose(text).matchAll(/^#{1,6} +(.+?) *$/gm)) {
        const base = m[1].toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/ /g, "-");
        let slug = base;
        for (let n = 1; seen.has(slug); n++) {
            slug = `${base}-${n}`;
        }
        seen.add(slug);
    }
    return seen;
}

describe("README.md and docs/", () => {
    it("docs/configuration.md documents exactly the config keys of Pulumi.yaml, with their types, defaults and descriptions", () => {
        const rows = configTable();
        const decls = projectDeclarations();
        assert.deepStrictEqual([...rows.keys()].sort(), Object.keys(decls).sort());
        for (const [key, d] of Object.entries(decls)) {
            const [type, def, description] = rows.get(key)!;
            assert.strictEqual(type, d.type === "array" ? `array of ${d.items?.type}` : d.type, `type of ${key}`);
            assert.strictEqual(def, JSON.stringify(d.default), `default of ${key}`);
            assert.strictEqual(description, d.description, `description of ${key}`);
        }
    });

    it("README names the commands it tells users to run", () => {
        const text = read("README.md");
        const pkg = JSON.parse(read("package.json"));
        for (const script of ["test", "test:unit", "lint", "render", "up"]) {
            assert.ok(pkg.scripts[script], `package.json has no ${script} script`);
            assert.ok(text.includes(`npm ${script === "test" ? "test" : `run ${script}`}`) || text.includes(`npm run ${script}`), `README does not mention ${script}`);
        }
        for (const file of ["scripts/up", "scripts/preview", "scripts/destroy"]) {
            assert.ok(fs.existsSync(path.join(ROOT, file)) && text.includes(file), file);
        }
    });

    it("README names every test tier that npm test runs", () => {
        const m = /^\[ \$\{#tiers\[@\]\} -gt 0 \] \|\| tiers=\(([^)]*)\)$/m.exec(read("scripts/test"));
        assert.ok(m, "scripts/test has no default tier list");
        const text = read("README.md");
        for (const tier of m[1].trim().split(/\s+/)) {
            assert.ok(text.includes(`\`${tier}\``), `README does not name the tier ${tier}`);
        }
    });

    it("README links every page under docs/", () => {
        const text = read("README.md");
        for (const page of markdownPages().slice(1)) {
            assert.ok(text.includes(`](${page})`), `README does not link ${page}`);
        }
    });

    it("every relative link of README.md and docs/*.md reaches a file, and a heading where it names one", () => {
        const broken: string[] = [];
        for (const page of markdownPages()) {
            const text = read(page);
            for (const m of prose(text).matchAll(/\]\(([^)\s]+)\)/g)) {
                const target = m[1];
                if (/^[a-z]+:/i.test(target)) {
                    continue;
                }
                const [file, anchor] = target.split("#", 2);
                const resolved = file === "" ? page : path.posix.normalize(path.posix.join(path.posix.dirname(page), file));
                if (!fs.existsSync(path.join(ROOT, resolved))) {
                    broken.push(`${page}: ${target} (no ${resolved})`);
                } else if (anchor !== undefined && resolved.endsWith(".md") && !anchors(read(resolved)).has(anchor)) {
                    broken.push(`${page}: ${target} (no heading #${anchor} in ${resolved})`);
                }
            }
        }
        assert.deepStrictEqual(broken, []);
    });
});
