/** Scale and observability options: autoscaling, scrape annotations, ServiceMonitor, dashboard, GPUs. */
import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { loadConfig } from "../../components/config";
import { configProblems, stackLoader } from "./fixtures";
import { findResource, kubernetesObjects, ofType, Recorded, ROOT } from "./harness";

/* eslint-disable @typescript-eslint/no-explicit-any */
const load = stackLoader();
const inputs = (r: Recorded): any => r.inputs;
const HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler";
const DEPLOY = "kubernetes:apps/v1:Deployment";
const JOB = "kubernetes:batch/v1:Job";
const SM = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor";
const CM = "kubernetes:core/v1:ConfigMap";

const problems = configProblems;

describe("autoscaling (HorizontalPodAutoscaler of iris-serving)", () => {
    it("k3s stack: autoscaling/v2 on CPU, the guide's 2..10 at 70%, targeting the Deployment, which declares no replicas", async () => {
        const run = await load("k3s");
        const hpa = inputs(findResource(run.resources, HPA, "serving-hpa"));
        assert.strictEqual(hpa.apiVersion, "autoscaling/v2");
        assert.strictEqual(hpa.metadata.namespace, "mlops-serving");
        assert.deepStrictEqual(hpa.spec.scaleTargetRef, { apiVersion: "apps/v1", kind: "Deployment", name: "iris-serving" });
        assert.strictEqual(hpa.spec.minReplicas, 2);
        assert.strictEqual(hpa.spec.maxReplicas, 10);
        assert.deepStrictEqual(hpa.spec.metrics, [
            { type: "Resource", resource: { name: "cpu", target: { type: "Utilization", averageUtilization: 70 } } },
        ]);
        const d = inputs(findResource(run.resources, DEPLOY, "serving-deployment"));
        assert.ok(!("replicas" in d.spec), "the HPA owns spec.replicas: the Deployment must not declare it");
        // Utilization is relative to the request: without a CPU request the HPA cannot compute it.
        assert.ok(d.spec.template.spec.containers[0].resources.requests.cpu);
    });

    it("dev stack: on too (the embedded k3s runs its bundled metrics-server), at most 4 replicas", async () => {
        const run = await load("dev");
        const hpa = inputs(findResource(run.resources, HPA, "serving-hpa"));
        assert.deepStrictEqual([hpa.spec.minReplicas, hpa.spec.maxReplicas], [2, 4]);
        const node = inputs(findResource(run.resources, "docker:index/container:Container", "cluster-node"));
        assert.ok(!node.command.some((a: string) => /disable.*metrics-server/.test(a)), node.command.join(" "));
    });

    it("off (the project default, for clusters without metrics-server): no HPA, the Deployment has servingReplicas", async () => {
        const run = await load("k3s", { autoscaling: "false", servingReplicas: "3" });
        assert.strictEqual(ofType(run.resources, HPA).length, 0);
        assert.strictEqual(inputs(findResource(run.resources, DEPLOY, "serving-deployment")).spec.replicas, 3);
    });

    it("takes min, max and target from config", async () => {
        const run = await load("k3s", { autoscalingMinReplicas: "3", autoscalingMaxReplicas: "5", autoscalingTargetCpu: "50" });
        const hpa = inputs(findResource(run.resources, HPA, "serving-hpa"));
        assert.deepStrictEqual([hpa.spec.minReplicas, hpa.spec.maxReplicas, hpa.spec.metrics[0].resource.target.averageUtilization], [3, 5, 50]);
    });

    it("rejects min > max, out-of-range values and non-booleans, naming key, value and what is allowed", () => {
        assert.deepStrictEqual(problems({ autoscaling: "true", autoscalingMinReplicas: "6", autoscalingMaxReplicas: "5" }), [
            'ops-demo:autoscalingMaxReplicas = 5: must be at least autoscalingMinReplicas (6)',
        ]);
        assert.match(problems({ autoscalingTargetCpu: "0" })[0], /ops-demo:autoscalingTargetCpu = "0": must be a whole number from 1 to 100 \(default 70\)/);
        assert.match(problems({ autoscalingTargetCpu: "101" })[0], /ops-demo:autoscalingTargetCpu = "101": must be a whole number from 1 to 100/);
        assert.match(problems({ autoscalingMinReplicas: "0" })[0], /ops-demo:autoscalingMinReplicas = "0": must be a whole number from 1 to 50/);
        assert.match(problems({ autoscalingMaxReplicas: "ten" })[0], /ops-demo:autoscalingMaxReplicas = "ten": must be a whole number from 1 to 100/);
        assert.match(problems({ autoscaling: "yes" })[0], /ops-demo:autoscaling = "yes": must be true or false/);
        assert.deepStrictEqual(problems({ autoscaling: "true", servingReplicas: "0" }), [
            "ops-demo:servingReplicas = 0: cannot stop serving while autoscaling is on (the HPA keeps at least autoscalingMinReplicas = 2); set autoscaling false first",
        ]);
        assert.strictEqual(loadConfig((k) => ({ autoscaling: "false", servingReplicas: "0" } as Record<string, string>)[k], "/h", false).servingReplicas, 0);
    });
});

describe("Prometheus and Grafana", () => {
    it("annotates the serving pods for the kubernetes-pods scrape job: /metrics on 8000", async () => {
        const run = await load("k3s");
        const d = inputs(findResource(run.resources, DEPLOY, "serving-deployment"));
        assert.deepStrictEqual(d.spec.template.metadata.annotations, {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8000",
            "prometheus.io/path": "/metrics",
        });
        assert.ok(d.spec.template.spec.containers[0].ports.some((p: any) => p.containerPort === 8000));
    });

    it("mlflowMetrics off (default): MLflow has no exporter, no scrape annotations, the documented allowed hosts", async () => {
        const run = await load("k3s");
        const d = inputs(findResource(run.resources, DEPLOY, "mlflow-deployment"));
        const c = d.spec.template.spec.containers[0];
        assert.strictEqual(d.spec.template.metadata.annotations, undefined);
        assert.ok(!c.command.includes("--expose-prometheus"));
        assert.ok(!c.env.some((e: any) => e.name === "POD_IP"));
        assert.ok(!c.command[c.command.indexOf("--allowed-hosts") + 1].includes("POD_IP"));
    });

    it("mlflowMetrics=true: --expose-prometheus on the writable /tmp, the pod's own IP:5000 allowed, scrape annotations", async () => {
        const run = await load("k3s", { mlflowMetrics: "true" });
        const d = inputs(findResource(run.resources, DEPLOY, "mlflow-deployment"));
        const c = d.spec.template.spec.containers[0];
        const dir = c.command[c.command.indexOf("--expose-prometheus") + 1];
        assert.strictEqual(dir, "/tmp/mlflow-metrics");
        assert.ok(c.volumeMounts.some((m: any) => m.mountPath === "/tmp" && d.spec.template.spec.volumes.find((v: any) => v.name === m.name).emptyDir), "the dir is on an emptyDir");
        assert.deepStrictEqual(c.env.find((e: any) => e.name === "POD_IP"), { name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } });
        const hosts = c.command[c.command.indexOf("--allowed-hosts") + 1].split(",");
        assert.ok(hosts.includes("$(POD_IP):5000"), hosts.join(","));
        assert.ok(hosts.includes("mlflow-service.mlops-training.svc.cluster.local:5000"));
        assert.deepStrictEqual(d.spec.template.metadata.annotations, {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "5000",
            "prometheus.io/path": "/metrics",
        });
    });

    it("declares no ServiceMonitor and no dashboard ConfigMap by default (no CRD, no Grafana assumed)", async () => {
        for (const stack of ["k3s", "dev"]) {
            const run = await load(stack);
            assert.strictEqual(ofType(run.resources, SM).length, 0);
            assert.strictEqual(ofType(run.resources, CM).length, 0);
            assert.ok(!run.resources.some((r) => r.type === "ops-demo:monitoring:Monitoring"));
        }
    });

    it("serviceMonitor=true: a monitoring.coreos.com/v1 ServiceMonitor selecting iris-serving-service's labels, port http, /metrics", async () => {
        const run = await load("k3s", { serviceMonitor: "true" });
        const sm = inputs(findResource(run.resources, SM, "monitoring-servicemonitor"));
        assert.strictEqual(sm.apiVersion, "monitoring.coreos.com/v1");
        assert.strictEqual(sm.kind, "ServiceMonitor");
        assert.strictEqual(sm.metadata.namespace, "mlops-serving");
        const svc = inputs(findResource(run.resources, "kubernetes:core/v1:Service", "serving-service"));
        for (const [k, v] of Object.entries(sm.spec.selector.matchLabels)) {
            assert.strictEqual(svc.metadata.labels[k], v, `the Service carries ${k}=${v}`);
        }
        const [ep] = sm.spec.endpoints;
        assert.ok(svc.spec.ports.some((p: any) => p.name === ep.port && p.targetPort === 8000), `port ${ep.port} leads to 8000`);
        assert.strictEqual(ep.path, "/metrics");
        assert.strictEqual(ofType(run.resources, CM).length, 0);
    });

    it("grafanaDashboard=true: the repository's dashboard JSON in a ConfigMap labelled grafana_dashboard=1", async () => {
        const run = await load("k3s", { grafanaDashboard: "true" });
        const cm = inputs(findResource(run.resources, CM, "monitoring-dashboard"));
        assert.strictEqual(cm.metadata.labels.grafana_dashboard, "1");
        assert.strictEqual(cm.metadata.namespace, "mlops-serving");
        assert.deepStrictEqual(Object.keys(cm.data), ["iris-serving.json"]);
        assert.strictEqual(cm.data["iris-serving.json"], fs.readFileSync(path.join(ROOT, "dashboards/iris-serving.json"), "utf8"));
        assert.strictEqual(ofType(run.resources, SM).length, 0);
    });
});

/** The series a prometheus_client metric module exposes: metric name -> its label names. */
export function exposedSeries(source: string): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    const re = /\b(Counter|Gauge|Histogram|Summary)\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)",\s*"[^"]*",\s*(?:\[([^\]]*)\])?/g;
    for (const m of source.matchAll(re)) {
        const [, kind, name, labelList] = m;
        const labels = new Set((labelList ?? "").split(",").map((l) => l.trim().replace(/^"|"$/g, "")).filter((l) => l !== ""));
        const base = name.replace(/_total$/, "");
        const suffixes: Record<string, string[]> = {
            Counter: ["_total", "_created"],
            Gauge: [""],
            Histogram: ["_bucket", "_sum", "_count", "_created"],
            Summary: ["_sum", "_count", "_created"],
        };
        for (const s of suffixes[kind]) {
            out.set(base + s, s === "_bucket" ? new Set([...labels, "le"]) : labels);
        }
    }
    return out;
}

const PROMQL_WORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"]);

/** Metric names and label names a PromQL expression uses (functions, keywords, strings, numbers and durations left out). */
export function promqlNames(expr: string): { metrics: string[]; labels: string[] } {
    const labels: string[] = [];
    const bare = expr
        .replace(/"(?:[^"\\]|\\.)*"/g, '""')
        .replace(/\{([^}]*)\}/g, (_, inner: string) => {
            for (const m of inner.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/g)) {
                labels.push(m[1]);
            }
            return "";
        })
        .replace(/\[[^\]]*\]/g, "")
        .replace(/\b(by|without|on|ignoring)\s*\(([^)]*)\)/g, (_, _kw: string, list: string) => {
            labels.push(...list.split(",").map((l) => l.trim()).filter((l) => l !== ""));
            return "";
        })
        .replace(/\$[a-zA-Z_]+/g, "");
    const metrics: string[] = [];
    for (const m of bare.matchAll(/(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
        if (m[2] !== undefined || PROMQL_WORDS.has(m[1].toLowerCase()) || /^\d/.test(m[1])) {
            continue;
        }
        metrics.push(m[1]);
    }
    return { metrics, labels };
}

describe("the Grafana dashboard and the serving app's metrics cannot drift apart", () => {
    const metricsPy = fs.readFileSync(path.join(ROOT, "images/serving/app/metrics.py"), "utf8");
    const dashboard = JSON.parse(fs.readFileSync(path.join(ROOT, "dashboards/iris-serving.json"), "utf8"));
    const exprs: string[] = dashboard.panels.flatMap((p: any) => p.targets.map((t: any) => t.expr));
    // Labels Prometheus adds to every scraped series (target labels), which the app does not define.
    const targetLabels = new Set(["namespace", "pod", "instance", "job", "service", "container", "endpoint_port"]);

    it("reads the metric definitions of images/serving/app/metrics.py", () => {
        const series = exposedSeries(metricsPy);
        assert.deepStrictEqual([...series.get("serving_http_requests_total")!].sort(), ["endpoint", "method", "status"]);
        assert.ok(series.has("serving_http_request_duration_seconds_bucket"));
        assert.ok(series.get("serving_http_request_duration_seconds_bucket")!.has("le"));
        assert.ok(series.has("serving_model_info") && series.has("serving_predictions_total"));
        assert.ok(series.size >= 12, [...series.keys()].join(", "));
    });

    it("parses PromQL names (so the check below can fail)", () => {
        const n = promqlNames('histogram_quantile(0.95, sum by (le) (rate(foo_bucket{namespace=~"$namespace",endpoint="/p"}[5m]))) / clamp_min(bar_total, 1e-9)');
        assert.deepStrictEqual(n.metrics, ["foo_bucket", "bar_total"]);
        assert.deepStrictEqual(n.labels.sort(), ["endpoint", "le", "namespace"]);
        const series = exposedSeries(metricsPy);
        assert.ok(!series.has(promqlNames("rate(serving_http_requests[5m])").metrics[0]), "a counter is exposed as _total only");
    });

    it("queries only series the app exposes, with labels they carry", () => {
        const series = exposedSeries(metricsPy);
        assert.ok(exprs.length >= 6);
        for (const expr of exprs) {
            const { metrics, labels } = promqlNames(expr);
            assert.ok(metrics.length > 0, `no metric in ${expr}`);
            const known = new Set<string>();
            for (const m of metrics) {
                assert.ok(series.has(m), `dashboard queries ${m}, which images/serving/app/metrics.py does not expose (${[...series.keys()].join(", ")})`);
                series.get(m)!.forEach((l) => known.add(l));
            }
            for (const l of labels) {
                assert.ok(known.has(l) || targetLabels.has(l), `dashboard uses label ${l} in ${expr}; the metrics carry ${[...known].join(", ")}`);
            }
        }
    });

    it("shows request rate, latency percentiles, errors, predictions by class and the loaded model version", () => {
        const all = exprs.join("\n");
        assert.match(all, /rate\(serving_http_requests_total/);
        for (const q of ["0.5", "0.95", "0.99"]) {
            assert.ok(all.includes(`histogram_quantile(${q}, sum by (le) (rate(serving_http_request_duration_seconds_bucket`), `p${q}`);
        }
        assert.match(all, /status=~"5\.\."/);
        assert.match(all, /sum by \(class_name\) \(rate\(serving_predictions_total/);
        assert.match(all, /serving_model_info/);
        assert.ok(dashboard.uid && dashboard.title && dashboard.panels.every((p: any) => p.gridPos && p.datasource));
    });
});

describe("GPU for training", () => {
    it("trainingGpus=0 (default): no GPU limit, no runtime class, no toleration", async () => {
        const run = await load("k3s");
        for (const j of ofType(run.resources, JOB)) {
            const spec = inputs(j).spec.template.spec;
            assert.strictEqual(spec.runtimeClassName, undefined);
            assert.strictEqual(spec.tolerations, undefined);
            assert.strictEqual(spec.containers[0].resources.limits["nvidia.com/gpu"], undefined);
        }
    });

    it("trainingGpus=2: nvidia.com/gpu limit, runtimeClassName nvidia, tolerates the GPU taint; serving and MLflow unchanged", async () => {
        const run = await load("k3s", { trainingGpus: "2" });
        const [job] = ofType(run.resources, JOB);
        const spec = inputs(job).spec.template.spec;
        assert.strictEqual(spec.containers[0].resources.limits["nvidia.com/gpu"], "2");
        assert.strictEqual(spec.containers[0].resources.limits.cpu, "2");
        assert.strictEqual(spec.runtimeClassName, "nvidia");
        assert.deepStrictEqual(spec.tolerations, [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }]);
        for (const d of ofType(run.resources, DEPLOY)) {
            assert.strictEqual(inputs(d).spec.template.spec.runtimeClassName, undefined, d.name);
        }
    });

    it("gpuRuntimeClass: another class, or empty for the node's default runtime", async () => {
        const other = await load("k3s", { trainingGpus: "1", gpuRuntimeClass: "nvidia-cdi" });
        assert.strictEqual(inputs(ofType(other.resources, JOB)[0]).spec.template.spec.runtimeClassName, "nvidia-cdi");
        const none = await load("k3s", { trainingGpus: "1", gpuRuntimeClass: "" });
        const spec = inputs(ofType(none.resources, JOB)[0]).spec.template.spec;
        assert.strictEqual(spec.runtimeClassName, undefined);
        assert.strictEqual(spec.containers[0].resources.limits["nvidia.com/gpu"], "1");
    });

    it("rejects a bad GPU count or runtime class name", () => {
        assert.match(problems({ trainingGpus: "-1" })[0], /ops-demo:trainingGpus = "-1": must be a whole number from 0 to 16 \(default 0\)/);
        assert.match(problems({ trainingGpus: "1.5" })[0], /ops-demo:trainingGpus = "1.5"/);
        assert.match(problems({ gpuRuntimeClass: "NVIDIA GPU" })[0], /ops-demo:gpuRuntimeClass = "NVIDIA GPU": must be empty .* or a RuntimeClass name/);
    });

    it("every option on still declares only valid objects with apiVersion and kind", async () => {
        const run = await load("k3s", { serviceMonitor: "true", grafanaDashboard: "true", trainingGpus: "1" });
        const kinds = kubernetesObjects(run.resources).map((o) => inputs(o).kind);
        for (const k of ["HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"]) {
            assert.ok(kinds.includes(k), `${k} in ${kinds.join(", ")}`);
        }
    });
});
