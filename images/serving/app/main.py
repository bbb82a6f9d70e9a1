"""FastAPI app: the Iris prediction API over the model holder (model loaded in lifespan, hot-reloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .config import Settings
from .metrics import Metrics, MetricsMiddleware, worker_exiting
from .model import LoadedModel, ModelHolder
from .schemas import MAX_BATCH, BatchPredictResponse, PredictRequest, PredictResponse

log = logging.getLogger("app")

INLINE_MAX_ROWS = 16
"""Requests with at most this many rows are predicted on the event loop; others in a thread."""

INLINE_PATHS = frozenset({"table", "trees"})
"""Inference paths cheap enough for the event loop at INLINE_MAX_ROWS rows (microseconds; trees: ~0.5 ms)."""

MAX_BODY_BYTES = 1024 * 1024
"""Bodies above this are refused with 413 before parsing (a full batch of MAX_BATCH rows is ~60 KB)."""


def _field(loc) -> str:
    """("instances", 2, 0) -> "instances[2][0]"; the body itself -> "body"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _unprocessable(errors: list[dict]) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": errors})


def _validation_errors(exc: ValidationError) -> list[dict]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"])
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        out.append({"field": _field(loc), "loc": ["body", *loc], "msg": msg, "type": err["type"]})
    return out


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder = ModelHolder(settings.models_dir, settings.model_name, swap_delay=settings.swap_delay_seconds)
    metrics = Metrics()
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
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

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
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse(status_code=413, content={"detail": f"body exceeds {MAX_BODY_BYTES} bytes"})
        try:
            payload = json.loads(body)  # NaN/Infinity parse here and are refused by validation below
        except (ValueError, UnicodeDecodeError) as exc:
            reason = "empty body" if not body else f"not valid JSON: {exc}"
            return _unprocessable([{"field": "body", "loc": ["body"], "msg": reason, "type": "json_invalid"}])
        try:
            req = PredictRequest.model_validate(payload)
        except ValidationError as exc:
            return _unprocessable(_validation_errors(exc))
        model = holder.current  # one model object for the whole request
        if model is None:
            return not_ready()
        single = req.features is not None
        rows = np.array([req.features] if single else req.instances, dtype=np.float64)
        if model.inference in INLINE_PATHS and len(rows) <= INLINE_MAX_ROWS:
            proba = model.predict_proba(rows)  # cheaper than a thread hop
        else:
            proba = await run_in_threadpool(model.predict_proba, rows)
        content, ids = model.renderer.single(proba) if single else model.renderer.batch(proba)
        metrics.count_predictions(model.class_names, np.bincount(ids, minlength=len(model.class_names)))
        return Response(content, media_type="application/json")

    return app


app = create_app()
