import { storageKey } from "../../components/storage";
/** Outgrowing one machine: the registry image loader, shared storage on NFS, MLflow on PostgreSQL. */
import * as assert from "assert";
import { loadConfig } from "../../components/config";
import { dockerConfigJson } from "../../components/registry";
import { configProblems, stackLoader } from "./fixtures";
import { findResource, ofType, ProgramRun, Recorded } from "./harness";

/* eslint-disable @typescript-eslint/no-explicit-any */
const load = stackLoader();
const inputs = (r: Recorded): any => r.inputs;
const K = {
    image: "docker:index/image:Image",
    cmd: "command:local:Command",
    deploy: "kubernetes:apps/v1:Deployment",
    job: "kubernetes:batch/v1:Job",
    secret: "kubernetes:core/v1:Secret",
};
const workloads = (run: ProgramRun) => [...ofType(run.resources, K.deploy), ...ofType(run.resources, K.job)];

const problems = configProblems;

describe("imageLoader=registry", () => {
    const REG = { imageLoader: "registry", registry: "registry.example.com:5000/team" };

    it("pushes <registry>/ops-demo:<flavour>-<hash>, imports nothing, and pods pull the pushed digest with IfNotPresent", async () => {
        const run = await load("k3s", REG);
        const images = ofType(run.resources, K.image).map(inputs);
        assert.deepStrictEqual(
            images.map((i) => i.imageName.replace(/-[0-9a-f]{12}$/, "")).sort(),
            ["registry.example.com:5000/team/ops-demo:serving", "registry.example.com:5000/team/ops-demo:training"],
        );
        for (const i of images) {
            assert.strictEqual(i.skipPush, false);
            assert.deepStrictEqual(i.registry, { server: "registry.example.com:5000" });
        }
        assert.deepStrictEqual(ofType(run.resources, K.cmd).filter((c) => c.name.startsWith("image-import")), []);
        for (const w of workloads(run)) {
            const spec = inputs(w).spec.template.spec;
            const c = spec.containers[0];
            assert.match(c.image, /^registry\.example\.com:5000\/team\/ops-demo@sha256:[0-9a-f]{64}$/, `${w.name} pulls by digest`);
            assert.strictEqual(c.imagePullPolicy, "IfNotPresent");
            assert.strictEqual(spec.imagePullSecrets, undefined, "anonymous pulls: no pull secret");
        }
        assert.strictEqual(ofType(run.resources, K.secret).length, 0);
        const training = inputs(findResource(run.resources, K.image, "images-training")).imageName;
        assert.strictEqual(inputs(findResource(run.resources, K.deploy, "mlflow-deployment")).spec.template.spec.containers[0].image.split("@")[0], training.split(":").slice(0, -1).join(":"));
    });

    it("with credentials: pushes with them and gives both namespaces a dockerconfigjson pull Secret that every pod names", async () => {
        const run = await load("k3s", { ...REG, registryUsername: "ci", registryPassword: "s3cr3t" });
        for (const i of ofType(run.resources, K.image).map(inputs)) {
            assert.deepStrictEqual(i.registry, { server: "registry.example.com:5000", username: "ci", password: "s3cr3t" });
        }
        const secrets = ofType(run.resources, K.secret).map(inputs);
        assert.deepStrictEqual(secrets.map((s) => s.metadata.namespace).sort(), ["mlops-serving", "mlops-training"]);
        for (const s of secrets) {
            assert.strictEqual(s.metadata.name, "ops-demo-registry");
            assert.strictEqual(s.type, "kubernetes.io/dockerconfigjson");
            const doc = JSON.parse(s.stringData[".dockerconfigjson"]);
            assert.deepStrictEqual(doc, { auths: { "registry.example.com:5000": { username: "ci", password: "s3cr3t", auth: Buffer.from("ci:s3cr3t").toString("base64") } } });
        }
        for (const w of workloads(run)) {
            assert.deepStrictEqual(inputs(w).spec.template.spec.imagePullSecrets, [{ name: "ops-demo-registry" }], w.name);
        }
    });

    it("keeps the password a Pulumi secret on the image and in the pull Secret", async () => {
        // The mocks record inputs with secrets unwrapped; the registered resource state keeps the marker.
        const run = await load("k3s", { ...REG, registryUsername: "ci", registryPassword: "s3cr3t" });
        const image = run.registered.find((r) => r.name === "images-serving")!;
        const secret = run.registered.find((r) => r.type === "kubernetes:core/v1:Secret")!;
        // Pulumi's serialized secret: {<signature>: <secret sig>, value}.
        const secretValue = (v: any) => (v && v["4dabf18193072939515e22adb298388d"] === "1b47061264138c4ac30d75fd1eb44270" ? v.value : undefined);
        assert.strictEqual(secretValue((image.state as any).registry)?.password, "s3cr3t", "the image's registry (with the password) is secret");
        assert.match(secretValue((secret.state as any).stringData)?.[".dockerconfigjson"] ?? "", /s3cr3t/, "the dockerconfigjson is secret");
        assert.strictEqual(secretValue((image.state as any).imageName), undefined, "non-secret inputs stay plain (the check can fail)");
    });

    it("works with the embedded cluster (its k3s pulls from the registry)", async () => {
        const run = await load("dev", REG);
        assert.strictEqual(ofType(run.resources, K.cmd).filter((c) => c.name.startsWith("image-import")).length, 0);
        assert.match(inputs(findResource(run.resources, K.deploy, "serving-deployment")).spec.template.spec.containers[0].image, /@sha256:/);
    });

    it("the other loaders never push", async () => {
        const run = await load("k3s");
        for (const i of ofType(run.resources, K.image).map(inputs)) {
            assert.strictEqual(i.skipPush, true);
            assert.strictEqual(i.registry, undefined);
        }
    });

    it("rejects a missing or malformed registry, registry keys without the loader, and half the credentials", () => {
        assert.deepStrictEqual(problems({ imageLoader: "registry" }), [
            'ops-demo:registry = "": must be set when imageLoader=registry, e.g. registry.example.com/team',
        ]);
        assert.match(problems({ imageLoader: "registry", registry: "https://registry.example.com" })[0], /ops-demo:registry = "https:\/\/registry\.example\.com": must be a registry host .* without scheme or tag/);
        assert.match(problems({ imageLoader: "registry", registry: "registry.example.com/team:v1" })[0], /ops-demo:registry = .*without scheme or tag/);
        assert.match(problems({ registry: "registry.example.com" })[0], /ops-demo:registry = "registry\.example\.com": is used only with imageLoader=registry/);
        const p = problems({ registryPassword: "s3cr3t" })[0];
        assert.match(p, /ops-demo:registryPassword = "\[secret\]": is used only with imageLoader=registry/);
        assert.ok(!p.includes("s3cr3t"), "an error never prints the secret");
        assert.match(problems({ ...REG, registryUsername: "ci" })[0], /ops-demo:registryPassword = "": registryUsername and registryPassword go together/);
    });

    it("dockerConfigJson is what kubelet reads", () => {
        assert.deepStrictEqual(JSON.parse(dockerConfigJson("r.example", "u", "p")), { auths: { "r.example": { username: "u", password: "p", auth: "dTpw" } } });
    });
});

describe("shared storage on NFS (nfsServer, nfsPath)", () => {
    const NFS = { nfsServer: "nfs.example.com", nfsPath: "/export/mlops/" };

    it("declares the two volumes on the export and its models directory, bound as before, with no host preparation", async () => {
        const run = await load("k3s", NFS);
        const key = storageKey("", { server: "nfs.example.com", path: "/export/mlops/" });
        const pv = (name: string) => inputs(findResource(run.resources, "kubernetes:core/v1:PersistentVolume", `${name}-${key}`));
        const data = pv("storage-data-pv");
        const models = pv("storage-models-pv");
        assert.deepStrictEqual(data.spec.nfs, { server: "nfs.example.com", path: "/export/mlops/" });
        assert.deepStrictEqual(models.spec.nfs, { server: "nfs.example.com", path: "/export/mlops/models", readOnly: true });
        for (const v of [data, models]) {
            assert.strictEqual(v.spec.hostPath, undefined);
            assert.strictEqual(v.spec.persistentVolumeReclaimPolicy, "Retain");
            assert.strictEqual(v.spec.storageClassName, "");
        }
        assert.deepStrictEqual(data.spec.accessModes, ["ReadWriteMany"]);
        assert.deepStrictEqual(models.spec.accessModes, ["ReadOnlyMany"]);
        assert.deepStrictEqual(data.spec.claimRef, { namespace: "mlops-training", name: `mlops-data-${key}` });
        assert.deepStrictEqual(models.spec.claimRef, { namespace: "mlops-serving", name: `mlops-models-${key}` });
        assert.strictEqual(ofType(run.resources, K.cmd).filter((c) => c.name === "storage-prepare").length, 0, "nothing chowns a remote export");
        const claims = ofType(run.resources, "kubernetes:core/v1:PersistentVolumeClaim").map(inputs);
        assert.deepStrictEqual(claims.map((c) => [c.metadata.namespace, c.metadata.name, c.spec.volumeName]).sort(), [
            ["mlops-serving", `mlops-models-${key}`, `mlops-models-pv-${key}`],
            ["mlops-training", `mlops-data-${key}`, `mlops-data-pv-${key}`],
        ]);
    });

    it("without nfsServer: hostPath volumes and the storage preparation, as on one node", async () => {
        const run = await load("k3s");
        const key = storageKey(run.outputs.storageDir as string);
        assert.ok(inputs(findResource(run.resources, "kubernetes:core/v1:PersistentVolume", `storage-data-pv-${key}`)).spec.hostPath);
        assert.strictEqual(ofType(run.resources, K.cmd).filter((c) => c.name === "storage-prepare").length, 1);
    });

    it("rejects one key without the other, a relative or root export path and a malformed server", () => {
        assert.deepStrictEqual(problems({ nfsServer: "nfs.example.com" }), [
            'ops-demo:nfsPath = "": must be set when nfsServer is: the export\'s directory for this stack, not / (e.g. /export/mlops)',
        ]);
        assert.match(problems({ nfsPath: "/export/mlops" })[0], /ops-demo:nfsServer = "": must be set when nfsPath is/);
        assert.match(problems({ nfsServer: "nfs.example.com", nfsPath: "export/mlops" })[0], /ops-demo:nfsPath = "export\/mlops": must be empty or the absolute path/);
        assert.match(problems({ nfsServer: "nfs.example.com", nfsPath: "/" })[0], /ops-demo:nfsPath = "\/": must be set when nfsServer is/);
        assert.match(problems({ nfsServer: "nfs://x", nfsPath: "/e" })[0], /ops-demo:nfsServer = "nfs:\/\/x": must be empty .* host name or IP address/);
    });
});

describe("MLflow on PostgreSQL (mlflowBackendUri)", () => {
    const URI = "postgresql://mlflow:pa55@db.example.com:5432/mlflow?sslmode=require";

    it("puts the URI in a Secret, hands it to the server as MLFLOW_BACKEND_STORE_URI, never on the command line", async () => {
        const run = await load("k3s", { mlflowBackendUri: URI });
        const secret = inputs(findResource(run.resources, K.secret, "mlflow-backend"));
        assert.strictEqual(secret.metadata.name, "mlflow-backend");
        assert.strictEqual(secret.metadata.namespace, "mlops-training");
        assert.deepStrictEqual(secret.stringData, { uri: URI });
        const d = inputs(findResource(run.resources, K.deploy, "mlflow-deployment"));
        const c = d.spec.template.spec.containers[0];
        assert.ok(!c.command.includes("--backend-store-uri"), c.command.join(" "));
        assert.ok(!JSON.stringify(c.command).includes("pa55"));
        assert.deepStrictEqual(c.env.find((e: any) => e.name === "MLFLOW_BACKEND_STORE_URI"), {
            name: "MLFLOW_BACKEND_STORE_URI",
            valueFrom: { secretKeyRef: { name: "mlflow-backend", key: "uri" } },
        });
        assert.ok(c.command.includes("--artifacts-destination"), "artifacts stay on the shared volume");
        const state = run.registered.find((r) => r.type === K.secret)!.state as any;
        assert.ok(JSON.stringify(state.stringData).includes("4dabf18193072939515e22adb298388d"), "the URI is a Pulumi secret in the state");
    });

    it("rolls MLflow without a gap on PostgreSQL; keeps Recreate on SQLite", async () => {
        const pg = inputs(findResource((await load("k3s", { mlflowBackendUri: URI })).resources, K.deploy, "mlflow-deployment"));
        assert.deepStrictEqual(pg.spec.strategy, { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } });
        const sqlite = await load("k3s");
        const d = inputs(findResource(sqlite.resources, K.deploy, "mlflow-deployment"));
        assert.deepStrictEqual(d.spec.strategy, { type: "Recreate" });
        assert.ok(d.spec.template.spec.containers[0].command.includes("sqlite:////data/mlflow/mlflow.db"));
        assert.strictEqual(ofType(sqlite.resources, K.secret).length, 0);
    });

    it("rejects other databases and malformed URIs without printing them", () => {
        const p1 = problems({ mlflowBackendUri: "mysql://u:secretpw@h/db" });
        assert.match(p1[0], /ops-demo:mlflowBackendUri = "\[secret mysql:\/\/\.\.\.\]": must be empty .* or postgresql:\/\/USER:PASSWORD@HOST\[:PORT\]\/DATABASE/);
        assert.ok(!p1[0].includes("secretpw"));
        assert.match(problems({ mlflowBackendUri: "postgresql://u:secretpw@h" })[0], /"\[secret postgresql:\/\/\.\.\.\]"/);
        assert.match(problems({ mlflowBackendUri: "db.example.com" })[0], /ops-demo:mlflowBackendUri = "\[secret\]"/);
        assert.strictEqual(loadConfig((k) => ({ mlflowBackendUri: "postgresql+psycopg://u:p@h:5432/db" } as Record<string, string>)[k], "/h", false).mlflowBackendUri, "postgresql+psycopg://u:p@h:5432/db");
    });
});
