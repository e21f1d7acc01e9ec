"""POST /predict as a pure ASGI route inside the BentoML service: the fast path.

BentoML's own API path costs about a millisecond per request before any work is done (its IO
descriptors, a thread hop for sync methods, response models), which is more than Maquette's
whole request. `PredictRoute` is added to the service with `add_asgi_middleware`, so it sits
inside BentoML's request metrics, tracing and access log, behind the API-key check, and answers
`POST /predict` itself: the same pydantic request model, the same `Predictor`, the same JSON
and status codes as the `@bentoml.api` method it stands in for (a test sends the same requests
to both), and `serving.fast_path: false` hands /predict back to BentoML.

`BodyLimit` sits in front of both paths: a body larger than `serving.max_body_bytes` gets 413
before a byte of it is parsed, and a form or pickle body, which BentoML would not read as JSON,
gets 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from maquette.errors import MaquetteError
from maquette.serving.openapi import MAX_SELECTOR_CHARS
from maquette.serving.predictor import PredictCall, Predictor, http_status
from maquette.serving.scoring import Answers

log = logging.getLogger("maquette.serving.predictor")

# Request fields, shared by the BentoML API signature and the fast path's validator.
ROWS_DESCRIPTION = "One row or a list of rows: entity keys and request fields."
MODEL_DESCRIPTION = "NAME, NAME:VERSION or NAME@ALIAS."
AS_OF_DESCRIPTION = (
    "Judge feature freshness as of this time: ISO 8601 with a time zone, within "
    "serving.as_of_max_past before and serving.as_of_max_future after the server's clock."
)


class PredictRequest(BaseModel):
    """The body of POST /predict (the fast path's validator; the Swagger UI shows the BentoML
    API method's signature, whose examples come from the project's settings)."""

    rows: list[dict[str, Any]] | dict[str, Any] = Field(description=ROWS_DESCRIPTION)
    model: str | None = Field(None, description=MODEL_DESCRIPTION, max_length=MAX_SELECTOR_CHARS)
    as_of: datetime | None = Field(None, description=AS_OF_DESCRIPTION)


class PredictionOut(BaseModel):
    """One answered row."""

    prediction_id: str = Field(description="Id of the logged prediction (join labels on it).")
    prediction: float = Field(
        description="Predicted value (binary: probability of the positive class)."
    )
    model: str = Field(description="Exact version used, NAME:VERSION.")
    partition: str = Field(description="Partition model used, or __parent__.")
    decision: bool | None = Field(None, description="Binary models: probability >= the threshold.")
    missing_features: list[str] = Field(
        default_factory=list, description="Not in the online store."
    )
    stale_features: list[str] = Field(
        default_factory=list, description="Older than their view's TTL."
    )


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


REQUEST = TypeAdapter(PredictRequest)
# BentoML's own answer to an unexpected failure (details go to the server log only).
SERVER_ERROR = orjson.dumps(
    {"error": "An unexpected error has occurred, please check the server log."}
)

# Called after each answered request: (model selector, answers, seconds inside Maquette).
Observer = Callable[[str | None, Answers, float], None]


def error_body(exc: MaquetteError) -> dict[str, str]:
    # Returned as the body, never hidden: a 503 must say which Redis is down and what to do.
    return {"error": exc.message, "remedy": exc.remedy}


# Media types BentoML reads as something other than JSON (a form, a pickle): refused with 415
# before BentoML tries (a form without its boundary made BentoML answer 500).
NOT_JSON = ("multipart/", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle")


class BodyLimit:
    """Pure ASGI middleware in front of both /predict paths: the body is read here, at most
    `max_bytes` of it, before anything parses it; a larger one gets 413 (its Content-Length
    says so before a byte is read; a chunked body is counted as it arrives)."""

    def __init__(self, app: Any, route: str = "/predict", max_bytes: int = 1 << 20) -> None:
        self.app, self.route, self.max_bytes = app, route, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.route or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if media.startswith(NOT_JSON):
            await _refuse(send, 415, f"POST {self.route} takes JSON, not {media}.", _JSON_FIX)
            return
        declared = headers.get(b"content-length", b"").strip()
        if declared and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send, declared.decode("latin-1"))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, f"more than {self.max_bytes}")
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return dict(await receive())
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any, size: str) -> None:
        await _refuse(
            send,
            413,
            f"the request body holds {size} bytes; the limit is {self.max_bytes}.",
            "Send fewer rows per request (serving.max_body_bytes sets the limit).",
        )


_JSON_FIX = "Send the request as Content-Type: application/json."


async def _refuse(send: Any, status: int, error: str, remedy: str) -> None:
    body = orjson.dumps({"error": error, "remedy": remedy})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of a refused body is never read: the connection is not reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def answer_body(answers: Answers) -> bytes:
    return orjson.dumps({"predictions": answers.body()})


class PredictRoute:
    """Pure ASGI middleware answering `POST <route>`; every other request passes through.

    Requests that arrive together are answered together: the first one queued schedules a
    flush on the event loop, requests read in the same loop turn join the queue, and one
    `Predictor.predict_many` call answers them all (one Redis round trip for the features, one
    for the log). Nothing waits for a batch to fill, so a lone request is answered at once.

    The predictor is attached once the BentoML service instance exists (`attach`); until then
    requests pass through to BentoML's own /predict.
    """

    instances: ClassVar[list[PredictRoute]] = []

    def __init__(
        self,
        app: Any,
        route: str = "/predict",
        observe: Observer | None = None,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.route = route
        self.observe = observe
        self.observe_batch = observe_batch
        self.predictor: Predictor | None = None
        self._queue: list[tuple[PredictCall, asyncio.Future[tuple[int, bytes]]]] = []
        self._loading: set[asyncio.Task[None]] = set()
        PredictRoute.instances.append(self)

    @classmethod
    def attach(cls, predictor: Predictor) -> None:
        """Give every mounted route (one per app BentoML builds) the service's predictor."""
        for route in cls.instances:
            route.predictor = predictor

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self.predictor is None
            or scope["type"] != "http"
            or scope["path"] != self.route
            or scope["method"] != "POST"
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            request = REQUEST.validate_json(body)
        except ValidationError as exc:
            status, payload = 400, _validation_error(exc)
        else:
            rows = [request.rows] if isinstance(request.rows, dict) else request.rows
            loop = asyncio.get_running_loop()
            answered: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            if not self._queue:
                loop.call_soon(self._flush)
            call = PredictCall(rows, request.model, request.as_of, datetime.now(UTC))
            self._queue.append((call, answered))
            status, payload = await answered
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _flush(self) -> None:
        # Runs once the requests read in this loop turn are queued; answers them in one go.
        queued, self._queue = self._queue, []
        assert self.predictor is not None
        try:
            unloaded = self.predictor.unloaded([c for c, _ in queued])
        except Exception:  # the answers report it
            unloaded = []
        if unloaded:
            # A version not loaded yet (an alias moved, a split added) loads in a thread: the
            # event loop keeps answering the other requests meanwhile.
            task = asyncio.get_running_loop().create_task(self._load_then_answer(queued, unloaded))
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)
            return
        self._answer(queued)

    async def _load_then_answer(
        self,
        queued: list[tuple[PredictCall, asyncio.Future[tuple[int, bytes]]]],
        tags: list[str],
    ) -> None:
        await asyncio.to_thread(self._load, tags)
        self._answer(queued)

    def _load(self, tags: list[str]) -> None:
        assert self.predictor is not None
        for tag in tags:
            # A version that cannot load is reported by its requests' own answers.
            with contextlib.suppress(Exception):
                self.predictor.version(tag)

    def _answer(self, queued: list[tuple[PredictCall, asyncio.Future[tuple[int, bytes]]]]) -> None:
        try:
            if self.observe_batch is not None:
                self.observe_batch(len(queued))
            results = self.respond([c for c, _ in queued])
        except Exception:  # anything unforeseen (a bug, a metrics hook): 500s, never a hang
            log.exception("POST %s failed", self.route)
            results = [(500, SERVER_ERROR)] * len(queued)
        for (_, answered), result in zip(queued, results, strict=True):
            if not answered.done():  # a client that went away leaves a cancelled future
                answered.set_result(result)

    def respond(self, calls: Sequence[PredictCall]) -> list[tuple[int, bytes]]:
        """(status, JSON body) per request; runs on the event loop (no thread hop)."""
        assert self.predictor is not None
        began = time.perf_counter()
        try:
            answers = self.predictor.predict_many(calls)
        except MaquetteError as exc:  # Redis down: every request in the batch gets the 503
            return [(http_status(exc), orjson.dumps(error_body(exc)))] * len(calls)
        seconds = time.perf_counter() - began
        out = []
        for call, answer in zip(calls, answers, strict=True):
            if isinstance(answer, MaquetteError):
                out.append((http_status(answer), orjson.dumps(error_body(answer))))
                continue
            if self.observe is not None:
                self.observe(call.selector, answer, seconds)
            out.append((200, answer_body(answer)))
        return out


def _validation_error(exc: ValidationError) -> bytes:
    # BentoML's own wording and shape for a body that fails validation.
    detail = exc.errors(include_context=False, include_input=False, include_url=False)
    return orjson.dumps(
        {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": detail}
    )


def _is_json(scope: Any) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";")[0].strip() == b"application/json")
    return True  # BentoML reads a body without a content type as JSON too


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
