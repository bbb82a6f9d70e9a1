/** The alerting rules: dashboards/alerts.rules.yaml, and the PrometheusRule the stack declares from it (config prometheusRules). */
import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import * as yaml from "js-yaml";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { loadConfig } from "../../components/config";
import { MLFLOW_RULE_GROUP, parseRuleGroups, prometheusRule } from "../../components/monitoring";
import { configProblems, stackLoader } from "./fixtures";
import { findResource, ofType, Recorded, ROOT } from "./harness";
import { exposedSeries, promqlNames } from "./scale.test";

/* eslint-disable @typescript-eslint/no-explicit-any */
const load = stackLoader();
const inputs = (r: Recorded): any => r.inputs;
const PR = "kubernetes:monitoring.coreos.com/v1:PrometheusRule";
const RULES_FILE = path.join(ROOT, "dashboards/alerts.rules.yaml");
const rulesText = fs.readFileSync(RULES_FILE, "utf8");
const fileGroups = (yaml.load(rulesText) as any).groups;
const alertNames = (groups: any[]): string[] => groups.flatMap((g) => g.rules.map((r: any) => r.alert));

/** What an operator must hear about (issue 12), each an alert of the file. */
const EXPECTED_ALERTS = [
    "ServingDown",
    "ServingNoModelLoaded",
    "ServingReplicaWithoutModel",
    "ServingHighErrorRate",
    "ServingHighLatencyP99",
    "ServingModelReloadRefused",
    "ServingModelVersionsDiffer",
    "MLflowDown",
];

describe("alerting rules (dashboards/alerts.rules.yaml)", () => {
    it("holds the alerts an operator must hear about, each with a severity, a summary and a description", () => {
        assert.deepStrictEqual(alertNames(fileGroups).sort(), [...EXPECTED_ALERTS].sort());
        for (const g of fileGroups) {
            for (const r of g.rules) {
                assert.match(r.labels?.severity ?? "", /^(critical|warning)$/, `${r.alert}: severity`);
                assert.ok(r.annotations?.summary && r.annotations?.description, `${r.alert}: summary and description`);
                assert.ok(typeof r.expr === "string" && r.expr.length > 0, `${r.alert}: expr`);
            }
        }
        assert.deepStrictEqual(fileGroups.map((g: any) => g.name), ["ops-demo-serving", MLFLOW_RULE_GROUP]);
        assert.deepStrictEqual(alertNames(fileGroups.filter((g: any) => g.name === MLFLOW_RULE_GROUP)), ["MLflowDown"]);
    });

    it("queries only series the serving app exposes (images/serving/app/metrics.py) and `up`, with labels they carry", () => {
        const series = exposedSeries(fs.readFileSync(path.join(ROOT, "images/serving/app/metrics.py"), "utf8"));
        series.set("up", new Set());
        // labels the scrape adds (both the kubernetes-pods job and the ServiceMonitor set namespace and pod)
        const targetLabels = new Set(["namespace", "pod", "job", "instance"]);
        for (const g of fileGroups) {
            for (const r of g.rules) {
                const { metrics, labels } = promqlNames(r.expr);
                assert.ok(metrics.length > 0, `${r.alert}: no series found in ${r.expr}`);
                for (const m of metrics) {
                    assert.ok(series.has(m), `${r.alert} queries ${m}, which nothing exposes`);
                }
                const known = new Set(metrics.flatMap((m) => [...(series.get(m) ?? [])]));
                for (const l of labels) {
                    assert.ok(known.has(l) || targetLabels.has(l), `${r.alert} uses label ${l}; ${metrics.join(", ")} carry ${[...known].join(", ")}`);
                }
            }
        }
    });

    it("has a promtool unit test (tests/monitoring/alerts.test.yaml) in which every alert fires", () => {
        const tests = (yaml.load(fs.readFileSync(path.join(ROOT, "tests/monitoring/alerts.test.yaml"), "utf8")) as any).tests;
        const fired = new Set<string>();
        const silent = new Set<string>();
        for (const t of tests) {
            for (const a of t.alert_rule_test ?? []) {
                (a.exp_alerts?.length ? fired : silent).add(a.alertname);
            }
        }
        for (const name of EXPECTED_ALERTS) {
            assert.ok(fired.has(name), `no promtool test in which ${name} fires`);
            assert.ok(silent.has(name), `no promtool test in which ${name} stays silent`);
        }
    });
});

describe("PrometheusRule (config prometheusRules)", () => {
    it("is off by default: declared by neither stack (no Prometheus Operator CRDs assumed)", async () => {
        assert.strictEqual(loadConfig(() => undefined, "/home/u", false).prometheusRules, false);
        for (const stack of ["k3s", "dev"]) {
            const run = await load(stack);
            assert.strictEqual(ofType(run.resources, PR).length, 0);
        }
    });

    it("prometheusRules=true: a monitoring.coreos.com/v1 PrometheusRule iris-serving in mlops-serving with the serving alerts", async () => {
        const run = await load("k3s", { prometheusRules: "true" });
        const pr = inputs(findResource(run.resources, PR, "monitoring-rules"));
        assert.strictEqual(pr.apiVersion, "monitoring.coreos.com/v1");
        assert.strictEqual(pr.kind, "PrometheusRule");
        assert.strictEqual(pr.metadata.name, "iris-serving");
        assert.strictEqual(pr.metadata.namespace, "mlops-serving");
        assert.strictEqual(pr.metadata.labels["app.kubernetes.io/part-of"], "ops-demo");
        // mlflowMetrics is off: MLflow is not scraped, so the MLflow group would fire forever
        assert.deepStrictEqual(pr.spec.groups, fileGroups.filter((g: any) => g.name !== MLFLOW_RULE_GROUP));
        assert.ok(!alertNames(pr.spec.groups).includes("MLflowDown"));
        assert.strictEqual(new PrometheusRule(JSON.parse(JSON.stringify(pr))).validate(), undefined);
        // alone it declares neither the ServiceMonitor nor the dashboard
        assert.deepStrictEqual(
            run.resources.filter((r) => r.type.startsWith("kubernetes:monitoring.coreos.com") || r.type === "kubernetes:core/v1:ConfigMap").map((r) => r.type),
            [PR],
        );
    });

    it("with mlflowMetrics=true: exactly the rules file's groups, MLflowDown included", async () => {
        const run = await load("k3s", { prometheusRules: "true", mlflowMetrics: "true", serviceMonitor: "true", grafanaDashboard: "true" });
        const pr = inputs(findResource(run.resources, PR, "monitoring-rules"));
        assert.deepStrictEqual(pr.spec.groups, fileGroups);
        assert.strictEqual(new PrometheusRule(JSON.parse(JSON.stringify(pr))).validate(), undefined);
        assert.strictEqual(ofType(run.resources, "kubernetes:monitoring.coreos.com/v1:ServiceMonitor").length, 1);
    });

    it("the schema check can fail: a rule without expr, a group without name", () => {
        const good = prometheusRule("ns", rulesText, true) as any;
        const noExpr = JSON.parse(JSON.stringify(good));
        delete noExpr.spec.groups[0].rules[0].expr;
        assert.throws(() => new PrometheusRule(noExpr).validate(), /expr/);
        const noName = JSON.parse(JSON.stringify(good));
        delete noName.spec.groups[0].name;
        assert.throws(() => new PrometheusRule(noName).validate(), /name/);
    });

    it("refuses a rules file that is not a list of groups", () => {
        assert.throws(() => parseRuleGroups("rules: []\n"), /expected "groups:"/);
        assert.throws(() => parseRuleGroups("groups:\n  - rules: []\n"), /expected "groups:"/);
        assert.strictEqual(parseRuleGroups(rulesText).length, 2);
    });

    it("the ServiceMonitor honors the app's labels (its `endpoint` label is the route, not the port name)", async () => {
        const run = await load("k3s", { serviceMonitor: "true" });
        const sm = inputs(findResource(run.resources, "kubernetes:monitoring.coreos.com/v1:ServiceMonitor", "monitoring-servicemonitor"));
        assert.strictEqual(sm.spec.endpoints[0].honorLabels, true);
    });

    it("rejects a non-boolean, naming key and value", () => {
        assert.match(configProblems({ prometheusRules: "yes" })[0], /ops-demo:prometheusRules = "yes"/);
    });
});
