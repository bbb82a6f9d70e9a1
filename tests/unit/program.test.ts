import * as crypto from "crypto";
import * as os from "os";
import * as assert from "assert";
import { imagesDir } from "./fixtures";
import { storageKey } from "../../components/storage";
import { findResource, kubernetesObjects, ofType, ProgramRun, Recorded, runProgram, stackConfig } from "./harness";

/* eslint-disable @typescript-eslint/no-explicit-any */
const IMAGES = imagesDir();
const load = (stack: string, set: Record<string, string> = {}): Promise<ProgramRun> =>
    runProgram(stackConfig(stack, set), stack, { OPS_DEMO_IMAGES_DIR: IMAGES });

const K = {
    ns: "kubernetes:core/v1:Namespace",
    pv: "kubernetes:core/v1:PersistentVolume",
    pvc: "kubernetes:core/v1:PersistentVolumeClaim",
    deploy: "kubernetes:apps/v1:Deployment",
    svc: "kubernetes:core/v1:Service",
    job: "kubernetes:batch/v1:Job",
    cmd: "command:local:Command",
    image: "docker:index/image:Image",
};
const inputs = (r: Recorded): any => r.inputs;
const podSpec = (r: Recorded): any => inputs(r).spec.template.spec;
const jobs = (run: ProgramRun) => ofType(run.resources, K.job);

describe("the program, stack k3s (the host's k3s)", () => {
    let run: ProgramRun;
    before(async () => {
        run = await load("k3s");
    });

    it("declares one component per concern with the project's type tokens", () => {
        const components = run.resources.filter((r) => !r.custom).map((r) => r.type).sort();
        assert.deepStrictEqual(components, [
            "ops-demo:cluster:ExistingCluster",
            "ops-demo:images:ImageImport",
            "ops-demo:images:Images",
            "ops-demo:k8s:Namespaces",
            "ops-demo:k8s:NetworkPolicies",
            "ops-demo:mlflow:MlflowServer",
            "ops-demo:serving:ServingApi",
            "ops-demo:storage:SharedStorage",
            "ops-demo:training:TrainingRuns",
        ]);
    });

    it("parents every resource to its component and every component registers its outputs", () => {
        const expectedParent: [RegExp, string][] = [
            [/^kubernetes:core\/v1:Namespace$/, "ops-demo:k8s:Namespaces"],
            [/^kubernetes:core\/v1:Persistent/, "ops-demo:storage:SharedStorage"],
            [/^docker:index\/image:Image$/, "ops-demo:images:Images"],
            [/^pulumi:providers:kubernetes$/, "ops-demo:cluster:ExistingCluster"],
        ];
        for (const r of run.registered) {
            if (r.type.startsWith("ops-demo:")) {
                assert.strictEqual(r.parentType, undefined, `${r.type} is a top-level component`);
                assert.ok(Object.keys(r.state).length > 0, `${r.type} ${r.name} did not register outputs`);
                continue;
            }
            assert.match(String(r.parentType), /^ops-demo:[a-z0-9]+:[A-Za-z]+$/, `${r.type} ${r.name} has no component parent`);
            for (const [pattern, parent] of expectedParent) {
                if (pattern.test(r.type)) {
                    assert.strictEqual(r.parentType, parent, `${r.type} ${r.name}`);
                }
            }
        }
        const byName = (name: string) => run.registered.find((r) => r.name === name)!;
        assert.strictEqual(byName("mlflow-deployment").parentType, "ops-demo:mlflow:MlflowServer");
        assert.strictEqual(byName("serving-service").parentType, "ops-demo:serving:ServingApi");
        assert.strictEqual(byName("storage-prepare").parentType, "ops-demo:storage:SharedStorage");
        assert.strictEqual(byName("image-import-training").parentType, "ops-demo:images:ImageImport");
        assert.strictEqual(run.registered.filter((r) => r.parentType === "ops-demo:training:TrainingRuns").length, 2);
    });

    it("uses a kubernetes provider on the k3s kubeconfig for every Kubernetes object", () => {
        const provider = findResource(run.resources, "pulumi:providers:kubernetes", "cluster-k8s");
        assert.strictEqual(inputs(provider).kubeconfig, "/etc/rancher/k3s/k3s.yaml");
        const objects = kubernetesObjects(run.resources);
        assert.ok(objects.length >= 10);
        for (const o of objects) {
            assert.match(String(o.provider), /::cluster-k8s::cluster-k8s-id$/, `${o.type} ${o.name} uses ${o.provider}`);
        }
    });

    it("keeps the guide's names", () => {
        assert.deepStrictEqual(ofType(run.resources, K.ns).map((r) => inputs(r).metadata.name).sort(), ["mlops-serving", "mlops-training"]);
        const mlflow = findResource(run.resources, K.deploy, "mlflow-deployment");
        assert.strictEqual(inputs(mlflow).metadata.name, "mlflow-server");
        assert.strictEqual(inputs(mlflow).metadata.namespace, "mlops-training");
        assert.strictEqual(inputs(mlflow).spec.template.metadata.labels.app, "mlflow-server");
        const mlflowSvc = findResource(run.resources, K.svc, "mlflow-service");
        assert.strictEqual(inputs(mlflowSvc).metadata.name, "mlflow-service");
        assert.strictEqual(inputs(mlflowSvc).spec.ports[0].port, 5000);
        const serving = findResource(run.resources, K.deploy, "serving-deployment");
        assert.strictEqual(inputs(serving).metadata.name, "iris-serving");
        assert.strictEqual(inputs(serving).metadata.namespace, "mlops-serving");
        assert.strictEqual(inputs(serving).spec.template.metadata.labels.app, "iris-serving");
        // The k3s stack autoscales: the HPA keeps the guide's 2 replicas at least.
        assert.strictEqual(inputs(serving).spec.replicas, undefined);
        assert.strictEqual(inputs(findResource(run.resources, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler", "serving-hpa")).spec.minReplicas, 2);
        assert.strictEqual(podSpec(serving).containers[0].name, "serving");
        const svc = findResource(run.resources, K.svc, "serving-service");
        assert.strictEqual(inputs(svc).metadata.name, "iris-serving-service");
        assert.strictEqual(inputs(svc).spec.type, "LoadBalancer");
        assert.deepStrictEqual(
            inputs(svc).spec.ports.map((p: any) => [p.port, p.targetPort]),
            [[80, 8000]],
        );
        const [job] = jobs(run);
        assert.strictEqual(inputs(job).metadata.namespace, "mlops-training");
        assert.strictEqual(inputs(job).spec.template.metadata.labels.app, "iris-training");
    });

    it("builds ops-demo:training and ops-demo:serving tagged by content, never pushed", () => {
        const images = ofType(run.resources, K.image).map(inputs);
        assert.deepStrictEqual(images.map((i) => i.imageName.replace(/-[0-9a-f]{12}$/, "")).sort(), ["ops-demo:serving", "ops-demo:training"]);
        for (const i of images) {
            assert.strictEqual(i.skipPush, true);
            assert.match(i.build.dockerfile, /(training|serving)\/Dockerfile$/);
        }
        assert.deepStrictEqual((run.outputs.imageRefs as any).training, findResource(run.resources, K.image, "images-training").inputs.imageName);
    });

    it("imports each image with docker save | k3s ctr images import - as root, triggered by the image digest and the cluster", () => {
        for (const flavour of ["training", "serving"]) {
            const image = inputs(findResource(run.resources, K.image, `images-${flavour}`));
            const cmd = inputs(findResource(run.resources, K.cmd, `image-import-${flavour}`));
            assert.ok(cmd.create.endsWith(`docker save ${image.imageName} | as_root "$k3s" ctr images import -`), cmd.create);
            assert.match(cmd.create, /sudo -n "\$@"/);
            assert.match(cmd.create, /set -euo pipefail/);
            assert.deepStrictEqual(cmd.interpreter, ["/bin/bash", "-c"]);
            assert.deepStrictEqual(cmd.triggers, [
                `sha256:${crypto.createHash("sha256").update(image.imageName).digest("hex")}`,
                "/etc/rancher/k3s/k3s.yaml#",
            ]);
        }
    });

    it("never lets pods reach for a registry for the project's images", () => {
        for (const r of [...ofType(run.resources, K.deploy), ...jobs(run)]) {
            for (const c of podSpec(r).containers) {
                assert.match(c.image, /^ops-demo:(training|serving)-[0-9a-f]{12}$/);
                assert.strictEqual(c.imagePullPolicy, "Never", `${r.name}/${c.name}`);
            }
        }
    });

    it("prepares the storage directory for 10001:10001 with sudo before the volumes", () => {
        const prep = inputs(findResource(run.resources, K.cmd, "storage-prepare"));
        const dir = run.outputs.storageDir as string;
        assert.strictEqual(dir, `${os.homedir()}/ops-demo-data/mlops`);
        assert.match(prep.create, /^as_root\(\) \{\n[^]*sudo -n "\$@"[^]*\nas_root \/bin\/sh -c /);
        assert.ok(prep.create.includes(`mkdir -p ${dir} ${dir}/mlflow ${dir}/mlflow/artifacts ${dir}/models`), prep.create);
        assert.ok(prep.create.includes(`chown -R 10001:10001 ${dir}`), prep.create);
        assert.doesNotMatch(prep.create, /chmod/);
    });

    it("declares hostPath volumes with Retain, no storage class, bound explicitly both ways", () => {
        const dir = run.outputs.storageDir as string;
        const k = storageKey(dir);
        const expected: Record<string, [string, string, string, string]> = {
            [`storage-data-pv-${k}`]: [`mlops-data-pv-${k}`, dir, "mlops-training", `mlops-data-${k}`],
            [`storage-models-pv-${k}`]: [`mlops-models-pv-${k}`, `${dir}/models`, "mlops-serving", `mlops-models-${k}`],
        };
        for (const [name, [pvName, hostPath, ns, claim]] of Object.entries(expected)) {
            const pv = inputs(findResource(run.resources, K.pv, name));
            assert.strictEqual(pv.metadata.name, pvName);
            assert.strictEqual(pv.spec.persistentVolumeReclaimPolicy, "Retain");
            assert.strictEqual(pv.spec.storageClassName, "");
            assert.strictEqual(pv.spec.hostPath.path, hostPath);
            assert.deepStrictEqual(pv.spec.claimRef, { namespace: ns, name: claim });
            const pvc = inputs(ofType(run.resources, K.pvc).find((r) => inputs(r).metadata.name === claim)!);
            assert.strictEqual(pvc.metadata.namespace, ns);
            assert.strictEqual(pvc.spec.volumeName, pvName);
            assert.strictEqual(pvc.spec.storageClassName, "");
            // awaited as Bound without the provider's storage-class lookup (it warned on every update)
            assert.strictEqual(pvc.metadata.annotations["pulumi.com/waitFor"], "jsonpath={.status.phase}=Bound");
        }
    });

    it("mounts the data claim read-write at /data for MLflow and training, the models claim read-only at /models for serving", () => {
        const mounts = (r: Recorded) => {
            const spec = podSpec(r);
            const claims = Object.fromEntries(spec.volumes.filter((v: any) => v.persistentVolumeClaim).map((v: any) => [v.name, v.persistentVolumeClaim]));
            return spec.containers[0].volumeMounts
                .filter((m: any) => claims[m.name])
                .map((m: any) => [claims[m.name].claimName, m.mountPath, m.readOnly === true]);
        };
        const k = storageKey(run.outputs.storageDir as string);
        assert.deepStrictEqual(mounts(findResource(run.resources, K.deploy, "mlflow-deployment")), [[`mlops-data-${k}`, "/data", false]]);
        assert.deepStrictEqual(mounts(jobs(run)[0]), [[`mlops-data-${k}`, "/data", false]]);
        assert.deepStrictEqual(mounts(findResource(run.resources, K.deploy, "serving-deployment")), [[`mlops-models-${k}`, "/models", true]]);
    });

    it("moves to new volumes and claims when storageDir changes (new names: created before the old ones go)", async () => {
        const moved = await load("k3s", { storageDir: "/srv/mlops" });
        const names = (r: ProgramRun, t: string) => ofType(r.resources, t).map((x) => x.name).sort();
        for (const t of [K.pv, K.pvc]) {
            const before = names(run, t);
            const after = names(moved, t);
            assert.strictEqual(after.length, 2);
            // Pulumi names differ too: new resources are created and the old ones deleted at the end,
            // after the workloads moved; nothing is replaced in place
            assert.deepStrictEqual(after.filter((n) => before.includes(n)), [], `${t}: ${before} -> ${after}`);
        }
        const jobName = (r: ProgramRun) => inputs(jobs(r)[0]).metadata.name;
        assert.notStrictEqual(jobName(moved), jobName(run), "the Job (its claim is in its pod template) is a new one");
    });

    it("runs MLflow as one pod with Recreate (never two servers on one SQLite file), probed on /health:5000", () => {
        const d = inputs(findResource(run.resources, K.deploy, "mlflow-deployment"));
        assert.strictEqual(d.spec.replicas, 1);
        assert.deepStrictEqual(d.spec.strategy, { type: "Recreate" });
        const c = d.spec.template.spec.containers[0];
        assert.deepStrictEqual(c.readinessProbe.httpGet, { path: "/health", port: 5000 });
        assert.deepStrictEqual(c.command.slice(0, 8), ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1"]);
        assert.ok(c.command.includes("sqlite:////data/mlflow/mlflow.db"));
        assert.ok(c.command.includes("--serve-artifacts"));
        const hosts = c.command[c.command.indexOf("--allowed-hosts") + 1];
        assert.ok(hosts.split(",").includes("mlflow-service.mlops-training.svc.cluster.local:5000"), hosts);
        assert.deepStrictEqual(c.env, [{ name: "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", value: "false" }]);
    });

    it("serves with rolling updates that keep every replica, probed on /health and /ready:8000", () => {
        const d = inputs(findResource(run.resources, K.deploy, "serving-deployment"));
        assert.deepStrictEqual(d.spec.strategy, { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } });
        const c = d.spec.template.spec.containers[0];
        assert.deepStrictEqual(c.command, ["python", "-m", "app.serve"]);
        assert.deepStrictEqual(c.livenessProbe.httpGet, { path: "/health", port: 8000 });
        assert.deepStrictEqual(c.readinessProbe.httpGet, { path: "/ready", port: 8000 });
        assert.deepStrictEqual(
            Object.fromEntries(c.env.map((e: any) => [e.name, e.value])),
            { MODELS_DIR: "/models", MODEL_NAME: "iris-classifier", PORT: "8000", WORKERS: "2", RELOAD_INTERVAL_SECONDS: "2", SWAP_DELAY_SECONDS: "5" },
        );
    });

    it("runs every pod as 10001 without privileges and with resource requests and limits", () => {
        for (const r of [...ofType(run.resources, K.deploy), ...jobs(run)]) {
            const spec = podSpec(r);
            assert.deepStrictEqual(spec.securityContext, {
                runAsNonRoot: true,
                runAsUser: 10001,
                runAsGroup: 10001,
                seccompProfile: { type: "RuntimeDefault" },
            });
            for (const c of spec.containers) {
                assert.strictEqual(c.securityContext.allowPrivilegeEscalation, false);
                assert.deepStrictEqual(c.securityContext.capabilities, { drop: ["ALL"] });
                assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.cpu && c.resources.limits.memory);
                assert.ok(c.volumeMounts.some((m: any) => m.mountPath === "/tmp"), `${r.name} has a writable /tmp`);
            }
        }
    });

    it("launches the configured run as a Job with the trainer's flags and the MLflow Service's DNS name", () => {
        const [job] = jobs(run);
        const j = inputs(job);
        const c = j.spec.template.spec.containers[0];
        assert.deepStrictEqual(c.command, ["python", "-m", "trainer", "--n-estimators", "100", "--max-depth", "5", "--run-name", "baseline"]);
        const env = Object.fromEntries(c.env.map((e: any) => [e.name, e.value]));
        assert.strictEqual(env.MLFLOW_TRACKING_URI, "http://mlflow-service.mlops-training.svc.cluster.local:5000");
        assert.strictEqual(env.PROMOTION_POLICY, "always");
        assert.strictEqual(env.MODELS_DIR, "/data/models");
        assert.strictEqual(j.spec.template.spec.restartPolicy, "Never");
        assert.ok(j.spec.backoffLimit <= 2);
        assert.strictEqual(j.spec.ttlSecondsAfterFinished, undefined);
        assert.deepStrictEqual(run.outputs.trainingJobs, [j.metadata.name]);
    });

    it("waits for each Job and fails the update naming kubectl logs -n mlops-training job/<name>", () => {
        const [job] = jobs(run);
        const name = inputs(job).metadata.name;
        const wait = inputs(findResource(run.resources, K.cmd, `training-${name}-wait`));
        assert.ok(wait.create.includes(`kubectl logs -n mlops-training job/${name}`), wait.create);
        assert.ok(wait.create.includes(`kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml get -n mlops-training job/${name}`), wait.create);
        assert.match(wait.create, /deadline=\$\(\(SECONDS \+ 1200\)\)/);
        assert.deepStrictEqual(wait.triggers, [`uid-${job.name}`]);
        assert.match(wait.create, /to run it again after fixing the cause: pulumi up --replace 'urn:pulumi:[^']*kubernetes:batch\/v1:Job::training-iris-training-baseline-/);
        // created is enough for Pulumi (the wait reports completion); deletion stays awaited
        assert.strictEqual(inputs(job).metadata.annotations["pulumi.com/waitFor"], "jsonpath={.metadata.uid}");
        assert.strictEqual(inputs(job).metadata.annotations["pulumi.com/skipAwait"], undefined);
    });

    it("exports how to reach MLflow and the serving API", () => {
        assert.strictEqual(run.outputs.mlflowPortForward, "kubectl port-forward -n mlops-training svc/mlflow-service 5000:5000");
        assert.strictEqual(run.outputs.servingPortForward, "kubectl port-forward -n mlops-serving svc/iris-serving-service 8000:80");
        assert.match(run.outputs.predictExample as string, /^curl -X POST http:\/\/localhost:8000\/predict .*"features": \[5\.1, 3\.5, 1\.4, 0\.2\]/);
        assert.strictEqual(run.outputs.kubeconfig, "/etc/rancher/k3s/k3s.yaml");
    });
});

describe("new training runs", () => {
    it("pulumi config set nEstimators 300 && pulumi up launches a new Job; an unchanged up keeps the Job", async () => {
        const first = jobs(await load("k3s")).map((j) => inputs(j).metadata.name);
        const again = jobs(await load("k3s")).map((j) => inputs(j).metadata.name);
        const more = jobs(await load("k3s", { nEstimators: "300" }));
        assert.deepStrictEqual(again, first);
        assert.strictEqual(more.length, 1);
        assert.notStrictEqual(inputs(more[0]).metadata.name, first[0]);
        assert.ok(inputs(more[0]).spec.template.spec.containers[0].command.includes("300"));
    });

    it("names the Job from any runName, DNS-1123 and at most 63 characters", async () => {
        const [job] = jobs(await load("k3s", { runName: "Optimized Run #3 — 300 trees, depth 15, and a very long description" }));
        const name = inputs(job).metadata.name;
        assert.ok(name.length <= 63 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name), name);
        assert.ok(inputs(job).spec.template.spec.containers[0].command.includes("Optimized Run #3 — 300 trees, depth 15, and a very long description"));
    });

    it("launches one Job per experiment, in parallel (no Job waits for another)", async () => {
        const run = await load("k3s", {
            experiments: JSON.stringify(["runName=baseline", "runName=more-trees,nEstimators=200", "runName=deeper,maxDepth=20", "runName=optimized,nEstimators=300,maxDepth=15"]),
        });
        const js = jobs(run).map(inputs);
        assert.strictEqual(js.length, 4);
        assert.strictEqual(new Set(js.map((j) => j.metadata.name)).size, 4);
        const args = js.map((j) => j.spec.template.spec.containers[0].command.slice(3));
        assert.deepStrictEqual(args[3], ["--n-estimators", "300", "--max-depth", "15", "--run-name", "optimized"]);
        assert.deepStrictEqual(run.outputs.trainingJobs, js.map((j) => j.metadata.name));
        assert.strictEqual(ofType(run.resources, K.cmd).filter((c) => c.name.endsWith("-wait")).length, 4);
    });
});

describe("the program, stack dev (k3s in a Docker container made by the stack)", () => {
    let run: ProgramRun;
    before(async () => {
        run = await load("dev");
    });

    it("runs a pinned rancher/k3s privileged, publishing the API, serving and MLflow on loopback and bind-mounting the storage at the same path", () => {
        const image = inputs(findResource(run.resources, "docker:index/remoteImage:RemoteImage", "cluster-image"));
        assert.match(image.name, /^rancher\/k3s:v\d+\.\d+\.\d+-k3s\d+$/);
        const c = inputs(findResource(run.resources, "docker:index/container:Container", "cluster-node"));
        assert.strictEqual(c.name, "ops-demo-k3s");
        assert.strictEqual(c.privileged, true);
        assert.strictEqual(c.command[0], "server");
        // evicts only when the disk is really full (a laptop's Docker disk passes the default 10-15% quickly)
        assert.ok(c.command.includes("--kubelet-arg=eviction-hard=imagefs.available<1%,nodefs.available<1%"), c.command.join(" "));
        const ports = c.ports.map((p: any) => [p.internal, p.external, p.ip]);
        assert.deepStrictEqual(ports, [[6443, 16443, "127.0.0.1"], [80, 8080, "127.0.0.1"], [30500, 5050, "127.0.0.1"]]);
        const dir = run.outputs.storageDir;
        assert.deepStrictEqual(c.volumes, [{ hostPath: dir, containerPath: dir }]);
    });

    it("reads the kubeconfig from the container (bounded wait, server on the published port) into the stack's provider", () => {
        const cmd = inputs(findResource(run.resources, K.cmd, "cluster-kubeconfig"));
        assert.match(cmd.create, /deadline=\$\(\(SECONDS \+ \d+\)\)/);
        assert.ok(cmd.create.includes("docker exec ops-demo-k3s cat /etc/rancher/k3s/k3s.yaml"), cmd.create);
        assert.ok(cmd.create.includes("https://127.0.0.1:16443"), cmd.create);
        assert.ok(cmd.create.includes("docker logs ops-demo-k3s"), "a timeout says where to look");
        // its stdout is the admin kubeconfig: never streamed to the console, encrypted in the state
        assert.strictEqual(cmd.logging, "none");
        const provider = inputs(findResource(run.resources, "pulumi:providers:kubernetes", "cluster-k8s"));
        assert.ok(String(provider.kubeconfig).includes("kind: Config"));
        for (const o of kubernetesObjects(run.resources)) {
            assert.match(String(o.provider), /::cluster-k8s::/, `${o.type} ${o.name}`);
        }
    });

    it("imports the images through the same command mechanism, into the container", () => {
        for (const flavour of ["training", "serving"]) {
            const image = inputs(findResource(run.resources, K.image, `images-${flavour}`));
            const cmd = inputs(findResource(run.resources, K.cmd, `image-import-${flavour}`));
            assert.ok(cmd.create.endsWith(`docker save ${image.imageName} | docker exec -i ops-demo-k3s ctr images import -`), cmd.create);
            // the digest, and the container's id: a replaced cluster gets the images again
            assert.strictEqual(cmd.triggers.length, 2);
            assert.match(cmd.triggers[0], /^sha256:/);
            assert.strictEqual(cmd.triggers[1], "cluster-node-id");
        }
    });

    it("prepares the storage inside the node (no sudo on the host) and waits for Jobs with the node's kubectl", () => {
        const prep = inputs(findResource(run.resources, K.cmd, "storage-prepare"));
        assert.match(prep.create, /^docker exec ops-demo-k3s sh -c '.*chown -R 10001:10001/);
        assert.doesNotMatch(prep.create, /sudo/);
        const name = inputs(jobs(run)[0]).metadata.name;
        const wait = inputs(findResource(run.resources, K.cmd, `training-${name}-wait`));
        assert.ok(wait.create.includes(`docker exec ops-demo-k3s kubectl get -n mlops-training job/${name}`), wait.create);
    });

    it("publishes MLflow through a NodePort beside mlflow-service and exports the host URLs", () => {
        const np = inputs(findResource(run.resources, K.svc, "mlflow-nodeport"));
        assert.strictEqual(np.spec.type, "NodePort");
        assert.deepStrictEqual(np.spec.selector, { app: "mlflow-server" });
        assert.strictEqual(np.spec.ports[0].nodePort, 30500);
        assert.strictEqual(run.outputs.mlflowUrl, "http://localhost:5050");
        assert.strictEqual(run.outputs.servingUrl, "http://localhost:8080");
        assert.match(run.outputs.predictExample as string, /^curl -X POST http:\/\/localhost:8080\/predict/);
        assert.ok(String(run.outputs.kubeconfig).includes("kind: Config"));
    });

    it("has the same Kubernetes objects as the k3s stack, plus the NodePort", async () => {
        const k3s = await load("k3s");
        // Job names carry a hash of the pod template, whose resources differ per stack
        const names = (r: ProgramRun) =>
            kubernetesObjects(r.resources)
                .map((o) => `${o.type} ${String(inputs(o).metadata.name).replace(/^(iris-training-.*-)[0-9a-f]{8}$/, "$1<hash>")}`)
                .sort();
        assert.deepStrictEqual(
            names(run).filter((n) => !n.endsWith(" mlflow-nodeport")),
            names(k3s),
        );
    });
});

describe("other image loaders", () => {
    it("kind: kind load docker-image <image> --name <cluster>", async () => {
        const run = await load("k3s", { imageLoader: "kind", kindClusterName: "mlops" });
        const cmd = inputs(findResource(run.resources, K.cmd, "image-import-serving"));
        assert.match(cmd.create, /kind load docker-image ops-demo:serving-[0-9a-f]{12} --name mlops$/);
    });

    it("none: no import command, pods use IfNotPresent", async () => {
        const run = await load("k3s", { imageLoader: "none" });
        assert.strictEqual(ofType(run.resources, K.cmd).filter((c) => c.name.startsWith("image-import")).length, 0);
        for (const d of ofType(run.resources, K.deploy)) {
            assert.strictEqual(podSpec(d).containers[0].imagePullPolicy, "IfNotPresent");
        }
    });

    it("sudo=false: k3s ctr and the storage preparation run without sudo", async () => {
        const run = await load("k3s", { sudo: "false" });
        for (const name of ["image-import-training", "storage-prepare"]) {
            const create = inputs(findResource(run.resources, K.cmd, name)).create;
            assert.match(create, /^as_root\(\) \{ "\$@"; \}$/m, name);
            assert.doesNotMatch(create, /sudo/, name);
        }
    });
});
