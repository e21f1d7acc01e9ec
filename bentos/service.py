"""Maquette's online prediction service: one BentoML class over `maquette.serving.Predictor`.

`maquette serve` (or `bentoml serve bentos.service:PredictionService` from the project folder)
starts it on loopback. POST /predict takes one row or a list of rows (entity keys and request
fields) and an optional model selector; /healthz, /readyz and /metrics come with it.
"""

from __future__ import annotations

import contextlib
import gc
from datetime import datetime
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from maquette.config import load_settings
from maquette.errors import MaquetteError
from maquette.serving import Predictor, http_status

SETTINGS = load_settings()

EXAMPLE_ROW = {
    "origin": "JFK",
    "carrier": "B6",
    "tailnum": "N804JB",
    "route": "JFK-LAX",
    "scheduled_departure": "2013-12-15T14:30:00Z",
}

PREDICTIONS = bentoml.metrics.Counter(
    name="maquette_predictions",
    documentation="Predictions served",
    labelnames=["model", "partition"],
)
MISSING = bentoml.metrics.Counter(
    name="maquette_missing_features",
    documentation="Features missing or stale at serving",
    labelnames=["model", "kind"],
)
LATENCY = bentoml.metrics.Histogram(
    name="maquette_predict_seconds",
    documentation="Time inside Maquette per request",
    labelnames=["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)


class PredictionOut(BaseModel):
    """One answered row."""

    prediction_id: str = Field(description="Id of the logged prediction (join labels on it).")
    prediction: float = Field(
        description="Predicted value (binary: probability of the positive class)."
    )
    model: str = Field(
        description="Exact version used, NAME:VERSION.", examples=["flight_delay:v3"]
    )
    partition: str = Field(description="Partition model used, or __parent__.", examples=["JFK"])
    decision: bool | None = Field(None, description="Binary models: probability >= the threshold.")
    missing_features: list[str] = Field(
        default_factory=list, description="Not in the online store."
    )
    stale_features: list[str] = Field(
        default_factory=list, description="Older than their view's TTL."
    )


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class BearerAuth:
    """Pure ASGI middleware: /predict needs `Authorization: Bearer <api_key>` when a key is set."""

    OPEN = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        refused = (
            scope["type"] == "http"
            and scope["path"] not in self.OPEN
            and dict(scope["headers"]).get(b"authorization") != self.expected
        )
        if not refused:
            await self.app(scope, receive, send)
            return
        body = b'{"error": "missing or wrong API key: send Authorization: Bearer <key>"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@bentoml.service(
    name="maquette",
    http={"host": SETTINGS.serving.host, "port": SETTINGS.serving.port},
    endpoints={"livez": "/healthz", "readyz": "/readyz"},
    traffic={"timeout": 30},
    workers=1,
)
class PredictionService:
    """Entity keys in; fresh features, the routed model version and a logged prediction out."""

    def __init__(self) -> None:
        self.predictor = Predictor(SETTINGS)
        for name in SETTINGS.models:
            # Warm the production versions before traffic; an untrained model is not fatal:
            # /readyz says so and its requests get a clear 404.
            with contextlib.suppress(MaquetteError):
                self.predictor.load(name)
        # Long-lived objects (models, Feast) out of the collector's way: full collections
        # scanning them caused 100+ ms pauses under load.
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/predict")
    def predict(
        self,
        rows: Annotated[
            list[dict[str, Any]] | dict[str, Any],
            Field(
                description="One row or a list of rows: entity keys and request fields.",
                examples=[[EXAMPLE_ROW]],
            ),
        ],
        model: Annotated[
            str | None,
            Field(
                description="NAME, NAME:VERSION or NAME@ALIAS.",
                examples=["flight_delay@production"],
            ),
        ] = None,
        as_of: Annotated[
            datetime | None, Field(description="Judge feature freshness as of this time.")
        ] = None,
    ) -> PredictResponse:
        """Predict for each row with the selected model version (default NAME@production)."""
        batch = [rows] if isinstance(rows, dict) else rows
        try:
            with LATENCY.labels(model=model or "default").time():
                answers = self.predictor.predict(batch, model, as_of)
        except MaquetteError as exc:
            # Returned, not raised: BentoML hides the message of any 5xx, and a 503 must say
            # which Redis is down and what to do.
            error = {"error": exc.message, "remedy": exc.remedy}
            return JSONResponse(error, status_code=http_status(exc))  # type: ignore[return-value]
        for a in answers:
            PREDICTIONS.labels(model=a.model, partition=a.partition).inc()
            if a.missing_features:
                MISSING.labels(model=a.model, kind="missing").inc(len(a.missing_features))
            if a.stale_features:
                MISSING.labels(model=a.model, kind="stale").inc(len(a.stale_features))
        return PredictResponse(predictions=[PredictionOut(**a.as_dict()) for a in answers])

    def __is_ready__(self) -> bool:
        return self.predictor.ready()


if SETTINGS.serving.api_key:
    PredictionService.add_asgi_middleware(BearerAuth, api_key=SETTINGS.serving.api_key)
