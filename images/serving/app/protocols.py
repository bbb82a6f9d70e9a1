"""The protocols peers' clients speak, beside /predict, over the same model, validation and metrics.

- Open Inference Protocol (V2) of KServe, MLServer and Triton: ``/v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/{name}[/versions/{version}]``, ``.../ready``, ``.../infer``;
  one input tensor ``[n, 4]`` of FP32 or FP64, outputs ``predict`` (INT64 class ids) and
  ``predict_proba`` (FP64); errors ``{"error": "..."}``.
- MLflow's scoring protocol (``mlflow models serve``): ``POST /invocations`` with
  ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs``, answering
  ``{"predictions": [class id, ...]}`` as MLflow does for the trainer's model (its signature is
  one float64 tensor of shape (-1, 4), so columns are taken by position); ``GET /ping``,
  ``GET /version``; errors ``{"error_code": "BAD_REQUEST", "message": "..."}``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Annotated, Any, Literal, NotRequired

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from .inputs import (
    BodyBudget,
    InputError,
    bad,
    columns_array,
    decode_json,
    read_body,
    records_array,
    rows_array,
    validation_problems,
)
from .model import N_FEATURES, LoadedModel, ModelHolder
from .render import Renderer, remember, row_key
from .schemas import MAX_BATCH

_json_str = encode_basestring_ascii
"""``json.dumps(text)`` for a ``str``, without its overhead (json.dumps returns exactly this for a str)."""


@dataclass
class Serving:
    """What the protocol routes share with /predict (one per app)."""

    holder: ModelHolder
    model_name: str
    version: str
    budget: BodyBudget
    retry_after: str
    predict_proba: Callable[[LoadedModel, np.ndarray], Awaitable[np.ndarray]]
    """(model, rows) -> probabilities (on the event loop or in a thread, as /predict does)."""
    count: Callable[[LoadedModel, np.ndarray], None]
    """(model, class ids): the predictions counted in the metrics."""


def _close_headers(exc: InputError, extra: dict | None = None) -> dict:
    headers = dict(extra or {})
    if exc.close:
        headers["Connection"] = "close"
    if exc.status == 503:
        headers["Retry-After"] = "1"
    return headers


# -- Open Inference Protocol (V2) ---------------------------------------------------------------------
V2_INPUT = "input-0"
V2_OUTPUTS = ("predict", "predict_proba")
V2_DATATYPES = ("FP32", "FP64")


class _V2Input(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str
    shape: list[int]
    datatype: str
    parameters: dict | None = None
    data: list[Any]


class _V2Output(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str
    parameters: dict | None = None


class _V2Request(BaseModel):
    model_config = ConfigDict(strict=True)
    id: str | None = None
    parameters: dict | None = None
    inputs: list[_V2Input] = Field(min_length=1)
    outputs: list[_V2Output] | None = None


FP32_OVERFLOW = 2.0**128 - 2.0**103
"""The smallest float64 magnitude that rounds to infinity in float32: halfway from float32's largest value
(2**128 - 2**104) to 2**128, where round-half-to-even goes up. Anything smaller rounds to a finite value."""

FP32_CHECKED_IN_PYTHON = 64
"""Up to this many values, _as_fp32 checks their range in Python (min and max of the list) instead of numpy."""


def _as_fp32(rows: np.ndarray, values: list[float] | None = None) -> np.ndarray | None:
    """FP64 rows rounded to FP32 values (as float64), or None when one overflows float32.

    ``values``: the same numbers as a list, when the caller has them. A few of them are compared
    with FP32_OVERFLOW in Python; if none reaches it the cast cannot overflow and needs neither
    numpy's errstate nor a finiteness check (together ~2 us, most of a one-row request's rounding).
    Otherwise, or for many values, the cast is checked as before; the result is the same either way.
    """
    if (
        values is not None
        and len(values) <= FP32_CHECKED_IN_PYTHON
        and -FP32_OVERFLOW < min(values)
        and max(values) < FP32_OVERFLOW
    ):
        return rows.astype(np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        rows32 = rows.astype(np.float32)
    if not np.isfinite(rows32).all():
        return None
    return rows32.astype(np.float64)


V2Rows = tuple[np.ndarray, str | None, tuple[str, ...]]
"""A V2 inference request as served: its rows, its id (None: none given) and the outputs it asks for."""


def v2_rows(payload: Any) -> V2Rows:
    """The rows of a V2 inference request (one tensor [n, 4] of FP32 or FP64), or InputError naming the field."""
    try:
        req = _V2Request.model_validate(payload)
    except ValidationError as exc:
        raise InputError(validation_problems(exc)) from None
    if len(req.inputs) != 1:
        raise bad(("inputs",), f"this model takes one input tensor of shape [n, {N_FEATURES}], got {len(req.inputs)}")
    tensor = req.inputs[0]
    loc = ("inputs", 0)
    if tensor.datatype not in V2_DATATYPES:
        raise bad((*loc, "datatype"), f"must be one of {', '.join(V2_DATATYPES)}, got {tensor.datatype!r}")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != N_FEATURES or not 1 <= shape[0] <= MAX_BATCH:
        raise bad((*loc, "shape"), f"must be [n, {N_FEATURES}] with 1 <= n <= {MAX_BATCH}, got {shape}")
    n = shape[0]
    data = tensor.data
    if data and isinstance(data[0], list):  # nested, as the spec allows
        if len(data) != n:
            raise bad((*loc, "data"), f"holds {len(data)} rows, the shape says {n}")
        rows = rows_array(data, (*loc, "data"))
    else:  # flat, row-major
        if len(data) != n * N_FEATURES:
            raise bad((*loc, "data"), f"holds {len(data)} values, the shape {shape} needs {n * N_FEATURES}")
        rows = rows_array([data[i : i + N_FEATURES] for i in range(0, len(data), N_FEATURES)], (*loc, "data"))
    if tensor.datatype == "FP32":
        rows = _as_fp32(rows)
        if rows is None:
            raise bad((*loc, "data"), "values must be finite FP32 numbers (one overflows float32)")
    for i, out in enumerate(req.outputs or []):
        if out.name not in V2_OUTPUTS:
            raise bad(("outputs", i, "name"), f"unknown output {out.name!r}; this model has {', '.join(V2_OUTPUTS)}")
    return rows, req.id, tuple(o.name for o in req.outputs or ()) or V2_OUTPUTS


class _V2FlatInput(TypedDict):
    """The common form of the one input tensor: FP32/FP64, data flat and already finite numbers."""

    __pydantic_config__ = ConfigDict(strict=True)  # type: ignore[misc]
    name: str
    shape: list[int]
    datatype: Literal["FP32", "FP64"]
    parameters: NotRequired[dict | None]
    data: list[FiniteFloat]


class _V2FlatOutput(TypedDict):
    __pydantic_config__ = ConfigDict(strict=True)  # type: ignore[misc]
    name: str
    parameters: NotRequired[dict | None]


class _V2FlatRequest(TypedDict):
    """_V2Request's fields as a TypedDict: pydantic-core builds plain dicts (~1 us less than models)."""

    __pydantic_config__ = ConfigDict(strict=True)  # type: ignore[misc]
    id: NotRequired[str | None]
    parameters: NotRequired[dict | None]
    inputs: Annotated[list[_V2FlatInput], Field(min_length=1, max_length=1)]
    outputs: NotRequired[list[_V2FlatOutput] | None]


_V2_FLAT = TypeAdapter(_V2FlatRequest)


def v2_rows_json(body: bytes) -> V2Rows:
    """v2_rows(decode_json(body)), with the common request taken in one step; the same rows, the same refusals.

    pydantic-core parses and validates the bytes of a well-formed request with one flat FP32/FP64
    tensor at once (Rust), and numpy takes its numbers as they are: about half the time of decoding,
    validating the generic model and validating each row. Anything that step does not accept
    (nested data, a wrong shape or output, malformed JSON, whatever would be refused) goes through
    v2_rows as before, which decides and words the refusal; a request both accept gives the same
    rows (tests/test_serving_fastpath.py compares them).
    """
    try:
        req = _V2_FLAT.validate_json(body)
    except ValueError:
        return v2_rows(decode_json(body))
    tensor = req["inputs"][0]
    shape = tensor["shape"]
    data = tensor["data"]
    outputs = req.get("outputs")
    if (
        len(shape) != 2
        or shape[1] != N_FEATURES
        or not 1 <= shape[0] <= MAX_BATCH
        or len(data) != shape[0] * N_FEATURES
        or (outputs and any(o["name"] not in V2_OUTPUTS for o in outputs))
    ):
        return v2_rows(decode_json(body))
    rows = np.array(data, dtype=np.float64).reshape(-1, N_FEATURES)
    if tensor["datatype"] == "FP32":
        rows = _as_fp32(rows, data)
        if rows is None:
            return v2_rows(decode_json(body))
    return rows, req.get("id"), tuple(o["name"] for o in outputs) if outputs else V2_OUTPUTS


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _request_id() -> str:
    """A random version 4 UUID (RFC 9562) for an answer whose request named no id.

    What ``str(uuid.uuid4())`` gives, at a third of its cost: 122 random bits from ``random``
    (seeded from os.urandom in each worker process) instead of an os.urandom call per request,
    with the version (4) and variant (10) bits set as uuid.UUID(version=4) sets them, formatted
    8-4-4-4-12. The id only names an answer in the client's logs; it protects nothing.
    """
    h = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def v2_answer(
    renderer: Renderer, model_name: str, request_id: str, outputs: tuple[str, ...], proba: np.ndarray
) -> tuple[bytes, np.ndarray]:
    """The V2 answer, byte for byte what ``json.dumps(answer, separators=(",", ":"))`` gives, built as text.

    Assembled from its parts (the strings as json.dumps writes a str: it hands them to
    ``encode_basestring_ascii``, called here directly without json.dumps' own overhead; str/repr
    for the numbers, as json.dumps itself writes them; each row's probabilities from the model's
    render cache): a third of the time of serialising the dict. tests/test_serving_fastpath.py
    compares the two. Also the class ids (ValueError when a probability is not finite).
    """
    head, tail, ids = _v2_frame(renderer, model_name, tuple(outputs), proba)
    return (head + _json_str(request_id) + tail).encode(), ids


_MEMO_OUTPUTS = {V2_OUTPUTS, V2_OUTPUTS[::-1], V2_OUTPUTS[:1], V2_OUTPUTS[1:]}
"""The output lists whose one-row frames are memoized: a request may repeat an output name any number of
times (thousands fit in a body), and such frames must not be kept."""


def _v2_frame(
    renderer: Renderer, model_name: str, outputs: tuple[str, ...], proba: np.ndarray
) -> tuple[str, str, np.ndarray]:
    """The V2 answer's text before and after its id, and the class ids.

    A one-row answer's frame (for the usual output lists, _MEMO_OUTPUTS) is kept in the renderer's
    memo (per model version, as the rows' renders are), keyed by the row's bytes (which decide its
    class id), the model name and the outputs: a forest answers from a finite set of rows, so most
    one-row answers skip the class id and the assembly of their outputs (~3 us) and only the id is
    filled in.
    """
    if len(proba) == 1 and outputs in _MEMO_OUTPUTS:
        key = ("v2", row_key(proba), model_name, outputs)
        return remember(renderer.memo, key, _build_v2_frame, renderer, model_name, outputs, proba)
    return _build_v2_frame(renderer, model_name, outputs, proba)


def _build_v2_frame(
    renderer: Renderer, model_name: str, outputs: tuple[str, ...], proba: np.ndarray
) -> tuple[str, str, np.ndarray]:
    ids = renderer.class_ids(proba)  # ValueError when not finite
    ids.setflags(write=False)  # shared by the answers from the memo
    parts = []
    for name in outputs:
        if name == "predict":
            data = ",".join(map(str, ids.tolist()))
            parts.append(f'{{"name":"predict","datatype":"INT64","shape":[{len(ids)}],"data":[{data}]}}')
        else:
            data = ",".join(renderer.values(proba))
            shape = ",".join(map(str, proba.shape))
            parts.append(f'{{"name":"predict_proba","datatype":"FP64","shape":[{shape}],"data":[{data}]}}')
    return (
        f'{{"model_name":{_json_str(model_name)},"model_version":{renderer.version},"id":',
        f',"parameters":{{}},"outputs":[{",".join(parts)}]}}',
        ids,
    )


def add_v2_routes(app: FastAPI, s: Serving) -> None:
    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message}, headers=headers)

    def not_ready() -> JSONResponse:
        return error(503, f"model {s.model_name} is not loaded yet", {"Retry-After": s.retry_after})

    def find(name: str, version: str | None) -> LoadedModel | JSONResponse:
        if name != s.model_name:
            return error(404, f"model {name!r} is not served here (this server serves {s.model_name!r})")
        model = s.holder.current
        if model is None:
            return not_ready()
        if version is not None and version != model.version:
            return error(404, f"model {name} version {version!r} is not served (serving version {model.version})")
        return model

    tags = ["Open Inference Protocol (V2)"]

    @app.get("/v2", tags=tags, summary="Server metadata")
    async def v2_server() -> dict:
        return {"name": "ops-demo-serving", "version": s.version, "extensions": []}

    @app.get("/v2/health/live", tags=tags, summary="Server live (always, like /health)")
    async def v2_live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=tags, summary="Server ready: the model is loaded")
    async def v2_ready() -> JSONResponse:
        if s.holder.current is None:
            return JSONResponse(status_code=503, content={"ready": False}, headers={"Retry-After": s.retry_after})
        return JSONResponse({"ready": True})

    async def metadata(model_name: str, model_version: str | None = None) -> Response:
        model = find(model_name, model_version)
        if isinstance(model, Response):
            return model
        return JSONResponse(
            {
                "name": s.model_name,
                "versions": [model.version],
                "platform": "scikit-learn",
                "inputs": [{"name": V2_INPUT, "datatype": "FP64", "shape": [-1, N_FEATURES]}],
                "outputs": [
                    {"name": "predict", "datatype": "INT64", "shape": [-1]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.class_names)]},
                ],
                "parameters": {"feature_names": list(model.feature_names), "class_names": list(model.class_names)},
            }
        )

    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        model = find(model_name, model_version)
        if isinstance(model, Response):
            if model.status_code == 503:
                return JSONResponse(
                    status_code=503,
                    content={"name": model_name, "ready": False},
                    headers={"Retry-After": s.retry_after},
                )
            return model
        return JSONResponse({"name": s.model_name, "ready": True})

    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        try:
            body = await read_body(request, s.budget)
            rows, request_id, outputs = v2_rows_json(body)
        except InputError as exc:
            return error(exc.status or 400, exc.message(), _close_headers(exc))
        model = find(model_name, model_version)
        if isinstance(model, Response):
            return model
        proba = await s.predict_proba(model, rows)
        content, ids = v2_answer(
            model.renderer, s.model_name, _request_id() if request_id is None else request_id, outputs, proba
        )
        s.count(model, ids)
        return Response(content, media_type="application/json")

    responses = {
        400: {"description": '{"error": "<field>: <reason>"}'},
        404: {"description": "unknown model or version"},
        413: {"description": "body too large"},
        503: {"description": "no model loaded yet (Retry-After)"},
    }
    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(prefix, metadata, methods=["GET"], tags=tags, summary="Model metadata")
        app.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], tags=tags, summary="Model ready")
        app.add_api_route(
            f"{prefix}/infer",
            infer,
            methods=["POST"],
            tags=tags,
            summary=f"Inference: one input [n, {N_FEATURES}] FP32/FP64 -> predict, predict_proba",
            responses=responses,
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
        )


# -- MLflow scoring protocol ---------------------------------------------------------------------------
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def mlflow_rows(payload: Any) -> np.ndarray:
    """The rows of an /invocations JSON body, read as `mlflow models serve` reads them for a (-1, 4) tensor."""
    if not isinstance(payload, dict):
        raise bad((), f"must be a JSON object with one of the keys {', '.join(MLFLOW_FORMATS)}")
    keys = [k for k in MLFLOW_FORMATS if k in payload]
    if len(keys) != 1:
        raise bad((), f"must have exactly one of the keys {', '.join(MLFLOW_FORMATS)}; got {sorted(payload)}")
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise bad((key,), "must be an object with 'data' (and optionally 'columns' and 'index')")
        unknown = sorted(set(value) - {"columns", "data", "index"})
        if unknown:
            raise bad((key,), f"unexpected keys {unknown}; allowed: columns, data, index")
        columns = value.get("columns")
        if columns is not None and (not isinstance(columns, list) or len(columns) != N_FEATURES):
            raise bad((key, "columns"), f"must list {N_FEATURES} columns (taken by position), got {columns!r}")
        return rows_array(value["data"], (key, "data"))
    if key == "dataframe_records":
        return records_array(value, (key,))
    if isinstance(value, dict):  # columnar: {"column": [values], ...}
        return columns_array(value, (key,))
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return records_array(value, (key,))
    return rows_array(value, (key,))


def mlflow_answer(renderer: Renderer, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``{"predictions":[class id, ...]}`` and the class ids (ValueError when a probability is not finite).

    A one-row answer is kept in the renderer's memo, keyed by the row's bytes, as V2's frames are.
    """
    if len(proba) == 1:
        return remember(renderer.memo, ("mlflow", row_key(proba)), _build_mlflow_answer, renderer, proba)
    return _build_mlflow_answer(renderer, proba)


def _build_mlflow_answer(renderer: Renderer, proba: np.ndarray) -> tuple[bytes, np.ndarray]:
    ids = renderer.class_ids(proba)  # ValueError when not finite
    ids.setflags(write=False)  # shared by the answers from the memo
    return ('{"predictions":[' + ",".join(map(str, ids.tolist())) + "]}").encode(), ids


def _json_utf8(content_type: str) -> bool:
    """Whether a Content-Type names JSON in UTF-8: application/json, with at most charset=utf-8 parameters.

    /invocations calls it only for values other than the plain ``application/json`` (which it accepts
    at once: this would only split it to find the same).
    """
    mime, *params = [p.strip() for p in content_type.split(";")]
    charset = [p.partition("=")[2].strip().lower() for p in params if p.lower().startswith("charset=")]
    return mime.lower() == "application/json" and all(c == "utf-8" for c in charset) and len(charset) == len(params)


def add_mlflow_routes(app: FastAPI, s: Serving) -> None:
    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(
            status_code=status, content={"error_code": "BAD_REQUEST", "message": message}, headers=headers
        )

    tags = ["MLflow scoring protocol"]

    @app.get("/ping", tags=tags, summary="MLflow health: 200 once the model is loaded")
    async def ping() -> Response:
        if s.holder.current is None:
            return Response(
                "\n", status_code=503, media_type="application/json", headers={"Retry-After": s.retry_after}
            )
        return Response("\n", media_type="application/json")

    @app.get("/version", tags=tags, summary="Server version (plain text)")
    async def version() -> Response:
        return Response(s.version, media_type="text/plain")

    @app.post(
        "/invocations",
        tags=tags,
        summary="MLflow scoring: dataframe_split, dataframe_records, instances or inputs -> predictions",
        responses={
            400: {"description": '{"error_code": "BAD_REQUEST", "message": "<field>: <reason>"}'},
            413: {"description": "body too large"},
            415: {"description": "not application/json"},
            503: {"description": "no model loaded yet (Retry-After)"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
    )
    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type != "application/json" and not _json_utf8(content_type):
            return error(
                415,
                f"content type must be application/json (charset utf-8); got {content_type!r}",
                {"Connection": "close"},
            )
        try:
            body = await read_body(request, s.budget)
            rows = mlflow_rows(decode_json(body))
        except InputError as exc:
            return error(exc.status or 400, exc.message(), _close_headers(exc))
        model = s.holder.current
        if model is None:
            return error(503, f"model {s.model_name} is not loaded yet", {"Retry-After": s.retry_after})
        content, ids = mlflow_answer(model.renderer, await s.predict_proba(model, rows))
        s.count(model, ids)
        return Response(content, media_type="application/json")
