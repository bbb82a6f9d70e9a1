"""The peers' protocols beside /predict: Open Inference Protocol (V2) and MLflow's scoring protocol.

Requests are sent as the protocols' own documents show them: the V2 inference request of the
Open Inference Protocol's REST spec (one input tensor, flat row-major data, optional id and
outputs), and MLflow's four JSON forms as its REST docs and its own serializer
(``mlflow.models.convert_input_example_to_serving_input``) write them. MLflow's answers are
compared with MLflow's own scoring function (what ``mlflow models serve`` runs) on the same
scikit-learn model, saved with the trainer's signature.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from serving_helpers import GUIDE_REQUEST, metric_value, wait_for
from sklearn.datasets import load_iris

from app.schemas import MAX_BATCH

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
INFER = "/v2/models/iris-classifier/infer"


def v2_request(rows, datatype="FP32", **extra) -> dict:
    """As in the spec's example: one input, shape [n, 4], data flat in row-major order."""
    flat = [x for row in rows for x in row]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": datatype, "data": flat}], **extra}


# -- Open Inference Protocol (V2) ---------------------------------------------------------------------
def test_v2_health_and_metadata(client, trained):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == []
    meta = client.get("/v2/models/iris-classifier").json()
    assert meta["name"] == "iris-classifier"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    assert client.get("/v2/models/iris-classifier/ready").json() == {"name": "iris-classifier", "ready": True}
    assert client.get("/v2/models/iris-classifier/versions/1/ready").status_code == 200


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_v2_infer_matches_the_model(client, trained, datatype):
    iris = load_iris()
    rows = iris.data[::7]
    resp = client.post(INFER, json=v2_request(rows.tolist(), datatype, id="42"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == "iris-classifier" and body["model_version"] == "1" and body["id"] == "42"
    predict, proba = body["outputs"]
    sk = trained["small"].model
    assert predict == {"name": "predict", "datatype": "INT64", "shape": [len(rows)], "data": sk.predict(rows).tolist()}
    assert proba["name"] == "predict_proba" and proba["datatype"] == "FP64" and proba["shape"] == [len(rows), 3]
    np.testing.assert_allclose(np.array(proba["data"]).reshape(len(rows), 3), sk.predict_proba(rows), atol=1e-9)


def test_v2_nested_data_requested_outputs_and_versioned_path(client):
    req = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": ROWS[:2]}],
        "outputs": [{"name": "predict_proba"}],
    }
    resp = client.post("/v2/models/iris-classifier/versions/1/infer", json=req)
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba"]
    assert resp.json()["id"]  # generated when the request has none


# (case id, body, words the {"error": ...} message must contain)
V2_BAD = [
    ("no-inputs", {"inputs": []}, "inputs: List should have at least 1 item"),
    (
        "missing-data",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]},
        "inputs[0].data: Field required",
    ),
    ("bytes", v2_request([ROWS[0]], "BYTES"), "inputs[0].datatype: must be one of FP32, FP64, got 'BYTES'"),
    ("shape-3", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "shape"),
    ("shape-string", {"inputs": [{"name": "x", "shape": ["1", 4], "datatype": "FP32", "data": ROWS[0]}]}, "shape[0]"),
    ("data-short", {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": ROWS[0]}]}, "needs 8"),
    ("string-value", v2_request([[5.1, "3.5", 1.4, 0.2]]), "inputs[0].data[0][1]: Input should be a valid number"),
    ("bool-value", v2_request([[True, 3.5, 1.4, 0.2]]), "inputs[0].data[0][0]: Input should be a valid number"),
    ("too-many-rows", v2_request([ROWS[0]] * (MAX_BATCH + 1)), f"1 <= n <= {MAX_BATCH}"),
    ("two-inputs", {"inputs": v2_request([ROWS[0]])["inputs"] * 2}, "one input tensor"),
    ("unknown-output", v2_request([ROWS[0]], outputs=[{"name": "logits"}]), "outputs[0].name: unknown output"),
    ("fp32-overflow", v2_request([[1e39, 1, 1, 1]]), "overflows float32"),
]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in V2_BAD], ids=[c[0] for c in V2_BAD])
def test_v2_bad_input_gets_400_with_field_and_reason(client, body, words):
    resp = client.post(INFER, json=body)
    assert resp.status_code == 400, resp.text
    assert list(resp.json()) == ["error"]
    assert words in resp.json()["error"]


def test_v2_nan_is_refused(client):
    raw = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [NaN, 1, 1, 1]}]}'
    resp = client.post(INFER, content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json() == {"error": "inputs[0].data[0][0]: Input should be a finite number"}


def test_v2_unknown_model_or_version_is_404(client):
    assert client.post("/v2/models/other/infer", json=v2_request(ROWS)).status_code == 404
    resp = client.post("/v2/models/iris-classifier/versions/7/infer", json=v2_request(ROWS))
    assert resp.status_code == 404 and "version '7' is not served" in resp.json()["error"]
    assert client.get("/v2/models/other").json()["error"].startswith("model 'other' is not served")


def test_v2_before_a_model_is_published(make_client, publish, trained):
    client = make_client()
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
    resp = client.post(INFER, json=v2_request(ROWS))
    assert resp.status_code == 503 and "not loaded" in resp.json()["error"]
    publish(trained["small"], 1)
    wait_for(lambda: client.get("/v2/models/iris-classifier/ready").status_code == 200, what="the model")


# -- MLflow scoring protocol ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_scoring(tmp_path_factory):
    """MLflow's own scoring function over the small model, saved with the trainer's signature."""
    from trainer.model import train_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from mlflow.pyfunc.scoring_server import invocations

    result = train_model(n_estimators=10, max_depth=3)  # the same seed and params as trained["small"]
    path = tmp_path_factory.mktemp("mlflow") / "model"
    signature = infer_signature(result.X_train, result.model.predict(result.X_train))
    mlflow.sklearn.save_model(result.model, str(path), signature=signature, serialization_format="cloudpickle")
    model = mlflow.pyfunc.load_model(str(path))
    schema = model.metadata.get_input_schema()

    def score(body: dict) -> tuple[int, dict]:
        answer = invocations(json.dumps(body), "application/json", model, schema)
        return answer.status, json.loads(answer.response)

    return score, result.feature_names


def mlflow_forms(names: list[str]) -> dict[str, dict]:
    """The four JSON forms of MLflow's REST docs, with the trainer's column names and Iris rows."""
    import pandas as pd
    from mlflow.models import convert_input_example_to_serving_input

    return {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": ROWS}},
        "dataframe_records": {"dataframe_records": [dict(zip(names, row, strict=True)) for row in ROWS]},
        "instances": {"instances": ROWS},
        "inputs": {"inputs": ROWS},
        # what MLflow's own serializer writes for a DataFrame and for a numpy array
        "serializer-dataframe": json.loads(convert_input_example_to_serving_input(pd.DataFrame(ROWS, columns=names))),
        "serializer-numpy": json.loads(convert_input_example_to_serving_input(np.array(ROWS))),
    }


def test_invocations_answers_every_form_as_mlflow_does(client, mlflow_scoring, trained):
    score, names = mlflow_scoring
    forms = mlflow_forms(names)
    assert set(forms["serializer-dataframe"]) == {"dataframe_split"} and set(forms["serializer-numpy"]) == {"inputs"}
    expected = {"predictions": trained["small"].model.predict(np.array(ROWS)).tolist()}
    for name, body in forms.items():
        status, mlflow_answer = score(body)
        assert (status, mlflow_answer) == (200, expected), name
        resp = client.post("/invocations", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert resp.status_code == 200, (name, resp.text)
        assert resp.json() == mlflow_answer, name


def test_invocations_the_docs_curl(client):
    """curl http://127.0.0.1:5000/invocations -H "Content-Type:application/json" --data '{"inputs": [[...]]}'"""
    resp = client.post(
        "/invocations", content=b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}', headers={"Content-Type": "application/json"}
    )
    assert resp.json() == {"predictions": [0]}


def test_invocations_also_takes_columns_and_records_as_instances(client):
    names = ["a", "b", "c", "d"]
    columns = {"inputs": {n: [row[i] for row in ROWS] for i, n in enumerate(names)}}
    records = {"instances": [dict(zip(names, row, strict=True)) for row in ROWS]}
    ids = client.post("/invocations", json={"inputs": ROWS}).json()
    assert client.post("/invocations", json=columns).json() == ids
    assert client.post("/invocations", json=records).json() == ids


# (case id, body, words the message must contain)
MLFLOW_BAD = [
    ("no-format", {"features": GUIDE_REQUEST["features"]}, "exactly one of the keys"),
    ("two-formats", {"inputs": ROWS, "instances": ROWS}, "exactly one of the keys"),
    ("list-body", ROWS, "must be a JSON object"),
    ("split-without-data", {"dataframe_split": {"columns": list("abcd")}}, "dataframe_split: must be an object"),
    ("split-3-columns", {"dataframe_split": {"columns": list("abc"), "data": ROWS}}, "dataframe_split.columns"),
    ("split-short-row", {"dataframe_split": {"data": [ROWS[0][:3]]}}, "dataframe_split.data[0]: List should have"),
    ("records-missing-column", {"dataframe_records": [dict(a=1, b=2, c=3, d=4), dict(a=1, b=2, c=3)]}, "missing"),
    ("records-string", {"dataframe_records": [dict(a=1, b="2", c=3, d=4)]}, "dataframe_records[0].b: Input should"),
    ("inputs-null", {"inputs": [[5.1, None, 1.4, 0.2]]}, "inputs[0][1]: Input should be a valid number"),
    ("inputs-flat", {"inputs": ROWS[0]}, "inputs[0]: Input should be a valid list"),
    ("inputs-too-many", {"inputs": [ROWS[0]] * (MAX_BATCH + 1)}, f"at most {MAX_BATCH} items"),
    ("inputs-empty", {"inputs": []}, "at least 1 item"),
]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in MLFLOW_BAD], ids=[c[0] for c in MLFLOW_BAD])
def test_invocations_bad_input_gets_400_with_field_and_reason(client, body, words):
    resp = client.post("/invocations", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error_code"] == "BAD_REQUEST"
    assert words in resp.json()["message"], resp.json()


def test_invocations_refuses_other_content_types_like_mlflow(client):
    for content_type in ("text/plain", "application/json; format=pandas-split", "application/json; charset=latin-1"):
        resp = client.post("/invocations", content=json.dumps({"inputs": ROWS}), headers={"Content-Type": content_type})
        assert resp.status_code == 415, content_type
    ok = client.post(
        "/invocations",
        content=json.dumps({"inputs": ROWS}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


def test_ping_and_version(client, make_client):
    assert client.get("/ping").status_code == 200
    assert client.get("/version").text == "1.0.0"
    assert make_client(model_name="not-published").get("/ping").status_code == 503


def test_protocols_share_the_metrics(client):
    assert client.post("/invocations", json={"inputs": ROWS}).status_code == 200
    assert client.post(INFER, json=v2_request(ROWS)).status_code == 200
    assert client.post("/invocations", json={"inputs": []}).status_code == 400
    text = client.get("/metrics").text
    assert metric_value(text, "serving_http_requests_total", endpoint="/invocations", status="200") == 1
    assert metric_value(text, "serving_http_requests_total", endpoint="/invocations", status="400") == 1
    assert (
        metric_value(text, "serving_http_requests_total", endpoint="/v2/models/{model_name}/infer", status="200") == 1
    )
    # 3 rows each: setosa, virginica, versicolor
    assert metric_value(text, "serving_predictions_total", class_name="setosa") == 2
