"""Maquette: Uber's Michelangelo workflow on one machine (Feast, Prefect, BentoML, Evidently).

The public API is the names in `__all__` (loaded on first use). The library is a folder per
workflow step, lowest layer first (a module imports only its own layer or lower ones):

    errors          MaquetteError and its subclasses, each with a remedy and an exit code
    config          Settings, load_settings: maquette.yaml plus MAQUETTE_* overrides
    model_spec      a model's spec: label, split, search space, labels, alert thresholds
    version_record  VersionRecord: the typed record.json of a model version
    data            sources -> Parquet offline store, the DuckDB connection, the embedded Redis
    features        FeatureLayer: feast apply, materialize, online reads, training frames
    stream          the speed layer: declared aggregations, events, backfill, the processor
    registry        versions in BentoML's model store, aliases, compare
    training        prepare, search, partitions, evaluate, version records, the training report
    serving         Predictor, the HTTP fast path, prediction log, batch, library mode, bento
    monitoring      labels, live metrics, drift, skew, freshness, alerts, the monitoring index
    platform        up / status / down, flows and deployments, the demo lifecycle, replay
    bench           stock vs Maquette vs floor, in one run
    cli             `maquette ...`: parse, call one function, render
    examples        the demo dataset, found through settings, never imported by the library
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
    "MaterializeResult": "features.materialize",
    "OnlineFeatures": "features.online",
    "Settings": "config",
    "load_settings": "config",
    "ensure_redis": "data.redis_server",
    "load_dataset": "stream.backfill",
    "run_demo": "platform.demo",
    "LibraryModel": "serving.library",
    "load_model": "serving.library",
}

if TYPE_CHECKING:
    from maquette.config import Settings, load_settings
    from maquette.data.redis_server import ensure_redis
    from maquette.errors import (
        ConfigError,
        DataNotLoaded,
        FeatureNotFound,
        InvalidEntityFrame,
        MaquetteError,
        StoreUnavailable,
    )
    from maquette.features.layer import FeatureLayer
    from maquette.features.materialize import MaterializeResult
    from maquette.features.online import OnlineFeatures
    from maquette.platform.demo import run_demo
    from maquette.serving.library import LibraryModel, load_model
    from maquette.stream.backfill import load_dataset


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'maquette' has no attribute {name!r}")
    return getattr(import_module(f"maquette.{_HOMES[name]}"), name)
