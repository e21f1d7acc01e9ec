"""The service's OpenAPI document (/docs.json), made to tell the truth about POST /predict.

BentoML derives the document from the API method's signature and lists its own error answers
(400/404/500, `detail` a string). Maquette answers more (401 without the key, 413 for a body
over the cap, 415 for a non-JSON body, 422 for a row, an `as_of` or a limit it cannot use, 503
when Redis is down, 504 past the timeout), always with one error body, and bounds what a
request may carry. `predict_document` rewrites BentoML's document so that each of those is in
it; `OpenAPIRoute` answers GET /docs.json with it. A Schemathesis run against a real service
(tests/test_openapi_contract.py) holds the two to each other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

from maquette.platform_settings import ServingSettings

ERROR = "MaquetteError"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": ERROR,
    "description": "Every error answer: what was wrong, what to do, and for a body that does "
    "not match the schema (400) pydantic's list of problems.",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong."},
        "remedy": {"type": "string", "description": "What to do about it."},
        "detail": {
            "type": "array",
            "description": "400 only: one entry per problem (type, loc, msg).",
            "items": {"type": "object"},
        },
    },
}
STATUSES = {
    "400": "The body is not JSON or does not match this schema.",
    "401": "Missing or wrong `Authorization: Bearer <key>` (when serving.api_key is set).",
    "404": "No served model or version matches the selector.",
    "413": "The body is larger than serving.max_body_bytes.",
    "415": "The body is not JSON (a form or a pickle).",
    "422": "A row, a key, `as_of` or a limit the request breaks (the message names it).",
    "500": "An unexpected failure (details in the server log).",
    "503": "The online store or the prediction log is unavailable; try again.",
    "504": "Not answered within serving.timeout_s.",
}
# The infrastructure routes this service has and what they may answer.
PROBES = {
    "/healthz": {"200": "The process is alive."},
    "/readyz": {"200": "Models loaded and Redis answers.", "503": "Not ready yet."},
    "/metrics": {"200": "Prometheus metrics."},
}


def request_schema(serving: ServingSettings) -> dict[str, Any]:
    """The JSON schema of POST /predict's body, with the service's limits in it."""
    value = {
        "anyOf": [
            {"type": "string", "maxLength": serving.max_string_chars},
            {"type": "number"},
            {"type": "boolean"},
        ],
        "nullable": True,
    }
    row = {
        "type": "object",
        "description": "Entity keys and request fields; other fields are ignored.",
        "maxProperties": serving.max_fields_per_row,
        "additionalProperties": value,
    }
    return {
        "type": "object",
        "title": "PredictRequest",
        "required": ["rows"],
        "properties": {
            "rows": {
                "description": "One row or a list of 1..serving.max_rows rows.",
                "anyOf": [
                    {
                        "type": "array",
                        "items": row,
                        "minItems": 1,
                        "maxItems": serving.max_rows,
                    },
                    row,
                ],
            },
            "model": {
                "type": "string",
                "nullable": True,
                "maxLength": MAX_SELECTOR_CHARS,
                "description": "NAME, NAME:VERSION or NAME@ALIAS (default: the first model at "
                "serving.default_alias). NAME:VERSION must be a version an alias, a traffic "
                "split or a shadow points to.",
            },
            "as_of": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "Judge feature freshness as of this time: ISO 8601 with a time "
                "zone, within serving.as_of_max_past before and serving.as_of_max_future after "
                "the server's clock (default: when the request arrives).",
            },
        },
    }


MAX_SELECTOR_CHARS = 256


def predict_document(spec: dict[str, Any], serving: ServingSettings, route: str) -> dict[str, Any]:
    """BentoML's document with POST `route`'s body, limits and answers as Maquette serves them."""
    doc = copy.deepcopy(spec)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR] = ERROR_SCHEMA
    ref = {"$ref": f"#/components/schemas/{ERROR}"}
    guarded = serving.api_key is not None
    operation = doc["paths"][route]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": request_schema(serving)}},
    }
    ok = {k: v for k, v in operation["responses"].items() if str(k) == "200"}  # int or str key
    answers = {"200": next(iter(ok.values()))}
    for status, description in STATUSES.items():
        if status == "401" and not guarded:
            continue
        answers[status] = {
            "description": description,
            "content": {"application/json": {"schema": ref}},
        }
    operation["responses"] = answers
    paths = {p: v for p, v in doc["paths"].items() if p not in _infra(doc)}
    for path, statuses in PROBES.items():
        paths[path] = {
            "get": {
                "tags": ["Infrastructure"],
                "responses": {s: {"description": d} for s, d in statuses.items()},
            }
        }
    doc["paths"] = paths
    return doc


def _infra(doc: dict[str, Any]) -> set[str]:
    # BentoML lists /livez too, which this service does not have (its liveness is /healthz).
    return {
        path
        for path, item in doc["paths"].items()
        if "Infrastructure" in item.get("get", {}).get("tags", [])
    }


class OpenAPIRoute:
    """Pure ASGI middleware answering GET `path` with the document `make` builds (once)."""

    def __init__(
        self, app: Any, make: Callable[[], dict[str, Any]], path: str = "/docs.json"
    ) -> None:
        self.app, self.make, self.path = app, make, path
        self._body: bytes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._body is None:
            self._body = orjson.dumps(self.make())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._body})
