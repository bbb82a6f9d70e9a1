// The MLOps environment of the guide as one Pulumi program: reads the config once, wires the components.
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import { loadConfig } from "./components/config";
import { imagePullPolicy } from "./components/common";
import { ClusterAccess, EmbeddedCluster, ExistingCluster } from "./components/cluster";
import { Images } from "./components/images";
import { ImageImport } from "./components/imageImport";
import { Namespaces, SERVING_NAMESPACE, TRAINING_NAMESPACE } from "./components/namespaces";
import { SharedStorage } from "./components/storage";
import { MLFLOW_PORT, MLFLOW_SERVICE, MlflowServer, trackingAuthEnv } from "./components/mlflow";
import { NetworkPolicies, postgresPort } from "./components/networkPolicies";
import { SERVING_SERVICE, ServingApi } from "./components/serving";
import { Monitoring } from "./components/monitoring";
import { RegistryPullSecrets } from "./components/registry";
import { rebaseUrl, TrainingRuns } from "./components/training";
import { replacementTransformation } from "./components/replacement";

const MLFLOW_NODE_PORT = 30500;
const cfg = loadConfig();

const cluster: ClusterAccess =
    cfg.cluster === "embedded"
        ? new EmbeddedCluster("cluster", {
              k3sImage: cfg.k3sImage,
              containerName: cfg.embeddedClusterName,
              apiPort: cfg.apiPort,
              servingHostPort: cfg.servingHostPort,
              mlflowHostPort: cfg.mlflowHostPort,
              mlflowNodePort: MLFLOW_NODE_PORT,
              servingPort: cfg.servingPort,
              storageDir: cfg.storageDir,
              readyTimeoutSeconds: 240,
          })
        : new ExistingCluster("cluster", { kubeconfig: cfg.kubeconfig, context: cfg.kubeContext, sudo: cfg.sudo });
// every Kubernetes object: fixed names replaced delete-first; in the embedded cluster deleted with its container
const k8sOpts = {
    providers: [cluster.provider],
    transformations: [replacementTransformation({ deletedWith: cluster instanceof EmbeddedCluster ? cluster.container : undefined })],
};
const pullPolicy = imagePullPolicy(cfg.imageLoader);

const images = new Images("images", {
    imagesDir: process.env.OPS_DEMO_IMAGES_DIR || path.join(__dirname, "images"),
    baseImage: cfg.baseImage,
    pipNoIndex: cfg.pipNoIndex,
    registry: cfg.registry,
});
const imported = new ImageImport(
    "image-import",
    {
        loader: cfg.imageLoader,
        images: { training: images.training, serving: images.serving },
        sudo: cfg.sudo,
        embeddedContainer: cfg.embeddedClusterName,
        kindClusterName: cfg.kindClusterName,
        clusterIdentity: cluster.identity,
    },
    { dependsOn: cluster.ready },
);
const namespaces = new Namespaces("namespaces", k8sOpts);
const registryCredentials = cfg.registry?.credentials;
const pullSecrets =
    cfg.registry !== undefined && registryCredentials !== undefined
        ? new RegistryPullSecrets(
              "registry",
              { registry: { ...cfg.registry, credentials: registryCredentials }, namespaces: { training: namespaces.training, serving: namespaces.serving } },
              k8sOpts,
          ).names
        : {};
if (cfg.networkPolicies) {
    new NetworkPolicies(
        "network-policies",
        {
            trainingNamespace: namespaces.training,
            servingNamespace: namespaces.serving,
            // the dev stack publishes MLflow on 127.0.0.1 through a NodePort: its traffic comes from the node
            mlflowFromAnywhere: cfg.cluster === "embedded",
            mlflowMetrics: cfg.mlflowMetrics,
            mlflowBackendPort: cfg.mlflowBackendUri === undefined ? undefined : postgresPort(cfg.mlflowBackendUri),
        },
        k8sOpts,
    );
}
const storage = new SharedStorage(
    "storage",
    {
        storageDir: cfg.storageDir,
        trainingNamespace: namespaces.training,
        servingNamespace: namespaces.serving,
        rootShell: (script) => cluster.rootShell(script),
        prepareAfter: cluster.ready,
        clusterIdentity: cluster.identity,
        nfs: cfg.nfs,
    },
    k8sOpts,
);
const mlflow = new MlflowServer(
    "mlflow",
    {
        namespace: namespaces.training,
        image: images.training.podImage,
        imagePullPolicy: pullPolicy,
        imagePullSecret: pullSecrets.training,
        dataClaim: storage.dataClaim,
        nodePort: cfg.cluster === "embedded" ? MLFLOW_NODE_PORT : undefined,
        backendUri: cfg.mlflowBackendUri === undefined ? undefined : pulumi.secret(cfg.mlflowBackendUri),
        metrics: cfg.mlflowMetrics,
        resources: cfg.resources.mlflow,
        auth: cfg.mlflowAuth,
        kubectl: cluster.kubectl,
    },
    { ...k8sOpts, dependsOn: imported.commands },
);
const training = new TrainingRuns(
    "training",
    {
        namespace: namespaces.training,
        imageRef: images.training.ref,
        image: images.training.podImage,
        imagePullPolicy: pullPolicy,
        imagePullSecret: pullSecrets.training,
        dataClaim: storage.dataClaim,
        storageKey: storage.key,
        trackingUri: mlflow.trackingUri,
        runs: cfg.runs,
        promotionPolicy: cfg.promotionPolicy,
        kubectl: cluster.kubectl,
        timeoutMinutes: cfg.trainingTimeoutMinutes,
        gpus: cfg.trainingGpus,
        gpuRuntimeClass: cfg.gpuRuntimeClass,
        resources: cfg.resources.training,
        trackingAuthEnv: cfg.mlflowAuth ? trackingAuthEnv() : [],
    },
    { ...k8sOpts, dependsOn: [mlflow, ...(mlflow.ready ? [mlflow.ready] : []), ...imported.commands] },
);
const serving = new ServingApi(
    "serving",
    {
        namespace: namespaces.serving,
        image: images.serving.podImage,
        imagePullPolicy: pullPolicy,
        imagePullSecret: pullSecrets.serving,
        modelsClaim: storage.modelsClaim,
        replicas: cfg.servingReplicas,
        autoscaling: cfg.autoscaling,
        resources: cfg.resources.serving,
        servicePort: cfg.servingPort,
        kubectl: cluster.kubectl,
        // the newest version this update's runs promoted: the read of what serving answers waits for it
        expectedVersion: pulumi.all(training.results).apply((rs) => {
            const promoted = rs.filter((r) => r.promoted === true).map((r) => Number(r.version)).filter((v) => Number.isFinite(v));
            return promoted.length === 0 ? "" : String(Math.max(...promoted));
        }),
    },
    { ...k8sOpts, dependsOn: [...training.waits, ...imported.commands] },
);
if (cfg.serviceMonitor || cfg.grafanaDashboard || cfg.prometheusRules) {
    new Monitoring(
        "monitoring",
        {
            namespace: namespaces.serving,
            serviceLabels: serving.serviceLabels,
            servicePort: "http",
            serviceMonitor: cfg.serviceMonitor,
            grafanaDashboard: cfg.grafanaDashboard,
            prometheusRules: cfg.prometheusRules,
            mlflowAlerts: cfg.mlflowMetrics,
        },
        k8sOpts,
    );
}

const mlflowForward = `kubectl port-forward -n ${TRAINING_NAMESPACE} svc/${MLFLOW_SERVICE} ${MLFLOW_PORT}:${MLFLOW_PORT}`;
const servingForward = `kubectl port-forward -n ${SERVING_NAMESPACE} svc/${SERVING_SERVICE} 8000:${cfg.servingPort}`;
const embedded = cfg.cluster === "embedded";
// k3s: the LoadBalancer's address once servicelb assigned it; until then the port-forward's local URL.
const servingBase = embedded
    ? pulumi.output(`http://localhost:${cfg.servingHostPort}`)
    : serving.loadBalancerAddress.apply((a) => (a === "" ? "http://localhost:8000" : `http://${a}${cfg.servingPort === 80 ? "" : `:${cfg.servingPort}`}`));

export const mlflowUrl = `http://localhost:${embedded ? cfg.mlflowHostPort : MLFLOW_PORT}`;
export const mlflowPortForward = embedded ? "not needed: MLflow is published on mlflowUrl" : mlflowForward;
export const servingUrl = servingBase;
export const servingPortForward = servingForward;
export const predictExample = pulumi.interpolate`curl -X POST ${servingBase}/predict -H "Content-Type: application/json" -d '{"features": [5.1, 3.5, 1.4, 0.2]}'`;
export const trainingJobs = training.jobNames;
export const trainingLogs = training.jobNames.map((j) => `kubectl logs -n ${TRAINING_NAMESPACE} job/${j}`);
// per run of this stack: parameters, accuracy, macro F1, MLflow run id and link, model version, promoted and why
// what serving answers with now (GET /model of a serving pod): version, run id, metrics
export const servingModel = serving.servedModel;
export const trainingRuns = training.results.map((r) =>
    r.apply((x) => ({ ...x, ...(rebaseUrl(x.run_url, mlflowUrl) ? { mlflow_link: rebaseUrl(x.run_url, mlflowUrl) } : {}) })),
);
export const imageRefs = { training: images.training.name, serving: images.serving.name };
export const storageDir = cfg.storageDir;
export const kubectlHint = embedded
    ? `docker exec ${cfg.embeddedClusterName} kubectl get pods,svc,jobs -A   (or: pulumi stack output kubeconfig --show-secrets > dev.kubeconfig && export KUBECONFIG=$PWD/dev.kubeconfig)`
    : `kubectl --kubeconfig ${cfg.kubeconfig} get pods,svc,jobs -n ${TRAINING_NAMESPACE}`;
// the embedded cluster's admin kubeconfig (secret); for an existing cluster, the file the stack uses
export const kubeconfig = cluster instanceof EmbeddedCluster ? cluster.kubeconfig : cfg.kubeconfig;
