"""FastAPI app: the Iris prediction API over the model holder (model loaded in lifespan, hot-reloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .config import Settings
from .hotpath import HotRoutes
from .inputs import (
    MAX_BODY_BYTES,
    BodyBudget,
    InputError,
    decode_json,
    read_body,
    rows_to_array,
    validation_problems,
)
from .metrics import Metrics, MetricsMiddleware, worker_exiting
from .model import LoadedModel, ModelHolder
from .protocols import Serving, add_mlflow_routes, add_v2_routes
from .schemas import MAX_BATCH, BatchPredictResponse, PredictRequest, PredictResponse

log = logging.getLogger("app")

INLINE_MAX_ROWS = {"table": MAX_BATCH, "trees": 16}
"""Per inference path, requests with at most this many rows are predicted on the event loop; others in a thread.

The table answers any batch (MAX_BATCH rows: ~0.1 ms) faster than a hop to the thread pool and back
costs (and a thread would hold the GIL for it anyway); walking the trees takes ~0.5 ms for 16 rows.
"""

APP_VERSION = "1.0.0"

HOT_PATHS = (
    "/predict",
    "/invocations",
    "/v2/models/{model_name}/infer",
    "/v2/models/{model_name}/versions/{model_version}/infer",
)
"""Routes whose POSTs skip FastAPI's per-request machinery (app/hotpath.py); same handlers, same answers."""

NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False}
"""FastAPI's own OpenTelemetry spans, metrics and logs: off (the app's metrics are Prometheus's, /metrics)."""

DOCS_ASSETS = "/docs/assets"
"""Swagger UI's JS and CSS, served from the image (the swagger-ui-bundle-v2 package): no CDN needed."""


def _unprocessable(errors: list[dict], status: int = 422, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": errors}, headers=headers)


GC_GEN0_THRESHOLD = 10_000
"""Allocations between young-generation collections (Python's default: 700)."""


def _settle_gc() -> None:
    """Keep the garbage collector's pauses out of request latency (once the app and model are loaded).

    The ~60,000 objects of the imported modules live as long as the worker, yet every full
    collection walked them all again: 20-30 ms stalls, the bulk of the p99 latency at c=1.
    ``gc.freeze()`` moves every object alive now out of the collector's sight (they are still
    freed by reference counting), so collections only walk what requests allocated since. A larger
    young generation makes those collections rarer; request objects die by reference counting
    long before they would be collected.
    """
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _add_head_routes(app: FastAPI) -> None:
    """HEAD beside every GET (uptime checkers and load balancers send HEAD); not listed in the OpenAPI."""
    for route in list(app.router.routes):
        if isinstance(route, APIRoute) and "GET" in route.methods and "HEAD" not in route.methods:
            app.add_api_route(
                route.path, route.endpoint, methods=["HEAD"], include_in_schema=False, name=f"{route.name}_head"
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder = ModelHolder(settings.models_dir, settings.model_name, swap_delay=settings.swap_delay_seconds)
    metrics = Metrics()
    budget = BodyBudget()
    retry_after = str(max(1, math.ceil(settings.reload_interval_seconds)))

    reported: list[LoadedModel | None] = [None]  # the model the metrics show as loaded

    def pick_up() -> None:
        outcome = holder.load()
        if outcome.status == "refused":
            metrics.reloads.labels("refused").inc()
        # A new model (swapped now, or earlier by a request once its staged time came), or an earlier
        # one when a fresh worker met a broken one.
        now = holder.current
        if now is not reported[0]:
            metrics.model_swapped(reported[0], now)
            metrics.reloads.labels("loaded").inc()
            reported[0] = now

    async def check_for_model() -> None:
        try:
            await asyncio.to_thread(pick_up)
        except Exception:  # never fatal: the old model (or readiness false) stays, the next check retries
            log.exception("model reload check failed")

    async def reload_loop() -> None:
        while True:
            await asyncio.sleep(settings.reload_interval_seconds)
            await check_for_model()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_for_model()
        _settle_gc()
        if not holder.ready:
            log.warning(
                "no model published yet at %s; not ready, checking every %ss",
                holder.pointer_path,
                settings.reload_interval_seconds,
            )
        task = asyncio.create_task(reload_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            worker_exiting()

    app = FastAPI(
        title="Iris classifier",
        description=(
            "Predicts the Iris species from 4 measurements with the model promoted in MLflow and exported "
            f"to the shared models volume. Batches hold at most {MAX_BATCH} instances."
        ),
        version=APP_VERSION,
        lifespan=lifespan,
        docs_url=None,  # served below with Swagger UI's files from the image
        redoc_url=None,  # ReDoc would load its script from a CDN
        # FastAPI's OpenTelemetry bridge: the image has the API but no SDK, so it could never export
        # anything, yet it looked up the providers (3 environment reads) on every request: ~3 us.
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics

    def not_ready() -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": f"no model loaded yet (waiting for {holder.pointer_path})"},
            headers={"Retry-After": retry_after},
        )

    @app.get("/health", summary="Liveness: the process answers (never depends on a model)")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a model is loaded", responses={503: {"description": "no model yet"}})
    async def ready() -> JSONResponse:
        model = holder.current
        if model is None:
            return JSONResponse(
                status_code=503, content={"ready": False, "model_version": None}, headers={"Retry-After": retry_after}
            )
        return JSONResponse({"ready": True, "model_version": model.version})

    @app.get("/model", summary="The model in service: version, run id, metrics, when loaded")
    async def model_info() -> JSONResponse:
        model = holder.current
        if model is None:
            return not_ready()
        info = model.describe()
        staged = holder.staged
        if staged is not None:
            info["next"] = {
                "version": staged[0].version,
                "run_id": staged[0].run_id,
                "serves_from": datetime.fromtimestamp(staged[1], UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            }
        return JSONResponse(info)

    @app.get("/metrics", summary="Prometheus metrics (all workers)")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    request_schema = PredictRequest.model_json_schema()

    @app.post(
        "/predict",
        summary="Predict the species of one flower (features) or a batch (instances)",
        response_model=PredictResponse | BatchPredictResponse,
        responses={
            413: {"description": f"body larger than {MAX_BODY_BYTES} bytes"},
            422: {"description": "invalid input: each error names the field and the reason"},
            503: {"description": "no model loaded yet (Retry-After)"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}}},
    )
    async def predict(request: Request) -> Response:
        try:
            body = await read_body(request, budget)
        except InputError as exc:
            return _input_refused(exc)
        try:
            # The common case in one step: pydantic-core parses and validates the bytes (Rust).
            req = PredictRequest.model_validate_json(body)
        except ValueError:
            # Anything it refuses goes the way every body went before: json.loads' result validated as
            # Python objects, so a bad body gets the same 422 (fields, wording) as ever, and one that
            # pydantic's JSON parser alone refuses (a UTF-8 BOM, say) is still served.
            req = _validate_slowly(body)
            if isinstance(req, Response):
                return req
        model = holder.current  # one model object for the whole request
        if model is None:
            return not_ready()
        single = req.features is not None
        rows = rows_to_array([req.features] if single else req.instances)
        proba = await predict_proba(model, rows)
        content, ids = model.renderer.single(proba) if single else model.renderer.batch(proba)
        metrics.count_predictions(model.class_names, ids)
        return Response(content, media_type="application/json")

    def _validate_slowly(body: bytes) -> PredictRequest | Response:
        try:
            payload = decode_json(body)
        except InputError as exc:
            return _input_refused(exc)
        try:
            return PredictRequest.model_validate(payload)
        except ValidationError as exc:
            return _unprocessable(validation_problems(exc))
        except RecursionError:
            return _unprocessable(
                [{"field": "body", "loc": ["body"], "msg": "nested too deeply", "type": "value_error"}]
            )

    def _input_refused(exc: InputError) -> JSONResponse:
        headers = {"Connection": "close"} if exc.close else None
        if exc.status == 503:
            headers = {**(headers or {}), "Retry-After": "1"}
        if exc.status in (413, 503, 408):
            # 413 and 503 keep their plain {"detail": "<reason>"} form
            return JSONResponse(status_code=exc.status, content={"detail": exc.errors[0]["msg"]}, headers=headers)
        return _unprocessable(exc.errors, headers=headers)

    async def predict_proba(model: LoadedModel, rows: np.ndarray) -> np.ndarray:
        if len(rows) <= INLINE_MAX_ROWS.get(model.inference, 0):
            return model.predict_proba(rows)  # cheaper than a thread hop
        return await run_in_threadpool(model.predict_proba, rows)

    def count(model: LoadedModel, ids: np.ndarray) -> None:
        metrics.count_predictions(model.class_names, ids)

    serving = Serving(
        holder=holder,
        model_name=settings.model_name,
        version=APP_VERSION,
        budget=budget,
        retry_after=retry_after,
        predict_proba=predict_proba,
        count=count,
    )
    add_v2_routes(app, serving)
    add_mlflow_routes(app, serving)

    # /docs without internet: Swagger UI's files come from the image, not from a CDN.
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )

    _add_head_routes(app)
    # Added last, so outermost: metrics see every request, the hot prediction routes included.
    hot = [r for r in app.routes if isinstance(r, APIRoute) and r.path_format in HOT_PATHS and "POST" in r.methods]
    app.add_middleware(HotRoutes, routes=hot)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


app = create_app()
