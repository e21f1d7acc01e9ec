"""Maquette's online prediction service: one BentoML class over `maquette.serving.predictor.Predictor`.

`maquette serve` (or `bentoml serve bentos.service:PredictionService` from the project folder)
starts it on loopback. POST /predict takes one row or a list of rows (entity keys and request
fields) and an optional model selector; /healthz, /readyz and /metrics come with it.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import inspect
import time
from collections import Counter
from datetime import datetime
from typing import Annotated, Any

import bentoml
from pydantic import Field, SecretStr
from starlette.responses import JSONResponse

from maquette.config import load_settings
from maquette.errors import MaquetteError
from maquette.serving.http import (
    AS_OF_DESCRIPTION,
    MODEL_DESCRIPTION,
    ROWS_DESCRIPTION,
    BodyLimit,
    PredictionOut,
    PredictResponse,
    PredictRoute,
    error_body,
)
from maquette.serving.openapi import MAX_SELECTOR_CHARS, OpenAPIRoute, predict_document
from maquette.serving.predictor import PredictCall, Predictor, http_status
from maquette.serving.scoring import Answers
from maquette.serving.server import check_exposure

# Read when the service starts, from the project's maquette.yaml and the environment: the API
# key (MAQUETTE_SERVING_API_KEY) comes from the environment of the process, never the bento.
SETTINGS = load_settings()
check_exposure(SETTINGS)  # no key on an interface other machines reach: refuse to start
# The Swagger UI's example request: the project's example row and its first model.
EXAMPLE_ROWS = [[SETTINGS.serving.example_row]] if SETTINGS.serving.example_row else None
EXAMPLE_MODEL = [f"{m}@{SETTINGS.serving.default_alias}" for m in list(SETTINGS.models)[:1]] or None

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
    documentation="Time inside Maquette per request (on the fast path: its batch's)",
    labelnames=["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)

BATCH = bentoml.metrics.Histogram(
    name="maquette_predict_batch_requests",
    documentation="Requests answered together by one feature read and one log append",
    labelnames=["route"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


def observe(selector: str | None, answers: Answers, seconds: float) -> None:
    """Prometheus counters for one answered request (both /predict paths call this), one
    increment per label set: a labelled increment per row was a tenth of a 100-row request."""
    LATENCY.labels(model=selector or "default").observe(seconds)
    for partition, count in Counter(answers.partitions).items():
        PREDICTIONS.labels(model=answers.tag, partition=partition).inc(count)
    if missing := sum(map(len, answers.missing)):
        MISSING.labels(model=answers.tag, kind="missing").inc(missing)
    if stale := sum(map(len, answers.stale)):
        MISSING.labels(model=answers.tag, kind="stale").inc(stale)


def tracing_config(sample_rate: float) -> dict[str, Any]:
    """BentoML's tracing for /predict only when sampled: an unsampled span per request still
    cost a tenth of a request and, held by BentoML's timeout timer, lengthened GC pauses."""
    if sample_rate > 0:
        return {"sample_rate": sample_rate}
    return {"excluded_urls": ["/predict$"]}  # a regex searched in the URL


def observe_batch(requests: int) -> None:
    # Labelled: an unlabelled bentoml.metrics histogram made at import is not exported by the
    # worker's multiprocess registry.
    BATCH.labels(route="/predict").observe(requests)


class BearerAuth:
    """Pure ASGI middleware: /predict needs `Authorization: Bearer <api_key>` when a key is set."""

    OPEN = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: Any, api_key: SecretStr) -> None:
        self.app, self.expected = app, f"Bearer {api_key.get_secret_value()}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        refused = (
            scope["type"] == "http"
            and scope["path"] not in self.OPEN
            # Constant time: how long a wrong key takes to refuse says nothing about the key.
            and not hmac.compare_digest(
                dict(scope["headers"]).get(b"authorization", b""), self.expected
            )
        )
        if not refused:
            await self.app(scope, receive, send)
            return
        body = (
            b'{"error": "missing or wrong API key: send Authorization: Bearer <key>", '
            b'"remedy": "Ask the service\'s operator for the key (MAQUETTE_SERVING_API_KEY)."}'
        )
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
    traffic={"timeout": SETTINGS.serving.timeout_s},
    logging={"access": {"enabled": SETTINGS.serving.access_log}},
    tracing=tracing_config(SETTINGS.serving.trace_sample_rate),
    workers=SETTINGS.serving.workers,
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
        PredictRoute.attach(self.predictor)

    @bentoml.api(route="/predict")
    def predict(
        self,
        rows: Annotated[
            list[dict[str, Any]] | dict[str, Any],
            Field(description=ROWS_DESCRIPTION, examples=EXAMPLE_ROWS),
        ],
        model: Annotated[
            str | None,
            Field(
                description=MODEL_DESCRIPTION, examples=EXAMPLE_MODEL, max_length=MAX_SELECTOR_CHARS
            ),
        ] = None,
        as_of: Annotated[datetime | None, Field(description=AS_OF_DESCRIPTION)] = None,
    ) -> PredictResponse:
        """Predict for each row with the selected model version (default: NAME@production).

        Each row carries the entity keys and request fields of the model's feature service.
        `as_of` is the prediction's time (ISO 8601 with a zone, within
        `serving.as_of_max_past` before and `serving.as_of_max_future` after the server's
        clock; default: when the request arrives). The service reads the latest online feature
        values and counts one as stale when it is older than its view's TTL at `as_of`;
        `as_of` is logged as the prediction's `request_time`, which monitoring windows use and
        labels with `time_from: request` match. Send it to predict for a past or simulated
        moment (replays, backtests). The server's receive time is logged beside it
        (`received_at`).

        Limits: `serving.max_body_bytes` (413), `serving.max_rows` rows of at most
        `serving.max_fields_per_row` fields and `serving.max_string_chars` characters per
        text value (422). Only the model's entity keys and request fields are used and logged.
        Every error answer is `{"error": ..., "remedy": ...}` (400 adds pydantic's `detail`).
        """
        # With `serving.fast_path` on (the default) `PredictRoute` answers POST /predict before
        # BentoML dispatches here, with the same models, code and JSON; this method still
        # defines the API's schema (its docstring is the OpenAPI description) and answers when
        # the fast path is off.
        batch = [rows] if isinstance(rows, dict) else rows
        began = time.perf_counter()
        try:
            (answers,) = self.predictor.predict_many([PredictCall(batch, model, as_of)])
            if isinstance(answers, MaquetteError):
                raise answers
        except MaquetteError as exc:
            # Returned, not raised: BentoML hides the message of any 5xx.
            status = http_status(exc)
            return JSONResponse(error_body(exc), status_code=status)  # type: ignore[return-value]
        observe(model, answers, time.perf_counter() - began)
        return PredictResponse(predictions=[PredictionOut(**a) for a in answers.body()])

    def __is_ready__(self) -> bool:
        return self.predictor.ready()


# The docstring is POST /predict's OpenAPI description as is: Python 3.11 keeps its
# indentation, which the Swagger UI's Markdown would show as a code block.
PREDICT_API = PredictionService.apis["predict"]
PREDICT_API.doc = inspect.cleandoc(PREDICT_API.doc or "")


def _document() -> dict[str, Any]:
    return predict_document(PredictionService.openapi_spec.asdict(), SETTINGS.serving, "/predict")


# Added in this order, the key check runs first, then the body cap (in front of both /predict
# paths), then the fast path (the first added is outermost).
if SETTINGS.serving.api_key is not None:
    PredictionService.add_asgi_middleware(BearerAuth, api_key=SETTINGS.serving.api_key)
PredictionService.add_asgi_middleware(
    BodyLimit, route="/predict", max_bytes=SETTINGS.serving.max_body_bytes
)
PredictionService.add_asgi_middleware(OpenAPIRoute, make=_document)
if SETTINGS.serving.fast_path:
    PredictionService.add_asgi_middleware(
        PredictRoute, route="/predict", observe=observe, observe_batch=observe_batch
    )
