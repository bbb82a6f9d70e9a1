"""Request and response bodies of the prediction API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from .model import N_FEATURES

MAX_BATCH = 1000
"""Upper bound on ``instances`` in one request (documented in README.md)."""

Row = Annotated[
    list[FiniteFloat],
    Field(
        min_length=N_FEATURES,
        max_length=N_FEATURES,
        description="sepal length, sepal width, petal length, petal width (cm): 4 finite numbers",
    ),
]

GUIDE_EXAMPLE = {"features": [5.1, 3.5, 1.4, 0.2]}
BATCH_EXAMPLE = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


class PredictRequest(BaseModel):
    """Exactly one of ``features`` (one flower) or ``instances`` (a batch of 1..MAX_BATCH)."""

    # strict: "5.1", true and null are not numbers; FiniteFloat: NaN and +-Infinity are refused.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [GUIDE_EXAMPLE, BATCH_EXAMPLE]},
    )

    features: Row | None = None
    instances: Annotated[list[Row], Field(min_length=1, max_length=MAX_BATCH)] | None = None

    @field_validator("features", "instances", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must be a list of numbers, not null")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.features is None) == (self.instances is None):
            which = "both were given" if self.features is not None else "neither was given"
            raise ValueError(f"provide exactly one of 'features' (one row) or 'instances' (a batch); {which}")
        return self


class Prediction(BaseModel):
    class_id: int = Field(description="index into class_names")
    class_name: str
    probabilities: dict[str, float] = Field(description="class name -> probability; they sum to 1")


class PredictResponse(Prediction):
    model_version: str


class BatchPredictResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str
