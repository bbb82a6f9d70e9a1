/**
 * Observability add-ons for clusters that run them: a ServiceMonitor and the alerting rules (a
 * PrometheusRule) for the Prometheus Operator, and the Grafana dashboard as a ConfigMap for Grafana's
 * dashboard sidecar. The scrape annotations on the pods themselves (prometheus.io/*) are always
 * declared, by the workloads.
 */
import * as fs from "fs";
import * as path from "path";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import * as yaml from "js-yaml";
import { COMMON_LABELS } from "./common";
import { SERVING_DEPLOYMENT, SERVING_METRICS_PATH } from "./serving";

/** The dashboard shipped in the repository (also importable by hand in Grafana). */
export const DASHBOARD_FILE = path.join(__dirname, "..", "dashboards", "iris-serving.json");
/** The alerting rules shipped in the repository (a plain Prometheus rules file; tests/monitoring tests them). */
export const ALERT_RULES_FILE = path.join(__dirname, "..", "dashboards", "alerts.rules.yaml");
/** The rule group about MLflow: declared only when MLflow exposes metrics (else MLflowDown would always fire). */
export const MLFLOW_RULE_GROUP = "ops-demo-mlflow";
/** The label Grafana's sidecar (kiwigrid k8s-sidecar, the Grafana Helm chart's default) looks for. */
export const GRAFANA_DASHBOARD_LABEL = { grafana_dashboard: "1" } as const;

export interface MonitoringArgs {
    /** mlops-serving: where the ServiceMonitor and the dashboard ConfigMap live. */
    readonly namespace: pulumi.Input<string>;
    /** Labels of the serving Service (the ServiceMonitor selects it by them). */
    readonly serviceLabels: Record<string, string>;
    /** Name of the Service port that leads to the metrics (the Service's `http` port). */
    readonly servicePort: string;
    /** Declare the ServiceMonitor (needs the Prometheus Operator's CRD in the cluster). */
    readonly serviceMonitor: boolean;
    /** Declare the dashboard ConfigMap. */
    readonly grafanaDashboard: boolean;
    /** Declare the alerting rules as a PrometheusRule (needs the Prometheus Operator's CRD in the cluster). */
    readonly prometheusRules?: boolean;
    /** Include the MLflow rule group (MLflow is scraped: config mlflowMetrics). */
    readonly mlflowAlerts?: boolean;
}

/** The ServiceMonitor: scrape every endpoint of the serving Service on /metrics every 30 s. */
export function serviceMonitor(args: MonitoringArgs): k8s.apiextensions.CustomResourceArgs {
    return {
        apiVersion: "monitoring.coreos.com/v1",
        kind: "ServiceMonitor",
        metadata: { name: SERVING_DEPLOYMENT, namespace: args.namespace, labels: { ...COMMON_LABELS, app: SERVING_DEPLOYMENT } },
        spec: {
            selector: { matchLabels: args.serviceLabels },
            // honorLabels: the app's own `endpoint` label (the route) wins over the target label
            // `endpoint` (the port name) the operator adds, which would otherwise rename it exported_endpoint.
            endpoints: [{ port: args.servicePort, path: SERVING_METRICS_PATH, interval: "30s", scheme: "http", honorLabels: true }],
        },
    };
}

/** A Prometheus rule group as the rules file holds it. */
export interface RuleGroup {
    readonly name: string;
    readonly rules: readonly Record<string, unknown>[];
    readonly [k: string]: unknown;
}

/** The groups of a Prometheus rules file (`text`: its YAML); fails on anything else. */
export function parseRuleGroups(text: string): RuleGroup[] {
    const doc = yaml.load(text) as { groups?: unknown } | null;
    const groups = doc?.groups;
    if (!Array.isArray(groups) || groups.length === 0 || !groups.every((g) => typeof g?.name === "string" && Array.isArray(g?.rules))) {
        throw new Error(`${ALERT_RULES_FILE}: expected "groups:" with a name and rules each`);
    }
    return groups as RuleGroup[];
}

/**
 * The PrometheusRule: the rules file's groups, without the MLflow group unless `mlflowAlerts`.
 * `rulesYaml` is the rules file's content.
 */
export function prometheusRule(namespace: pulumi.Input<string>, rulesYaml: string, mlflowAlerts: boolean): k8s.apiextensions.CustomResourceArgs {
    const groups = parseRuleGroups(rulesYaml).filter((g) => mlflowAlerts || g.name !== MLFLOW_RULE_GROUP);
    return {
        apiVersion: "monitoring.coreos.com/v1",
        kind: "PrometheusRule",
        metadata: { name: SERVING_DEPLOYMENT, namespace, labels: { ...COMMON_LABELS, app: SERVING_DEPLOYMENT } },
        spec: { groups },
    };
}

/** The dashboard ConfigMap; `json` is the dashboard file's content. */
export function dashboardConfigMap(namespace: pulumi.Input<string>, json: string): k8s.core.v1.ConfigMapArgs {
    return {
        metadata: {
            name: "ops-demo-grafana-dashboard",
            namespace,
            labels: { ...COMMON_LABELS, ...GRAFANA_DASHBOARD_LABEL },
        },
        data: { [path.basename(DASHBOARD_FILE)]: json },
    };
}

export class Monitoring extends pulumi.ComponentResource {
    constructor(name: string, args: MonitoringArgs, opts?: pulumi.ComponentResourceOptions) {
        super("ops-demo:monitoring:Monitoring", name, {}, opts);
        const declared: string[] = [];
        if (args.serviceMonitor) {
            new k8s.apiextensions.CustomResource(`${name}-servicemonitor`, serviceMonitor(args), { parent: this });
            declared.push("ServiceMonitor");
        }
        if (args.grafanaDashboard) {
            const json = fs.readFileSync(DASHBOARD_FILE, "utf8");
            new k8s.core.v1.ConfigMap(`${name}-dashboard`, dashboardConfigMap(args.namespace, json), { parent: this });
            declared.push("ConfigMap");
        }
        if (args.prometheusRules) {
            const rules = prometheusRule(args.namespace, fs.readFileSync(ALERT_RULES_FILE, "utf8"), args.mlflowAlerts === true);
            new k8s.apiextensions.CustomResource(`${name}-rules`, rules, { parent: this });
            declared.push("PrometheusRule");
        }
        this.registerOutputs({ declared });
    }
}
