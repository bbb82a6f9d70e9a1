"""Every bad input gets 422 naming the field and the reason; nothing bad reaches the model."""

from __future__ import annotations

import json

import pytest
from serving_helpers import GUIDE_REQUEST, metric_value

from app.main import MAX_BODY_BYTES
from app.schemas import MAX_BATCH

ROW = GUIDE_REQUEST["features"]

# (case id, raw body, field the error must name, words the reason must contain)
CASES = [
    ("empty-object", "{}", "body", "exactly one of 'features'"),
    ("both", json.dumps({"features": ROW, "instances": [ROW]}), "body", "both were given"),
    ("extra-field", json.dumps({"features": ROW, "model": "x"}), "model", "extra inputs are not permitted"),
    ("misspelled-field", json.dumps({"feature": ROW}), "feature", "extra inputs are not permitted"),
    ("3-features", json.dumps({"features": ROW[:3]}), "features", "at least 4 items"),
    ("5-features", json.dumps({"features": [*ROW, 1.0]}), "features", "at most 4 items"),
    ("string-number", '{"features": [5.1, "3.5", 1.4, 0.2]}', "features[1]", "valid number"),
    ("string-features", '{"features": "5.1, 3.5, 1.4, 0.2"}', "features", "valid list"),
    ("boolean", '{"features": [true, 3.5, 1.4, 0.2]}', "features[0]", "valid number"),
    ("null-features", '{"features": null}', "features", "not null"),
    ("null-value", '{"features": [5.1, 3.5, null, 0.2]}', "features[2]", "valid number"),
    ("NaN", '{"features": [NaN, 3.5, 1.4, 0.2]}', "features[0]", "finite number"),
    ("Infinity", '{"features": [5.1, Infinity, 1.4, 0.2]}', "features[1]", "finite number"),
    ("-Infinity", '{"features": [5.1, 3.5, -Infinity, 0.2]}', "features[2]", "finite number"),
    ("overflow-to-inf", '{"features": [5.1, 3.5, 1.4, 1e999]}', "features[3]", "finite number"),
    ("nested-features", json.dumps({"features": [ROW]}), "features[0]", "valid number"),
    ("object-value", '{"features": [5.1, {"x": 1}, 1.4, 0.2]}', "features[1]", "valid number"),
    ("empty-batch", '{"instances": []}', "instances", "at least 1 item"),
    ("oversized-batch", json.dumps({"instances": [ROW] * (MAX_BATCH + 1)}), "instances", f"at most {MAX_BATCH} items"),
    ("flat-batch", json.dumps({"instances": ROW}), "instances[0]", "valid list"),
    ("short-batch-row", json.dumps({"instances": [ROW, ROW[:3]]}), "instances[1]", "at least 4 items"),
    ("nested-batch-row", json.dumps({"instances": [[ROW]]}), "instances[0][0]", "valid number"),
    ("NaN-in-batch", '{"instances": [[5.1, 3.5, 1.4, 0.2], [NaN, 1, 1, 1]]}', "instances[1][0]", "finite number"),
    ("null-batch", '{"instances": null}', "instances", "not null"),
    ("not-json", "features=5.1,3.5,1.4,0.2", "body", "not valid json"),
    ("truncated-json", '{"features": [5.1, 3.5', "body", "not valid json"),
    ("empty-body", "", "body", "empty body"),
    ("json-array", json.dumps(ROW), "body", "valid dictionary"),
    ("json-string", '"hello"', "body", "valid dictionary"),
]


@pytest.mark.parametrize(("raw", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_422_naming_field_and_reason(client, raw, field, reason):
    resp = client.post("/predict", content=raw.encode(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    errors = resp.json()["detail"]
    assert errors, "a 422 must say what is wrong"
    match = [e for e in errors if e["field"] == field]
    assert match, f"no error names {field!r}: {errors}"
    assert any(reason.lower() in e["msg"].lower() for e in match), f"no reason with {reason!r}: {match}"
    for err in errors:
        assert err["loc"][0] == "body"


def test_body_that_is_not_utf8_gets_422(client):
    resp = client.post("/predict", content=b'{"features": [\xff\xfe]}', headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "body"


def test_wrong_content_type_is_still_parsed_as_json_or_refused_with_422(client):
    ok = client.post("/predict", content=json.dumps(GUIDE_REQUEST), headers={"Content-Type": "text/plain"})
    assert ok.status_code == 200
    bad = client.post("/predict", content=b"5.1 3.5 1.4 0.2", headers={"Content-Type": "text/plain"})
    assert bad.status_code == 422


def test_body_over_the_limit_gets_413(client):
    resp = client.post("/predict", content=b" " * (MAX_BODY_BYTES + 1), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert str(MAX_BODY_BYTES) in resp.json()["detail"]


def test_bad_input_never_reaches_the_model(client):
    for _, raw, _, _ in CASES:
        client.post("/predict", content=raw.encode(), headers={"Content-Type": "application/json"})
    text = client.get("/metrics").text
    assert metric_value(text, "serving_http_requests_total", endpoint="/predict", status="422") == len(CASES)
    assert metric_value(text, "serving_http_requests_total", endpoint="/predict", status="200") is None
    for name in ("setosa", "versicolor", "virginica"):
        assert metric_value(text, "serving_predictions_total", class_name=name) is None


def test_wrong_method_and_path(client):
    assert client.get("/predict").status_code == 405
    assert client.post("/predictions", json=GUIDE_REQUEST).status_code == 404
