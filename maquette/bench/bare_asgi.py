"""Benchmark only: the floor, the same model behind a bare Starlette endpoint, no feature fetch."""

from __future__ import annotations

import json

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maquette import registry
from maquette.config import load_settings
from maquette.training.pipeline import TrainedModel

SETTINGS = load_settings()
VERSION = registry.resolve(SETTINGS, "flight_delay@production")
MODEL = TrainedModel.load(VERSION.path, VERSION.record)
FEATURES = np.zeros((1, len(MODEL.features)))


async def predict(request: Request) -> Response:
    body = json.loads(await request.body())
    rows = body["rows"]
    x = np.repeat(FEATURES, len(rows), axis=0)
    out = MODEL.learner.predict(MODEL.parent, x)
    return Response(json.dumps({"predictions": out.tolist()}), media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
