"""The HTTP floor: a bare FastAPI endpoint that parses the serving API's body and answers a constant.

``python -m uvicorn bench.floor:app --workers 2`` with the serving app's uvicorn settings
(uvloop, httptools, no access log). The request model has the same shape as
``app.schemas.PredictRequest`` (strict, no extra fields, 4 finite numbers per row, 1..1000 rows,
exactly one of features/instances); the answer is a constant of the API's shape (one per batch
size); no model, no metrics, no rendering. Whatever a real
prediction server adds on top of this is its own cost.
"""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

Row = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4)]

ROW = b'{"class_id":0,"class_name":"setosa","probabilities":{"setosa":1.0,"versicolor":0.0,"virginica":0.0}'
ANSWER = ROW + b',"model_version":"floor"}'


@functools.cache
def batch_answer(rows: int) -> bytes:
    """A constant batch answer of the serving API's shape (made once per batch size, then reused)."""
    return b'{"predictions":[' + b",".join([ROW + b"}"] * rows) + b'],"model_version":"floor"}'


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    features: Row | None = None
    instances: Annotated[list[Row], Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.features is None) == (self.instances is None):
            raise ValueError("provide exactly one of 'features' or 'instances'")
        return self


app = FastAPI(title="HTTP floor", docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        req = PredictRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return Response(exc.json(include_url=False), status_code=422, media_type="application/json")
    body = ANSWER if req.instances is None else batch_answer(len(req.instances))
    return Response(body, media_type="application/json")


@app.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
