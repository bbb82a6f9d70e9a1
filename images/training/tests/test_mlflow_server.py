"""The MLflow server command of docs/interfaces.md accepts the Service's DNS name as Host."""

from __future__ import annotations

import requests
from trainer_testlib import documented_server_command

SERVICE_HOST = "mlflow-service.mlops-training.svc.cluster.local:5000"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def test_documented_command_has_the_contract_settings():
    argv = documented_server_command()
    args = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert args["--host"] == "0.0.0.0" and args["--port"] == "5000"
    assert args["--backend-store-uri"] == "sqlite:////data/mlflow/mlflow.db"
    assert args["--artifacts-destination"] == "/data/mlflow/artifacts"
    assert "--serve-artifacts" in argv
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert SERVICE_HOST in allowed and "localhost:*" in allowed


def test_service_dns_name_is_accepted_and_a_foreign_host_refused(mlflow_server):
    # The session server runs exactly that command (on loopback, see conftest.py).
    assert "--allowed-hosts" in mlflow_server.argv
    for host in (SERVICE_HOST, "mlflow-service:5000", "mlflow-service.mlops-training:5000", "localhost:5000"):
        response = requests.get(mlflow_server.uri + SEARCH, headers={"Host": host}, timeout=10)
        assert response.status_code == 200, (host, response.status_code, response.text[:200])
        assert "experiments" in response.json()

    # The check is real: a DNS-rebinding style Host is refused, health stays open for probes.
    response = requests.get(mlflow_server.uri + SEARCH, headers={"Host": "attacker.example:5000"}, timeout=10)
    assert response.status_code == 403
    assert requests.get(mlflow_server.uri + "/health", headers={"Host": "10.42.0.7:5000"}, timeout=10).ok


def test_artifacts_are_served_through_the_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment("artifact-proxy-check")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello", "note.txt")
    client.set_terminated(run.info.run_id)
    # The file landed under --artifacts-destination (the shared volume), uploaded over HTTP.
    stored = list((mlflow_server.data_dir / "mlflow" / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    downloaded = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
    assert open(downloaded).read() == "hello"
