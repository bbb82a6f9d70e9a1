"""The prediction API with real models trained and exported by the trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from serving_helpers import GUIDE_REQUEST, metric_value, wait_for
from sklearn.datasets import load_iris

from app.schemas import MAX_BATCH


def test_guides_request_answers_setosa(client, trained):
    resp = client.post("/predict", json=GUIDE_REQUEST)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["class_id"] == 0
    assert body["class_name"] == "setosa"
    assert body["model_version"] == "1"
    assert list(body["probabilities"]) == ["setosa", "versicolor", "virginica"]
    assert math.isclose(sum(body["probabilities"].values()), 1.0, abs_tol=1e-9)
    expected = trained["small"].model.predict_proba(np.array([GUIDE_REQUEST["features"]]))[0]
    assert list(body["probabilities"].values()) == pytest.approx(expected.tolist())


def test_guides_curl_body_as_raw_bytes(client):
    """Exactly the guide's curl: raw body, Content-Type application/json."""
    resp = client.post(
        "/predict", content=b'{"features": [5.1, 3.5, 1.4, 0.2]}', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 200
    assert resp.json()["class_name"] == "setosa"


def test_batch_matches_the_model(client, trained):
    iris = load_iris()
    rows = iris.data[::10]  # 15 rows, all three species
    resp = client.post("/predict", json={"instances": rows.tolist()})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == "1"
    proba = trained["small"].model.predict_proba(rows)
    assert [p["class_id"] for p in body["predictions"]] == proba.argmax(axis=1).tolist()
    names = ["setosa", "versicolor", "virginica"]
    assert [p["class_name"] for p in body["predictions"]] == [names[i] for i in proba.argmax(axis=1)]
    for got, want in zip(body["predictions"], proba, strict=True):
        assert list(got["probabilities"].values()) == pytest.approx(want.tolist())
    assert {p["class_name"] for p in body["predictions"]} == set(names)


def test_batch_of_exactly_the_maximum_is_accepted(client):
    resp = client.post("/predict", json={"instances": [GUIDE_REQUEST["features"]] * MAX_BATCH})
    assert resp.status_code == 200
    assert len(resp.json()["predictions"]) == MAX_BATCH


def test_integers_are_numbers(client):
    resp = client.post("/predict", json={"features": [5, 3, 1, 0]})
    assert resp.status_code == 200
    assert resp.json()["class_name"] == "setosa"


def test_health_ready_model(client, trained):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "model_version": "1"}
    info = client.get("/model").json()
    assert info["version"] == "1"
    assert info["run_id"] == "run-1"
    assert info["name"] == "iris-classifier"
    assert info["metrics"] == pytest.approx(trained["small"].metrics)
    assert info["params"]["n_estimators"] == 10
    assert info["class_names"] == ["setosa", "versicolor", "virginica"]
    assert info["loaded_at"].endswith("Z")
    assert info["dir"].startswith("v1-")
    assert info["inference"] == "table"
    assert info["format"] == "forest-npz-v1"


def test_no_model_yet_gives_503_and_not_ready_then_first_model_is_picked_up(make_client, publish, trained):
    client = make_client()
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    for resp in (client.post("/predict", json=GUIDE_REQUEST), client.get("/model")):
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "1"
        assert "no model" in resp.json()["detail"]
    # Validation still comes first: a bad body is the client's fault whatever the model state.
    assert client.post("/predict", json={"features": [1, 2, 3]}).status_code == 422

    publish(trained["small"], 1)
    wait_for(lambda: client.get("/ready").status_code == 200, what="the first published model")
    assert client.post("/predict", json=GUIDE_REQUEST).json()["model_version"] == "1"


def test_retry_after_follows_the_reload_interval(make_client):
    client = make_client(reload_interval_seconds=7.5)
    assert client.post("/predict", json=GUIDE_REQUEST).headers["Retry-After"] == "8"


def test_metrics(client):
    for _ in range(3):
        assert client.post("/predict", json=GUIDE_REQUEST).status_code == 200
    assert client.post("/predict", json={"instances": [GUIDE_REQUEST["features"]] * 4}).status_code == 200
    assert client.post("/predict", json={"features": "x"}).status_code == 422
    client.get("/no-such-path")
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    ok = {"endpoint": "/predict", "method": "POST", "status": "200"}
    assert metric_value(text, "serving_http_requests_total", **ok) == 4
    assert metric_value(text, "serving_http_requests_total", endpoint="/predict", method="POST", status="422") == 1
    assert metric_value(text, "serving_http_requests_total", endpoint="unmatched", status="404") == 1
    assert metric_value(text, "serving_http_request_duration_seconds_count", endpoint="/predict", status="200") == 4
    assert (
        metric_value(text, "serving_http_request_duration_seconds_bucket", endpoint="/predict", status="200", le="+Inf")
        == 4
    )
    assert metric_value(text, "serving_predictions_total", class_name="setosa") == 7
    assert metric_value(text, "serving_predictions_total", class_name="virginica") is None
    assert metric_value(text, "serving_model_info", version="1", run_id="run-1") == 1
    assert metric_value(text, "serving_model_loaded") == 1
    assert metric_value(text, "serving_model_reloads_total", result="loaded") == 1


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"features", "instances"}
    assert body["additionalProperties"] is False
