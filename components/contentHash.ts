/**
 * Content version of a Docker build: a hash over the files of the build context that Docker would
 * send (honouring .dockerignore), the Dockerfile and the build args. The image tag carries it, so a
 * changed Dockerfile or app gives a new tag and nothing else does (not a touch, not a rebuild).
 */
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";

/** One .dockerignore rule, compiled. */
export interface IgnoreRule {
    readonly negate: boolean;
    readonly regex: RegExp;
}

/** Translates one Docker pattern (Go filepath.Match syntax plus `**`) into a regular expression. */
function patternToRegex(pattern: string): RegExp {
    let re = "";
    for (let i = 0; i < pattern.length; i++) {
        const c = pattern[i];
        if (c === "*") {
            if (pattern[i + 1] === "*") {
                // `**` matches any number of path segments, including none.
                i++;
                if (pattern[i + 1] === "/") {
                    i++;
                    re += "(?:.*/)?";
                } else {
                    re += ".*";
                }
            } else {
                re += "[^/]*";
            }
        } else if (c === "?") {
            re += "[^/]";
        } else if (c === "[") {
            const end = pattern.indexOf("]", i + 1);
            if (end < 0) {
                re += "\\[";
            } else {
                let cls = pattern.slice(i + 1, end).replace(/\\/g, "\\\\");
                if (cls.startsWith("^") || cls.startsWith("!")) {
                    cls = "^" + cls.slice(1);
                }
                re += `[${cls}]`;
                i = end;
            }
        } else if (c === "\\" && i + 1 < pattern.length) {
            i++;
            re += pattern[i].replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
        } else {
            re += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
        }
    }
    // A pattern that matches a directory excludes everything below it.
    return new RegExp(`^${re}(?:/.*)?$`);
}

/** Parses .dockerignore text into rules (comments, blank lines, `!` exceptions, leading `/` and `./`). */
export function parseDockerignore(text: string): IgnoreRule[] {
    const rules: IgnoreRule[] = [];
    for (const rawLine of text.split(/\r?\n/)) {
        let line = rawLine.trim();
        if (line === "" || line.startsWith("#")) {
            continue;
        }
        let negate = false;
        if (line.startsWith("!")) {
            negate = true;
            line = line.slice(1).trim();
        }
        line = path.posix.normalize(line).replace(/^(\.\/)+/, "").replace(/^\/+/, "").replace(/\/+$/, "");
        if (line === "" || line === ".") {
            continue;
        }
        rules.push({ negate, regex: patternToRegex(line) });
    }
    return rules;
}

/** Docker's rule: the last matching pattern decides. */
export function isIgnored(relPath: string, rules: readonly IgnoreRule[]): boolean {
    let ignored = false;
    for (const rule of rules) {
        if (rule.regex.test(relPath)) {
            ignored = !rule.negate;
        }
    }
    return ignored;
}

/** The files (relative POSIX paths, sorted) of a build context that Docker would send. */
export function contextFiles(contextDir: string): string[] {
    const ignorePath = path.join(contextDir, ".dockerignore");
    const rules = fs.existsSync(ignorePath) ? parseDockerignore(fs.readFileSync(ignorePath, "utf8")) : [];
    const out: string[] = [];
    const walk = (dirRel: string): void => {
        const abs = path.join(contextDir, dirRel);
        for (const entry of fs.readdirSync(abs, { withFileTypes: true })) {
            const rel = dirRel === "" ? entry.name : `${dirRel}/${entry.name}`;
            if (entry.isDirectory()) {
                // Descend even into ignored directories: an exception (`!dir/keep`) may re-include a file.
                walk(rel);
            } else if (!isIgnored(rel, rules)) {
                out.push(rel);
            }
        }
    };
    walk("");
    return out.sort();
}

/** Inputs of one build's content version. */
export interface BuildSpec {
    /** The build context directory. */
    readonly context: string;
    /** The Dockerfile (absolute, or relative to the context). */
    readonly dockerfile: string;
    /** Build args passed to `docker build`. */
    readonly args: Readonly<Record<string, string>>;
}

/** sha256 over the context files (path, executable bit, bytes), the Dockerfile and the build args; 64 hex chars. */
export function contentHash(spec: BuildSpec): string {
    const h = crypto.createHash("sha256");
    const feed = (label: string, data: string | Buffer): void => {
        const buf = typeof data === "string" ? Buffer.from(data, "utf8") : data;
        h.update(`${label}\0${buf.length}\0`);
        h.update(buf);
    };
    for (const rel of contextFiles(spec.context)) {
        const abs = path.join(spec.context, rel);
        const exec = (fs.statSync(abs).mode & 0o111) !== 0 ? "x" : "-";
        feed(`file:${exec}:${rel}`, fs.readFileSync(abs));
    }
    const dockerfile = path.resolve(spec.context, spec.dockerfile);
    feed("dockerfile", fs.readFileSync(dockerfile));
    const args = Object.keys(spec.args)
        .sort()
        .map((k) => [k, spec.args[k]]);
    feed("args", JSON.stringify(args));
    return h.digest("hex");
}

/** `ops-demo:<flavour>-<first 12 hex of the content hash>`. */
export function imageRef(repository: string, flavour: string, spec: BuildSpec): string {
    return `${repository}:${flavour}-${contentHash(spec).slice(0, 12)}`;
}
