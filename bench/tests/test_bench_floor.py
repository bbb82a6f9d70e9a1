"""The HTTP floor parses what the serving app parses: same bodies accepted, same refused."""

from __future__ import annotations

import json
import sys

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bench import floor
from bench.inference import SERVING_DIR

if str(SERVING_DIR) not in sys.path:
    sys.path.insert(0, str(SERVING_DIR))
from app.schemas import PredictRequest  # noqa: E402

ROW = [5.1, 3.5, 1.4, 0.2]
BODIES = [
    {"features": ROW},
    {"features": [5, 3, 1, 0]},
    {"instances": [ROW] * 100},
    {"instances": [ROW] * 1000},
    {"instances": [ROW] * 1001},
    {"instances": []},
    {"features": ROW[:3]},
    {"features": [*ROW, 1.0]},
    {"features": ["5.1", 3.5, 1.4, 0.2]},
    {"features": [True, 3.5, 1.4, 0.2]},
    {"features": None},
    {"features": ROW, "instances": [ROW]},
    {},
    {"features": ROW, "extra": 1},
    {"instances": [ROW, ROW[:2]]},
]


def accepts(model, raw: str) -> bool:
    try:
        model.model_validate_json(raw)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("body", BODIES, ids=lambda b: json.dumps(b)[:40])
def test_same_bodies_accepted_and_refused(body):
    raw = json.dumps(body)
    assert accepts(floor.PredictRequest, raw) == accepts(PredictRequest, raw)


def test_non_finite_numbers_are_refused_by_both():
    raw = '{"features": [NaN, 3.5, 1.4, 0.2]}'
    assert not accepts(floor.PredictRequest, raw)
    assert not accepts(PredictRequest, json.dumps({"features": [float("nan"), 3.5, 1.4, 0.2]}))


def test_answers_a_constant_of_the_api_shape():
    with TestClient(floor.app) as client:
        one = client.post("/predict", json={"features": ROW})
        assert one.status_code == 200 and one.json()["class_name"] == "setosa"
        batch = client.post("/predict", json={"instances": [ROW] * 100})
        assert batch.status_code == 200 and len(batch.json()["predictions"]) == 100
        assert client.post("/predict", json={"features": ROW[:2]}).status_code == 422
        assert client.post("/predict", content=b"not json").status_code == 422
