"""Benchmark only: the floor, the same model behind a bare Starlette endpoint, no feature fetch.

Served by `maquette bench serving` as `maquette.bench.bare_asgi:app` (uvicorn), for the project
in MAQUETTE_PROJECT_DIR, with the model the Maquette service answers a request naming none with.
"""

from __future__ import annotations

import json

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maquette import registry
from maquette.bench.harness import default_model
from maquette.config import load_settings
from maquette.training.model_types import TrainedModel

SETTINGS = load_settings()
VERSION = registry.resolve(SETTINGS, f"{default_model(SETTINGS)}@{SETTINGS.serving.default_alias}")
MODEL = TrainedModel.load(VERSION.path, VERSION.record)
FEATURES = np.zeros((1, len(MODEL.features)))


async def predict(request: Request) -> Response:
    body = json.loads(await request.body())
    rows = body["rows"]
    x = np.repeat(FEATURES, len(rows), axis=0)
    out = MODEL.learner.predict(MODEL.parent, x)
    return Response(json.dumps({"predictions": out.tolist()}), media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
