/** Security and resilience of what the program declares: pod security, NetworkPolicies, MLflow auth, resources, serving rollouts. */
import * as assert from "assert";
import { loadConfig } from "../../components/config";
import { configProblems, stackLoader } from "./fixtures";
import { findResource, kubernetesObjects, ofType, ProgramRun, Recorded, stackFileConfig } from "./harness";
import { mentionsContainers, podTemplatesOf } from "./podTemplates";

/* eslint-disable @typescript-eslint/no-explicit-any */
const load = stackLoader();
const inputs = (r: Recorded): any => r.inputs;
const K = {
    ns: "kubernetes:core/v1:Namespace",
    deploy: "kubernetes:apps/v1:Deployment",
    job: "kubernetes:batch/v1:Job",
    netpol: "kubernetes:networking.k8s.io/v1:NetworkPolicy",
    secret: "kubernetes:core/v1:Secret",
    cm: "kubernetes:core/v1:ConfigMap",
    pdb: "kubernetes:policy/v1:PodDisruptionBudget",
};
const PASSWORD = "correct horse battery";
const AUTH = { mlflowAuth: "true", mlflowPassword: PASSWORD };

const problems = configProblems;

/** Every variant of the program whose pods must pass the restricted profile: both stacks and every option that changes a pod. */
const VARIANTS: [string, Record<string, string>][] = [
    ["k3s", {}],
    ["dev", {}],
    ["k3s", AUTH],
    ["dev", { ...AUTH, networkPolicies: "false" }],
    ["k3s", { trainingGpus: "1", autoscaling: "false", servingReplicas: "1", serviceMonitor: "true", grafanaDashboard: "true" }],
    ["k3s", { experiments: JSON.stringify(["runName=a", "runName=b,nEstimators=300"]), imageLoader: "none" }],
    ["k3s", { imageLoader: "registry", registry: "registry.example.com/team", registryUsername: "ci", registryPassword: "a-registry-token" }],
];

describe("Pod Security Standard restricted", () => {
    it("both namespaces enforce, warn about and audit restricted, at a pinned version", async () => {
        const run = await load("k3s");
        const nss = ofType(run.resources, K.ns).map(inputs);
        assert.deepStrictEqual(nss.map((n) => n.metadata.name).sort(), ["mlops-serving", "mlops-training"]);
        for (const n of nss) {
            for (const mode of ["enforce", "warn", "audit"]) {
                assert.strictEqual(n.metadata.labels[`pod-security.kubernetes.io/${mode}`], "restricted", `${n.metadata.name} ${mode}`);
                assert.match(n.metadata.labels[`pod-security.kubernetes.io/${mode}-version`], /^v1\.\d+$/, `${n.metadata.name} ${mode}-version`);
            }
        }
    });

    // The restricted profile's rules are judged by the real API server (tests/real/admission.test.ts).
    describe("pod templates", () => {
        const good = () => ({
            securityContext: { runAsNonRoot: true, runAsUser: 10001, seccompProfile: { type: "RuntimeDefault" } },
            containers: [{ name: "c", image: "i", securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } } }],
        });
        it("finds the pod template of each workload kind and flags an unknown kind that carries containers", () => {
            const spec = good();
            assert.strictEqual(podTemplatesOf({ kind: "CronJob", spec: { jobTemplate: { spec: { template: { spec } } } } })![0][1], spec);
            assert.strictEqual(podTemplatesOf({ kind: "Job", spec: { template: { spec } } })![0][1], spec);
            assert.strictEqual(podTemplatesOf({ kind: "Rollout", spec: { template: { spec } } }), undefined);
            assert.ok(mentionsContainers({ kind: "Rollout", spec: { template: { spec } } }));
            assert.ok(!mentionsContainers({ kind: "Service", spec: { ports: [] } }));
        });
    });

    for (const [stack, set] of VARIANTS) {
        it(`every pod the program declares is in a restricted namespace, read-only with a /tmp emptyDir and resources: stack ${stack} ${JSON.stringify(set)}`, async () => {
            const run = await load(stack, set);
            const objects = kubernetesObjects(run.resources);
            const restrictedNamespaces = new Set(
                ofType(run.resources, K.ns)
                    .map(inputs)
                    .filter((n) => n.metadata.labels["pod-security.kubernetes.io/enforce"] === "restricted")
                    .map((n) => n.metadata.name),
            );
            let pods = 0;
            for (const o of objects) {
                const obj = inputs(o);
                const templates = podTemplatesOf(obj);
                if (templates === undefined) {
                    assert.ok(!mentionsContainers(obj), `${obj.kind} ${o.name} carries containers but the check does not know the kind`);
                    continue;
                }
                assert.ok(restrictedNamespaces.has(obj.metadata.namespace), `${obj.kind} ${o.name} is in ${obj.metadata.namespace}, which does not enforce restricted`);
                for (const [, spec] of templates) {
                    pods++;
                    for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
                        const what = `${obj.kind} ${o.name} container ${c.name}`;
                        assert.strictEqual(c.securityContext.readOnlyRootFilesystem, true, `${what}: read-only root filesystem`);
                        const tmp = c.volumeMounts.find((m: any) => m.mountPath === "/tmp");
                        assert.ok(tmp && spec.volumes.find((v: any) => v.name === tmp.name).emptyDir, `${what}: a writable emptyDir /tmp`);
                        for (const kind of ["requests", "limits"]) {
                            assert.ok(c.resources[kind].cpu && c.resources[kind].memory, `${what}: cpu and memory ${kind}`);
                        }
                    }
                }
            }
            assert.ok(pods >= 3, `only ${pods} pod templates`);
        });
    }
});

// --- NetworkPolicies, declared -----------------------------------------------------------------
// Who reaches whom under these policies is proven with real connections on a real cluster, where
// kube-router enforces them: tests/real/netpol.test.ts (every variant, allowed and blocked paths).
// Here only what needs no NetworkPolicy semantics.

describe("NetworkPolicies", () => {
    for (const stack of ["k3s", "dev"]) {
        it(`stack ${stack}: denies all ingress and egress by default in both namespaces`, async () => {
            const policies = ofType((await load(stack)).resources, K.netpol).map(inputs);
            for (const ns of ["mlops-training", "mlops-serving"]) {
                const deny = policies.find((p) => p.metadata.namespace === ns && p.metadata.name === "default-deny");
                assert.ok(deny, ns);
                assert.deepStrictEqual(deny.spec, { podSelector: {}, policyTypes: ["Ingress", "Egress"] });
            }
        });
    }

    it("networkPolicies=false declares none (for a CNI without NetworkPolicy support, or to debug)", async () => {
        const run = await load("k3s", { networkPolicies: "false" });
        assert.strictEqual(ofType(run.resources, K.netpol).length, 0);
        assert.ok(ofType(run.resources, K.ns).length === 2);
    });

    it("keeps MLflow's Service ClusterIP; only the dev stack adds the NodePort, whose target port the MLflow policy opens to any source", async () => {
        const k3s = await load("k3s");
        assert.strictEqual(inputs(findResource(k3s.resources, "kubernetes:core/v1:Service", "mlflow-service")).spec.type, "ClusterIP");
        assert.strictEqual(ofType(k3s.resources, "kubernetes:core/v1:Service").filter((s) => inputs(s).spec.type === "NodePort").length, 0);
        const dev = await load("dev");
        const np = inputs(findResource(dev.resources, "kubernetes:core/v1:Service", "mlflow-nodeport"));
        const ingress = inputs(findResource(dev.resources, K.netpol, "network-policies-mlflow-ingress")).spec.ingress;
        assert.ok(ingress.some((r: any) => r.from === undefined && r.ports.some((p: any) => p.port === np.spec.ports[0].targetPort)));
    });
});

// --- MLflow basic auth -----------------------------------------------------------------------

describe("MLflow basic auth", () => {
    const mlflowPod = (run: ProgramRun) => inputs(findResource(run.resources, K.deploy, "mlflow-deployment")).spec.template;
    const trainer = (run: ProgramRun) => inputs(ofType(run.resources, K.job)[0]).spec.template.spec.containers[0];

    it("is off by default: no Secret, no --app-name, no credentials in any pod", async () => {
        const run = await load("k3s");
        assert.strictEqual(ofType(run.resources, K.secret).length, 0);
        const pod = mlflowPod(run);
        assert.ok(!pod.spec.containers[0].command.includes("--app-name"));
        assert.strictEqual(pod.spec.initContainers, undefined);
        assert.ok(!trainer(run).env.some((e: any) => ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"].includes(e.name)));
    });

    it("on: the basic-auth app, its user database on /data/mlflow, admin credentials and Flask key from a Secret", async () => {
        const run = await load("k3s", AUTH);
        const pod = mlflowPod(run);
        const server = pod.spec.containers[0];
        assert.deepStrictEqual(server.command.slice(-2), ["--app-name", "basic-auth"]);
        const env = Object.fromEntries(server.env.map((e: any) => [e.name, e]));
        assert.strictEqual(env.MLFLOW_AUTH_CONFIG_PATH.value, "/etc/mlflow-auth/basic_auth.ini");
        for (const [name, key] of [["MLFLOW_AUTH_ADMIN_USERNAME", "username"], ["MLFLOW_AUTH_ADMIN_PASSWORD", "password"], ["MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key"]]) {
            assert.deepStrictEqual(env[name].valueFrom, { secretKeyRef: { name: "mlflow-auth", key } }, name);
        }
        const cm = inputs(findResource(run.resources, K.cm, "mlflow-auth-config"));
        const ini = cm.data["basic_auth.ini"];
        assert.match(ini, /^database_uri = sqlite:\/\/\/\/data\/mlflow\/basic_auth\.db$/m);
        assert.doesNotMatch(ini, /password/, "no credentials in the ConfigMap");
        assert.ok(server.volumeMounts.some((m: any) => m.mountPath === "/etc/mlflow-auth" && m.readOnly));
        // probes stay on /health, which the auth app leaves unprotected
        assert.deepStrictEqual(server.readinessProbe.httpGet, { path: "/health", port: 5000 });
        const secret = findResource(run.resources, K.secret, "mlflow-auth");
        assert.strictEqual(inputs(secret).metadata.namespace, "mlops-training");
        assert.strictEqual(inputs(secret).stringData.username, "admin");
        assert.strictEqual(inputs(secret).stringData.password, PASSWORD);
        assert.match(inputs(secret).stringData["flask-secret-key"], /^[0-9a-f]{64}$/);
        const isSecret = (path: string) => secret.secretPaths!.some((p) => path === p || path.startsWith(`${p}.`));
        assert.ok(isSecret("stringData.password"), `the password is a Pulumi secret (encrypted in the state): ${secret.secretPaths}`);
        assert.ok(isSecret("stringData.flask-secret-key"));
        assert.ok(!findResource(run.resources, K.cm, "mlflow-auth-config").secretPaths!.length);
    });

    it("on: an init container writes the configured admin password into the user database before the server starts", async () => {
        const run = await load("k3s", AUTH);
        const pod = mlflowPod(run);
        const [init] = pod.spec.initContainers;
        assert.strictEqual(init.image, pod.spec.containers[0].image);
        assert.deepStrictEqual(init.command.slice(0, 2), ["python", "-c"]);
        assert.match(init.command[2], /update_user\(c\.admin_username, password=c\.admin_password/);
        assert.deepStrictEqual(init.env, pod.spec.containers[0].env);
        assert.deepStrictEqual(init.volumeMounts, pod.spec.containers[0].volumeMounts);
    });

    it("on: a new password rolls the server (pod annotation), without revealing the password", async () => {
        const a = mlflowPod(await load("k3s", AUTH)).metadata.annotations["ops-demo/mlflow-auth"];
        const same = mlflowPod(await load("k3s", AUTH)).metadata.annotations["ops-demo/mlflow-auth"];
        const other = mlflowPod(await load("k3s", { ...AUTH, mlflowPassword: "another long password" })).metadata.annotations["ops-demo/mlflow-auth"];
        assert.match(a, /^[0-9a-f]{24}$/);
        assert.strictEqual(a, same);
        assert.notStrictEqual(a, other);
        assert.ok(!a.includes(PASSWORD));
    });

    it("on: training Jobs log in with MLFLOW_TRACKING_USERNAME/PASSWORD from the Secret", async () => {
        const run = await load("k3s", { ...AUTH, mlflowUsername: "trainer" });
        const env = Object.fromEntries(trainer(run).env.map((e: any) => [e.name, e]));
        assert.deepStrictEqual(env.MLFLOW_TRACKING_USERNAME.valueFrom, { secretKeyRef: { name: "mlflow-auth", key: "username" } });
        assert.deepStrictEqual(env.MLFLOW_TRACKING_PASSWORD.valueFrom, { secretKeyRef: { name: "mlflow-auth", key: "password" } });
        assert.strictEqual(inputs(findResource(run.resources, K.secret, "mlflow-auth")).stringData.username, "trainer");
        assert.ok(!JSON.stringify(inputs(ofType(run.resources, K.job)[0])).includes(PASSWORD), "the password is not in the Job");
        assert.ok(!JSON.stringify(inputs(findResource(run.resources, K.deploy, "mlflow-deployment"))).includes(PASSWORD));
    });

    it("validates: auth on without a password fails before any resource, naming the key and how to set it", async () => {
        await assert.rejects(load("k3s", { mlflowAuth: "true" }), (e: Error & { declared?: number }) => {
            assert.match(e.message, /ops-demo:mlflowPassword = "": must be set when mlflowAuth is true, at least 12 characters: pulumi config set --secret mlflowPassword/);
            assert.strictEqual(e.declared, 0);
            return true;
        });
    });

    it("validates: a short password or MLflow's old default is rejected without printing it", () => {
        for (const pw of ["short", "password1234"]) {
            const p = problems({ mlflowAuth: "true", mlflowPassword: pw });
            assert.ok(p.some((x) => /ops-demo:mlflowPassword = \(secret, \d+ characters\): must be at least 12 characters/.test(x)), JSON.stringify(p));
            assert.ok(pw === "password1234" || !p.join("\n").includes(pw), "the password is not printed");
        }
        assert.ok(problems({ mlflowAuth: "yes" }).some((x) => /ops-demo:mlflowAuth = "yes": must be true or false/.test(x)));
        assert.ok(problems({ mlflowUsername: "a b" }).some((x) => /ops-demo:mlflowUsername = "a b"/.test(x)));
        // off: the password is not needed
        assert.strictEqual(loadConfig((k) => ({ mlflowAuth: "false" })[k], "/h", false).mlflowAuth, undefined);
    });
});

// --- resources per stack ---------------------------------------------------------------------

describe("resources per stack", () => {
    const containerOf = (run: ProgramRun, type: string, name?: string) => {
        const r = name ? findResource(run.resources, type, name) : ofType(run.resources, type)[0];
        return inputs(r).spec.template.spec.containers[0];
    };
    for (const stack of ["k3s", "dev"]) {
        it(`stack ${stack}: each container gets the stack file's requests and limits`, async () => {
            const run = await load(stack);
            const file = stackFileConfig(stack);
            const want = (w: string) => ({
                requests: { cpu: file[`ops-demo:${w}CpuRequest`], memory: file[`ops-demo:${w}MemoryRequest`] },
                limits: { cpu: file[`ops-demo:${w}CpuLimit`], memory: file[`ops-demo:${w}MemoryLimit`] },
            });
            assert.ok(file[`ops-demo:servingCpuRequest`], `Pulumi.${stack}.yaml sets the resources`);
            assert.deepStrictEqual(containerOf(run, K.deploy, "mlflow-deployment").resources, want("mlflow"));
            assert.deepStrictEqual(containerOf(run, K.deploy, "serving-deployment").resources, want("serving"));
            assert.deepStrictEqual(containerOf(run, K.job).resources, want("training"));
        });
    }

    it("a config change reaches the container; GPUs add to the training limits", async () => {
        const run = await load("k3s", { servingCpuLimit: "1.5", servingMemoryLimit: "1Gi", trainingGpus: "1" });
        assert.deepStrictEqual(containerOf(run, K.deploy, "serving-deployment").resources.limits, { cpu: "1.5", memory: "1Gi" });
        assert.strictEqual(containerOf(run, K.job).resources.limits["nvidia.com/gpu"], "1");
    });

    const bad: [Record<string, string>, RegExp][] = [
        [{ servingCpuLimit: "lots" }, /ops-demo:servingCpuLimit = "lots": must be a CPU quantity above 0: cores \("1", "0\.5"\) or millicores \("500m"\)/],
        [{ trainingMemoryLimit: "2GB" }, /ops-demo:trainingMemoryLimit = "2GB": must be a memory quantity above 0: a number with Ki, Mi, Gi/],
        [{ mlflowMemoryRequest: "0" }, /ops-demo:mlflowMemoryRequest = "0": must be a memory quantity above 0/],
        [{ mlflowCpuRequest: "" }, /ops-demo:mlflowCpuRequest = "": must not be empty/],
        [{ servingCpuRequest: "2", servingCpuLimit: "500m" }, /ops-demo:servingCpuRequest = "2": must be at most servingCpuLimit \(500m\)/],
        [{ trainingMemoryRequest: "3Gi" }, /ops-demo:trainingMemoryRequest = "3Gi": must be at most trainingMemoryLimit \(2Gi\)/],
    ];
    for (const [values, message] of bad) {
        it(`rejects ${JSON.stringify(values)}`, () => {
            const p = problems(values);
            assert.ok(p.some((x) => message.test(x)), JSON.stringify(p));
        });
    }
    it("accepts Kubernetes' usual spellings", () => {
        const c = loadConfig((k) => ({ servingCpuRequest: "0.25", servingCpuLimit: "2", servingMemoryRequest: "1G", servingMemoryLimit: "1024Mi" })[k], "/h", false);
        assert.deepStrictEqual(c.resources.serving, { requests: { cpu: "0.25", memory: "1G" }, limits: { cpu: "2", memory: "1024Mi" } });
    });
});

// --- serving: zero-downtime rollouts ---------------------------------------------------------

describe("serving rollouts and disruptions", () => {
    let run: ProgramRun;
    let d: any;
    before(async () => {
        run = await load("k3s");
        d = inputs(findResource(run.resources, K.deploy, "serving-deployment"));
    });

    it("probes by purpose: startup /health with a budget, liveness /health, readiness /ready", () => {
        const c = d.spec.template.spec.containers[0];
        assert.strictEqual(c.startupProbe.httpGet.path, "/health");
        assert.ok(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold >= 60, "a minute or more for a slow start");
        assert.strictEqual(c.livenessProbe.httpGet.path, "/health");
        assert.strictEqual(c.livenessProbe.initialDelaySeconds, undefined, "the startup probe holds liveness back");
        assert.strictEqual(c.readinessProbe.httpGet.path, "/ready");
    });

    it("rolls with maxUnavailable 0 and drains: preStop pause, then a grace period longer than it", () => {
        assert.strictEqual(d.spec.strategy.rollingUpdate.maxUnavailable, 0);
        const spec = d.spec.template.spec;
        const pause = spec.containers[0].lifecycle.preStop.sleep.seconds;
        assert.ok(pause >= 3, `preStop pause ${pause}s`);
        assert.ok(spec.terminationGracePeriodSeconds > pause + 10, `grace ${spec.terminationGracePeriodSeconds}s vs pause ${pause}s`);
        assert.ok(d.spec.revisionHistoryLimit >= 2, "kubectl rollout undo needs an old ReplicaSet");
    });

    it("spreads replicas over nodes without requiring several", () => {
        const [t] = d.spec.template.spec.topologySpreadConstraints;
        assert.strictEqual(t.topologyKey, "kubernetes.io/hostname");
        assert.strictEqual(t.whenUnsatisfiable, "ScheduleAnyway");
        assert.deepStrictEqual(t.labelSelector.matchLabels, { app: "iris-serving" });
    });

    for (const [set, label] of [[{}, "2 replicas under the autoscaler"], [{ autoscaling: "false", servingReplicas: "1" }, "a single replica"]] as const) {
        it(`a PodDisruptionBudget that lets drains proceed one pod at a time (${label})`, async () => {
            const r = await load("k3s", set);
            const pdbs = ofType(r.resources, K.pdb).map(inputs);
            assert.strictEqual(pdbs.length, 1);
            const [pdb] = pdbs;
            assert.strictEqual(pdb.metadata.namespace, "mlops-serving");
            assert.deepStrictEqual(pdb.spec.selector.matchLabels, { app: "iris-serving" });
            // maxUnavailable 1: never blocks a drain, even with one replica (minAvailable 1 would)
            assert.strictEqual(pdb.spec.maxUnavailable, 1);
            assert.strictEqual(pdb.spec.minAvailable, undefined);
            assert.strictEqual(pdb.spec.unhealthyPodEvictionPolicy, "AlwaysAllow");
        });
    }
});
