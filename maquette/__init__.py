"""Maquette: Uber's Michelangelo workflow on one machine (Feast, Prefect, BentoML, Evidently).

Contents, by platform concept:
    config          Settings, load_settings: maquette.yaml plus MAQUETTE_* overrides
    redis_server    ensure_redis: the online store's Redis, embedded unless configured
    datasets        load_dataset: sources and point-in-time feature tables as Parquet
    features        FeatureLayer: feast apply, materialize, training_frame, online_features
    serving         load_model (library mode), Predictor behind the BentoML service
    predictions     the prediction log: Redis Stream -> Parquet
    stream          the speed layer: publish, replay, StreamProcessor, backfill
    labels          late labels joined with logged predictions (scored predictions)
    monitoring      run: one monitoring pass (live metrics, reports, skew, freshness, alerts)
    drift           Evidently drift and quality reports per window, workspace dashboard
    skew            training/serving skew: served vs recomputed point-in-time features
    alerts          thresholds -> recorded alerts, webhook, retraining
    replay          replay history as live traffic, the online store following the clock
    platform        up / status / down of Redis, Prefect, deployments, service, stream
    batch           predict_batch: point-in-time features, a version, Parquet out
    lifecycle       run_demo: the main job, every stage timed, December replayed
    errors          MaquetteError and its subclasses, each with a remedy
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "ConfigError",
    "DataNotLoaded",
    "FeatureLayer",
    "FeatureNotFound",
    "InvalidEntityFrame",
    "LibraryModel",
    "MaquetteError",
    "MaterializeResult",
    "OnlineFeatures",
    "Settings",
    "StoreUnavailable",
    "ensure_redis",
    "load_dataset",
    "load_model",
    "load_settings",
    "run_demo",
]

# Importing Feast takes seconds, so names load on first use (the CLI's --help stays fast).
_HOMES = {
    "ConfigError": "errors",
    "DataNotLoaded": "errors",
    "FeatureNotFound": "errors",
    "InvalidEntityFrame": "errors",
    "MaquetteError": "errors",
    "StoreUnavailable": "errors",
    "FeatureLayer": "features.layer",
    "MaterializeResult": "features.layer",
    "OnlineFeatures": "features.layer",
    "Settings": "config",
    "load_settings": "config",
    "ensure_redis": "data.redis_server",
    "load_dataset": "data.sources",
    "run_demo": "platform.demo",
    "LibraryModel": "serving.predictor",
    "load_model": "serving.predictor",
}

if TYPE_CHECKING:
    from maquette.config import Settings, load_settings
    from maquette.data.redis_server import ensure_redis
    from maquette.data.sources import load_dataset
    from maquette.errors import (
        ConfigError,
        DataNotLoaded,
        FeatureNotFound,
        InvalidEntityFrame,
        MaquetteError,
        StoreUnavailable,
    )
    from maquette.features.layer import FeatureLayer, MaterializeResult, OnlineFeatures
    from maquette.platform.demo import run_demo
    from maquette.serving.predictor import LibraryModel, load_model


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'maquette' has no attribute {name!r}")
    return getattr(import_module(f"maquette.{_HOMES[name]}"), name)
