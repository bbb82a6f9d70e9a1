"""The MLflow server's Prometheus metrics, as the stack enables them with config mlflowMetrics:
`--expose-prometheus <dir on the /tmp emptyDir>` and the pod's own IP:5000 added to --allowed-hosts
(Prometheus scrapes a pod by its IP, so that is the Host header it sends)."""

import requests
from trainer_testlib import running_mlflow_server

POD_IP_HOST = "10.42.0.7:5000"  # what $(POD_IP):5000 expands to in a pod


def test_expose_prometheus_serves_metrics_to_the_pod_ip_only(tmp_path):
    metrics_dir = tmp_path / "mlflow-metrics"  # the stack: /tmp/mlflow-metrics on the writable emptyDir

    def enable_metrics(argv):
        argv = list(argv)
        i = argv.index("--allowed-hosts") + 1
        argv[i] = f"{argv[i]},{POD_IP_HOST}"
        return [*argv, "--expose-prometheus", str(metrics_dir)]

    with running_mlflow_server(tmp_path, edit_argv=enable_metrics) as (server, _proc):
        api = requests.post(f"{server.uri}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, timeout=10)
        assert api.status_code == 200, api.text
        scraped = requests.get(f"{server.uri}/metrics", headers={"Host": POD_IP_HOST}, timeout=10)
        assert scraped.status_code == 200, scraped.text[:300]
        assert "mlflow_http_request_total" in scraped.text
        assert "mlflow_http_request_duration_seconds_bucket" in scraped.text
        other_pod = requests.get(f"{server.uri}/metrics", headers={"Host": "10.42.0.8:5000"}, timeout=10)
        assert other_pod.status_code == 403, "only the pod's own address is added to the allowed hosts"
        assert metrics_dir.is_dir(), "the exporter keeps its multiprocess files in the given directory"
