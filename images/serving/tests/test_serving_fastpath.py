"""The fast paths answer exactly what the straightforward code answers, refusals included.

Each fast path is compared with a reference: the code it replaced (json.loads, validation of the
parsed Python objects with the same pydantic model, json.dumps of plain dicts, FastAPI's router).
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from serving_helpers import GUIDE_REQUEST, HEADERS, metric_value
from starlette.routing import Match

from app import main as main_module
from app.hotpath import HotRoutes
from app.inputs import InputError, bad, decode_json, validation_problems
from app.main import GC_GEN0_THRESHOLD, HOT_PATHS
from app.protocols import V2_OUTPUTS, _request_id, mlflow_answer, v2_answer, v2_rows, v2_rows_json
from app.render import CACHED_ANSWERS, CACHED_ROWS, Renderer
from app.schemas import MAX_BATCH, PredictRequest

ROW = GUIDE_REQUEST["features"]


# -- references: the code before the fast paths --------------------------------------------------------
def reference_decode(body: bytes):
    try:
        return json.loads(body)
    except RecursionError:
        raise bad((), "not valid JSON: nested too deeply", "json_invalid") from None
    except ValueError as exc:
        reason = "empty body" if not body.strip() else f"not valid JSON: {exc}"
        raise bad((), reason, "json_invalid") from None


def reference_predict_errors(body: bytes) -> list[dict] | None:
    """/predict's 422 details as they were (None: the body is accepted)."""
    try:
        payload = reference_decode(body)
    except InputError as exc:
        return exc.errors
    try:
        PredictRequest.model_validate(payload)
    except ValidationError as exc:
        return validation_problems(exc)
    except RecursionError:
        return [{"field": "body", "loc": ["body"], "msg": "nested too deeply", "type": "value_error"}]
    return None


def outcome(fn, body: bytes):
    try:
        return "ok", fn(body)
    except InputError as exc:
        return "refused", exc.errors


# Bodies: malformed, hostile, wrong types, extra fields, NaN/Infinity, sizes, and valid oddities.
BODIES = {
    "guide": json.dumps(GUIDE_REQUEST),
    "ints": '{"features": [5, 3, 1, 0]}',
    "negative-zero": '{"features": [-0.0, 3.5, 1.4, 0.2]}',
    "exponents": '{"features": [5.1e0, 35e-1, 0.14E1, 2e-1]}',
    "big-int": '{"features": [18446744073709551616, 1, 1, 1]}',
    "int-401-digits": '{"features": [' + "9" * 401 + ", 1, 1, 1]}",
    "int-5000-digits": '{"features": [' + "9" * 5000 + ", 1, 1, 1]}",
    "duplicate-key": '{"features": [1, 1, 1, 1], "features": [5.1, 3.5, 1.4, 0.2]}',
    "utf8-bom": "\ufeff" + json.dumps(GUIDE_REQUEST),
    "utf16": json.dumps(GUIDE_REQUEST).encode("utf-16").decode("latin-1"),
    "batch": json.dumps({"instances": [ROW, [6.7, 3.0, 5.2, 2.3]]}),
    "max-batch": json.dumps({"instances": [ROW] * MAX_BATCH}),
    "too-many-rows": json.dumps({"instances": [ROW] * (MAX_BATCH + 1)}),
    "empty-batch": '{"instances": []}',
    "NaN": '{"features": [NaN, 3.5, 1.4, 0.2]}',
    "Infinity": '{"features": [5.1, Infinity, 1.4, 0.2]}',
    "-Infinity": '{"instances": [[5.1, 3.5, -Infinity, 0.2]]}',
    "overflow": '{"features": [1e999, 3.5, 1.4, 0.2]}',
    "nan-lowercase": '{"features": [nan, 3.5, 1.4, 0.2]}',
    "string": '{"features": [5.1, "3.5", 1.4, 0.2]}',
    "bool": '{"features": [true, 3.5, 1.4, 0.2]}',
    "null": '{"features": [5.1, null, 1.4, 0.2]}',
    "null-features": '{"features": null}',
    "object-value": '{"features": [{"a": 1}, 3.5, 1.4, 0.2]}',
    "nested": json.dumps({"features": [ROW]}),
    "flat-batch": json.dumps({"instances": ROW}),
    "extra-field": json.dumps({"features": ROW, "model": "x"}),
    "both": json.dumps({"features": ROW, "instances": [ROW]}),
    "neither": "{}",
    "three": json.dumps({"features": ROW[:3]}),
    "array": json.dumps(ROW),
    "deep-150": '{"features": ' + "[" * 150 + "]" * 150 + "}",
    "deep-300": '{"features": ' + "[" * 300 + "]" * 300 + "}",
    "deep-5000": '{"features": ' + "[" * 5000 + "]" * 5000 + "}",
    "deep-objects": '{"a":' * 3000 + "1" + "}" * 3000,
    "lone-surrogate": '{"features": ["\\ud800", 1, 1, 1]}',
    "surrogate-key": '{"\\ud800": [5.1, 3.5, 1.4, 0.2]}',
    "control-char": '{"features": [5.1, 3.5, 1.4, 0.2], "x": "\x01"}',
    "trailing-comma": '{"features": [5.1, 3.5, 1.4, 0.2,]}',
    "trailing-data": json.dumps(GUIDE_REQUEST) + " x",
    "leading-zero": '{"features": [05.1, 3.5, 1.4, 0.2]}',
    "plus-sign": '{"features": [+5.1, 3.5, 1.4, 0.2]}',
    "dot-number": '{"features": [.5, 3.5, 1.4, 0.2]}',
    "truncated": '{"features": [5.1, 3.5',
    "empty": "",
    "whitespace": " \n\t ",
    "nul": "\x00",
}


def raw(name: str) -> bytes:
    text = BODIES[name]
    return text.encode("latin-1") if name == "utf16" else text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("name", list(BODIES))
def test_decode_json_gives_what_json_loads_gives(name):
    body = raw(name)
    got, want = outcome(decode_json, body), outcome(reference_decode, body)
    assert got[0] == want[0]
    if got[0] == "ok":
        assert repr(got[1]) == repr(want[1])  # repr: -0.0 and 0.0, ints and floats, nan alike
    else:
        assert got[1] == want[1]


def test_decode_json_parses_numbers_as_json_loads_does():
    rng = random.Random(11)
    texts = []
    for _ in range(3000):
        x = rng.uniform(-10, 10) * 10 ** rng.randint(-30, 30)
        texts += [repr(x), f"{x:.17g}", f"{x:.3e}", f"{rng.randint(0, 9)}.{rng.randint(0, 10**25)}"]
    texts += ["5e-324", "2.2250738585072011e-308", "1.7976931348623157e308", "0.1", "-0", "1E+2"]
    body = ("[" + ",".join(texts) + "]").encode()
    assert repr(decode_json(body)) == repr(json.loads(body))


@pytest.mark.parametrize("name", list(BODIES))
def test_predict_answers_as_before(client, name):
    body = raw(name)
    want = reference_predict_errors(body)
    resp = client.post("/predict", content=body, headers=HEADERS)
    if want is None:
        assert resp.status_code == 200, resp.text
        rows = PredictRequest.model_validate(json.loads(body))
        same = {"features": rows.features} if rows.features is not None else {"instances": rows.instances}
        assert resp.content == client.post("/predict", json=same).content
    else:
        assert resp.status_code == 422, resp.text
        assert resp.json() == {"detail": want}


def test_batches_of_any_size_are_answered_on_the_event_loop(client, monkeypatch):
    def no_thread(*args, **kwargs):
        raise AssertionError("a table model's batch went to the thread pool")

    monkeypatch.setattr(main_module, "run_in_threadpool", no_thread)
    resp = client.post("/predict", json={"instances": [ROW] * MAX_BATCH})
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == MAX_BATCH


# -- HotRoutes: the route FastAPI's router would pick -----------------------------------------------------
PATHS = [
    "/predict",
    "/predict\n",  # "%0A" decoded: the routes' "$" matches before a final newline
    "/invocations\n",
    "/v2/models/iris-classifier/infer\n",
    "/predict\n\n",
    "/predict/",
    "/predictx",
    "/invocations",
    "/v2/models/iris-classifier/infer",
    "/v2/models/other/infer",
    "/v2/models/iris-classifier/versions/1/infer",
    "/v2/models/iris-classifier/versions/1/infer/",
    "/v2/models//infer",
    "/v2/models/a/b/infer",
    "/v2/models/versions/infer",
    "/v2/models/iris-classifier",
    "/v2/models/iris-classifier/ready",
    "/v2/models/iris%20classifier/infer",
    "/docs/assets/predict",
    "/health",
    "/",
]


def fastapi_route(app, path: str, method: str = "POST"):
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


def hot_route(app, path: str):
    layer = app.middleware_stack or app.build_middleware_stack()
    while not isinstance(layer, HotRoutes):
        layer = layer.app
    found = layer.find(path)
    return found[0] if found else None


@pytest.mark.parametrize("path", PATHS)
def test_hot_routes_pick_what_fastapi_picks(client, path):
    app = client.app
    hot = hot_route(app, path)
    routed = fastapi_route(app, path)
    if hot is not None:
        assert hot is routed
    else:
        assert routed is None or getattr(routed, "path_format", None) not in HOT_PATHS


def test_hot_routes_keep_fastapis_first_match_when_a_route_before_a_fixed_path_matches_it():
    app = FastAPI()

    @app.post("/items/{name}")
    async def by_name(request: Request, name: str) -> Response:
        return Response(name)

    @app.post("/items/special")  # shadowed: FastAPI routes POST /items/special to by_name
    async def special(request: Request) -> Response:
        return Response("special")

    @app.post("/other")
    async def other(request: Request) -> Response:
        return Response("other")

    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    hot = HotRoutes(app.router, routes)
    paths = ("/items/special", "/items/special\n", "/items/x", "/other", "/other\n", "/other/", "/items/", "/nowhere")
    for path in paths:
        found = hot.find(path)
        routed = fastapi_route(app, path)
        assert (found[0] if found else None) is routed, path
    assert hot.find("/items/special")[1] == {"name": "special"}
    assert set(hot.exact) == {"/other", "/other\n"}  # the shadowed fixed path is matched in order, not looked up


def test_hot_routes_are_the_prediction_posts(client):
    app = client.app
    for template in HOT_PATHS:
        path = template.replace("{model_name}", "iris-classifier").replace("{model_version}", "1")
        assert hot_route(app, path) is fastapi_route(app, path)
        assert hot_route(app, path).path_format == template


def test_other_methods_on_hot_paths_still_go_through_fastapi(client):
    assert client.get("/predict").status_code == 405
    assert client.put("/invocations", json={}).status_code == 405
    assert client.get("/v2/models/iris-classifier/infer").status_code == 405


def test_hot_routes_are_counted_by_route_template(client):
    client.post("/predict", json=GUIDE_REQUEST)
    client.post("/invocations", json={"inputs": [ROW]})
    v2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    client.post("/v2/models/iris-classifier/infer", json=v2)
    client.post("/v2/models/iris-classifier/versions/1/infer", json=v2)
    client.post("/v2/models/iris-classifier/versions/9/infer", json=v2)
    text = client.get("/metrics").text
    assert metric_value(text, "serving_http_requests_total", endpoint="/predict", method="POST", status="200") == 1
    assert metric_value(text, "serving_http_requests_total", endpoint="/invocations", status="200") == 1
    infer = "/v2/models/{model_name}/infer"
    versioned = "/v2/models/{model_name}/versions/{model_version}/infer"
    assert metric_value(text, "serving_http_requests_total", endpoint=infer, status="200") == 1
    assert metric_value(text, "serving_http_requests_total", endpoint=versioned, status="200") == 1
    assert metric_value(text, "serving_http_requests_total", endpoint=versioned, status="404") == 1


# -- rendering ---------------------------------------------------------------------------------------
def plain_rows(names, proba):
    return [
        {"class_id": int(i), "class_name": names[i], "probabilities": dict(zip(names, map(float, p), strict=True))}
        for i, p in zip(proba.argmax(axis=1), proba, strict=True)
    ]


def test_rows_from_the_cache_are_the_rows_rendered_afresh():
    names = ("setosa", "versicolor", "virginica")
    rng = np.random.default_rng(3)
    proba = rng.dirichlet(np.ones(3), size=200)
    proba[:50] = proba[50:100]  # repeated rows: served from the cache
    proba[7] = [0.0, 1.0, 0.0]
    proba[8] = [-0.0, 1.0, 0.0]  # equal to row 7 as floats, not as JSON
    r = Renderer(names, "3")
    first, _ = r.batch(proba)
    again, _ = r.batch(proba)
    assert first == again
    assert json.loads(first) == {"predictions": plain_rows(names, proba), "model_version": "3"}
    rows = json.loads(first)["predictions"]
    assert json.dumps(rows[8]["probabilities"]).count("-0.0") == 1
    assert json.dumps(rows[7]["probabilities"]).count("-0.0") == 0
    assert json.dumps(rows[7]["probabilities"]) == json.dumps(plain_rows(names, proba[7:8])[0]["probabilities"])


def test_the_render_cache_is_bounded():
    r = Renderer(("a", "b"), "1")
    proba = np.random.default_rng(5).random((CACHED_ROWS + 500, 2))
    body, _ = r.batch(proba)
    assert len(r._rows) == CACHED_ROWS
    assert json.loads(body)["predictions"] == plain_rows(("a", "b"), proba)
    assert r.values(proba) == [",".join(map(repr, p)) for p in proba.tolist()]
    assert len(r._values) == CACHED_ROWS


def test_the_one_row_answer_caches_are_bounded_and_still_answer_right():
    r = Renderer(("a", "b"), "1")
    rows = np.random.default_rng(6).random((CACHED_ANSWERS + 300, 2))
    for proba in rows:
        one = proba.reshape(1, 2)
        body, ids = r.single(one)
        assert json.loads(body) == {**plain_rows(("a", "b"), one)[0], "model_version": "1"}
        assert r.class_ids(one).tolist() == ids.tolist() == [int(proba.argmax())]
        content, v2_ids = v2_answer(r, "m", "id", V2_OUTPUTS, one)
        assert json.loads(content)["outputs"][1]["data"] == proba.tolist()
        assert v2_ids.tolist() == ids.tolist()
        content, mlflow_ids = mlflow_answer(r, one)
        assert json.loads(content) == {"predictions": ids.tolist()} and mlflow_ids.tolist() == ids.tolist()
    assert len(r._singles) == len(r._ids) == len(r.memo) == CACHED_ANSWERS


def expected_v2_answer(model_name, request_id, outputs, proba, ids) -> bytes:
    """The V2 answer as json.dumps writes it (model version "7"): what v2_answer must give byte for byte."""
    answer = {
        "model_name": model_name,
        "model_version": "7",
        "id": request_id,
        "parameters": {},
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [len(ids)], "data": ids.tolist()}
            if name == "predict"
            else {"name": name, "datatype": "FP64", "shape": list(proba.shape), "data": proba.ravel().tolist()}
            for name in outputs
        ],
    }
    return json.dumps(answer, separators=(",", ":")).encode()


@pytest.mark.parametrize("outputs", [V2_OUTPUTS, ("predict",), ("predict_proba",), ("predict_proba", "predict")])
@pytest.mark.parametrize(
    "request_id", ["42", 'ïd "quoted" \\ \n', _request_id(), "", "a:b.c_d-e", "</script>", "tab\there", "\u2028"]
)
@pytest.mark.parametrize("model_name", ["iris-classifier", 'mödel "x"/1'])
def test_v2_answer_is_json_dumps_of_the_answer(outputs, request_id, model_name):
    rng = np.random.default_rng(9)
    proba = rng.dirichlet(np.ones(3), size=17)
    proba[0] = [1.0, 0.0, 0.0]
    proba[1] = [1e-300, 5e-324, 1.0]
    proba[2] = [-0.0, 0.0, 1.0]
    proba[3] = [0.0, 0.0, 1.0]
    proba[4:8] = proba[8:12]  # repeated rows: from the cache
    ids = proba.argmax(axis=1)
    want = expected_v2_answer(model_name, request_id, outputs, proba, ids)
    renderer = Renderer(("setosa", "versicolor", "virginica"), "7")
    for _ in range(2):  # rendered, then from the cache
        content, got_ids = v2_answer(renderer, model_name, request_id, outputs, proba)
        assert content == want
        assert got_ids.tolist() == ids.tolist()


def test_one_row_v2_answers_from_the_memo_are_json_dumps_of_the_answer():
    """A one-row answer's frame (and class id) is reused only for the same row, model name and outputs."""
    renderer = Renderer(("setosa", "versicolor", "virginica"), "7")
    rows = [[1.0, 0.0, 0.0], [-0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.25, 0.5, 0.25]]
    for _ in range(2):
        for row in rows:
            proba = np.array([row])
            ids = proba.argmax(axis=1)
            for model_name in ("iris-classifier", 'mödel "x"/1'):
                for outputs in (V2_OUTPUTS, ("predict",), ("predict_proba",), ("predict_proba", "predict")):
                    for request_id in ("42", _request_id(), 'ïd "q"'):
                        want = expected_v2_answer(model_name, request_id, outputs, proba, ids)
                        content, got_ids = v2_answer(renderer, model_name, request_id, outputs, proba)
                        assert content == want
                        assert got_ids.tolist() == ids.tolist()


def test_one_row_mlflow_answers_from_the_memo_are_the_answers_built_afresh():
    renderer = Renderer(("setosa", "versicolor", "virginica"), "7")
    rows = [[1.0, 0.0, 0.0], [-0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.25, 0.5, 0.25], [0.2, 0.3, 0.5]]
    for _ in range(2):  # built, then from the memo
        for row in rows:
            content, ids = mlflow_answer(renderer, np.array([row]))
            assert json.loads(content) == {"predictions": [int(np.argmax(row))]}
            assert ids.tolist() == [int(np.argmax(row))]
    batch = np.array(rows)
    content, ids = mlflow_answer(renderer, batch)
    assert json.loads(content) == {"predictions": batch.argmax(axis=1).tolist()}
    assert len(renderer.memo) == len(rows)  # only one-row answers are kept
    with pytest.raises(ValueError):
        mlflow_answer(renderer, np.array([[np.nan, 0.0, 1.0]]))


def v2_body(data, shape=(1, 4), datatype="FP64", **extra) -> str:
    return json.dumps(
        {"inputs": [{"name": "input-0", "shape": list(shape), "datatype": datatype, "data": data}], **extra}
    )


# V2 infer bodies: the flat common form and everything it must leave to the general path.
V2_BODIES = {
    "guide": v2_body(ROW),
    "ints": v2_body([5, 3, 1, 0]),
    "negative-zero": v2_body([-0.0, 3.5, 1.4, 0.2]),
    "fp32": v2_body(ROW, datatype="FP32"),
    "fp32-overflow": v2_body([1e39, 3.5, 1.4, 0.2], datatype="FP32"),
    "fp32-subnormal": v2_body([1e-46, 3.5, 1.4, 0.2], datatype="FP32"),
    # around FP32_OVERFLOW: the largest value that rounds to float32's largest, the smallest that overflows
    "fp32-largest": v2_body([3.4028235677973362e38, -3.4028235677973362e38, 1.4, 0.2], datatype="FP32"),
    "fp32-overflow-edge": v2_body([3.4028235677973366e38, 3.5, 1.4, 0.2], datatype="FP32"),
    "fp32-overflow-edge-negative": v2_body([-3.4028235677973366e38, 3.5, 1.4, 0.2], datatype="FP32"),
    "fp32-batch-checked-by-numpy": v2_body(ROW * 20 + [1e39, 3.5, 1.4, 0.2], shape=(21, 4), datatype="FP32"),
    "batch": v2_body(ROW * 3, shape=(3, 4)),
    "max-batch": v2_body(ROW * MAX_BATCH, shape=(MAX_BATCH, 4)),
    "too-many-rows": v2_body(ROW * (MAX_BATCH + 1), shape=(MAX_BATCH + 1, 4)),
    "nested": v2_body([ROW, ROW], shape=(2, 4)),
    "nested-wrong-count": v2_body([ROW], shape=(2, 4)),
    "short-data": v2_body(ROW[:3]),
    "long-data": v2_body(ROW + [1.0]),
    "shape-3d": v2_body(ROW, shape=(1, 2, 2)),
    "shape-cols": v2_body(ROW, shape=(2, 2)),
    "shape-zero": v2_body([], shape=(0, 4)),
    "shape-float": v2_body(ROW).replace("[1, 4]", "[1.0, 4]"),
    "fp16": v2_body(ROW, datatype="FP16"),
    "int64": v2_body([5, 3, 1, 0], datatype="INT64"),
    "NaN": v2_body(ROW).replace("5.1", "NaN"),
    "Infinity": v2_body(ROW).replace("3.5", "Infinity"),
    "overflow": v2_body(ROW).replace("5.1", "1e999"),
    "big-int": v2_body(ROW).replace("5.1", "18446744073709551616"),
    "int-5000-digits": v2_body(ROW).replace("5.1", "9" * 5000),
    "string": v2_body([5.1, "3.5", 1.4, 0.2]),
    "bool": v2_body([True, 3.5, 1.4, 0.2]),
    "null": v2_body([None, 3.5, 1.4, 0.2]),
    "two-inputs": json.dumps({"inputs": [json.loads(v2_body(ROW))["inputs"][0]] * 2}),
    "no-inputs": json.dumps({"inputs": []}),
    "id-and-outputs": v2_body(ROW, id="req-1", outputs=[{"name": "predict"}]),
    "unknown-output": v2_body(ROW, outputs=[{"name": "logits"}]),
    "id-number": v2_body(ROW, id=7),
    "parameters": v2_body(ROW, parameters={"content_type": "np"}),
    "parameters-list": v2_body(ROW, parameters=[1]),
    "extra-field": v2_body(ROW, model="x"),
    "duplicate-key": v2_body(ROW).replace('"data":', '"data": [1, 1, 1, 1], "data":'),
    "utf8-bom": "\ufeff" + v2_body(ROW),
    "deep": '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}",
    "truncated": v2_body(ROW)[:-5],
    "array": json.dumps([ROW]),
    "empty": "",
}


def reference_v2(body: bytes):
    rows, request_id, outputs = v2_rows(reference_decode(body))
    return rows.tobytes(), rows.shape, request_id, outputs


def fast_v2(body: bytes):
    rows, request_id, outputs = v2_rows_json(body)
    return rows.tobytes(), rows.shape, request_id, outputs


@pytest.mark.parametrize("name", list(V2_BODIES))
def test_v2_rows_json_gives_what_the_general_path_gives(name):
    body = V2_BODIES[name].encode("utf-8")
    got, want = outcome(fast_v2, body), outcome(reference_v2, body)
    assert got == want  # the same rows to the bit (-0.0, FP32 rounding), id and outputs; or the same refusal


def test_v2_flat_requests_take_the_one_step_path(monkeypatch):
    """The common form does not fall back (else the fast path would silently stop being fast)."""
    from app import protocols

    def general(payload):
        raise AssertionError("the flat request went through the general path")

    monkeypatch.setattr(protocols, "v2_rows", general)
    for name in ("guide", "ints", "fp32", "batch", "max-batch", "id-and-outputs", "parameters", "extra-field"):
        rows, _, _ = v2_rows_json(V2_BODIES[name].encode())
        assert rows.shape[1] == 4


def test_generated_request_ids_are_distinct_uuid4s():
    ids = {_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in ids:
        parsed = uuid.UUID(i)
        assert str(parsed) == i and parsed.version == 4 and parsed.variant == uuid.RFC_4122


# -- FastAPI's OpenTelemetry bridge ------------------------------------------------------------------
TELEMETRY_PROBE = """
import os, sys, tempfile
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from fastapi import FastAPI
from fastapi.testclient import TestClient

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
if sys.argv[1] == "app":
    os.environ["MODELS_DIR"] = tempfile.mkdtemp()
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # set even empty, prometheus_client writes files in the cwd
    from app.main import create_app
    app = create_app()
else:  # a bare FastAPI app: its default
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
with TestClient(app) as client:
    client.get("/health")
    client.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})
print(len(exporter.get_finished_spans()))
"""


@pytest.mark.parametrize(("which", "spans"), [("bare", True), ("app", False)])
def test_fastapis_telemetry_is_off_even_with_a_tracer_provider_configured(which, spans, tmp_path):
    """FastAPI's bridge looked up the OpenTelemetry providers on every request (~3 us); the app turns it off.

    A separate interpreter: the global tracer provider can be set once per process. A bare FastAPI
    app traces the same requests (the probe sees spans when the bridge is on). It runs in an empty
    directory, which must stay empty (no metrics files left behind).
    """
    serving_dir = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE, which],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": serving_dir},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == []
    assert (int(out.stdout.split()[-1]) > 0) is spans


# -- garbage collector -------------------------------------------------------------------------------
def test_startup_freezes_the_loaded_objects(client):
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD


def test_corked_transport_sends_what_uvicorn_wrote_in_order_in_fewer_writes():
    """A response's head and body leave in one writev; a write the app then waits on is not held; close flushes."""
    import asyncio

    from app.protocol import _Corked

    class Transport:
        def __init__(self) -> None:
            self.calls: list[list[bytes]] = []
            self.closing = False

        def write(self, data: bytes) -> None:
            self.calls.append([data])

        def writelines(self, parts: list[bytes]) -> None:
            self.calls.append(list(parts))

        def is_closing(self) -> bool:
            return self.closing

        def close(self) -> None:
            self.closing = True

        def get_extra_info(self, name: str, default=None):
            return ("127.0.0.1", 8000) if name == "sockname" else default

    async def scenario() -> Transport:
        transport = Transport()
        corked = _Corked(transport, asyncio.get_running_loop())
        assert corked.get_extra_info("sockname") == ("127.0.0.1", 8000)
        corked.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)  # the app waits for the body: the interim answer must be out by then
        await asyncio.sleep(0)
        assert transport.calls == [[b"HTTP/1.1 100 Continue\r\n\r\n"]]
        corked.write(b"head")
        corked.write(b"body")
        corked.flush()  # the response is complete
        corked.write(b"second head")
        corked.write(b"second body")
        corked.close()
        corked.write(b"after close")  # nowhere to go once closed, as with uvicorn's own checks
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(scenario())
    assert transport.calls == [
        [b"HTTP/1.1 100 Continue\r\n\r\n"],
        [b"head", b"body"],
        [b"second head", b"second body"],
    ]
    assert transport.closing


def test_only_the_usual_output_lists_are_memoized():
    r = Renderer(("a", "b"), "1")
    one = np.array([[0.25, 0.75]])
    many = ("predict_proba",) * 1000  # repeated names are valid; such a frame must not be kept
    assert json.loads(v2_answer(r, "m", "x", many, one)[0])["outputs"][999]["data"] == [0.25, 0.75]
    assert r.memo == {}
    v2_answer(r, "m", "x", V2_OUTPUTS, one)
    assert len(r.memo) == 1
