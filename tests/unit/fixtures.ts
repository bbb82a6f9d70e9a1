/** Temporary build contexts for the tests (the real images/ belong to the images' own issue). */
import * as assert from "assert";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ConfigError, loadConfig } from "../../components/config";
import { ProgramRun, runProgram, stackConfig } from "./harness";

/** Writes `files` (relative path -> content) under a new temp directory and returns it. */
export function tempTree(files: Record<string, string>): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ops-demo-test-"));
    for (const [rel, content] of Object.entries(files)) {
        const abs = path.join(dir, rel);
        fs.mkdirSync(path.dirname(abs), { recursive: true });
        fs.writeFileSync(abs, content);
    }
    return dir;
}

/** An images/ directory with a training and a serving build context. */
export function imagesDir(): string {
    return tempTree({
        "training/Dockerfile": "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\nCOPY trainer /app/trainer\nUSER 10001:10001\n",
        "training/.dockerignore": "tests\n**/__pycache__\n",
        "training/trainer/__main__.py": "print('train')\n",
        "training/tests/test_x.py": "def test(): pass\n",
        "serving/Dockerfile": "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\nCOPY app /app/app\nUSER 10001:10001\n",
        "serving/app/serve.py": "print('serve')\n",
    });
}

/** The problems loadConfig reports for `values` (short keys, no unknown-key check); fails when it accepts them. */
export function configProblems(values: Record<string, string>): string[] {
    try {
        loadConfig((k) => values[k], "/home/u", false);
    } catch (e) {
        assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
        return (e as ConfigError).problems;
    }
    assert.fail(`expected ${JSON.stringify(values)} to be rejected`);
}

/** A loader that runs the program as stack `stack` (its stack file plus `set`) over one temporary images/ tree. */
export function stackLoader(): (stack: string, set?: Record<string, string>) => Promise<ProgramRun> {
    const images = imagesDir();
    return (stack, set = {}) => runProgram(stackConfig(stack, set), stack, { OPS_DEMO_IMAGES_DIR: images });
}
