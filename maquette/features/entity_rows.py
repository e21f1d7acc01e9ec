"""Entity rows typed from text (`maquette features get KEY=VALUE ...`), by the feature repo.

A value becomes a UTC datetime when its field is declared a timestamp in the repo (a request
field typed `UnixTimestamp`) or is named like one (`..._time`, `...timestamp`); other values
stay text, which is how Feast keys string entities.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from maquette.errors import InvalidEntityFrame
from maquette.features.layer import FeatureLayer
from maquette.features.read_plan import time_request_fields


def time_fields(layer: FeatureLayer) -> set[str]:
    """Request fields the feature repo declares as timestamps (none before `feast apply`)."""
    if not layer.settings.registry_path.is_file():
        return set()  # reading then says the registry is missing, with its remedy
    odfvs = layer.store.list_on_demand_feature_views(allow_cache=True)
    return {name for odfv in odfvs for name in time_request_fields(odfv)}


def entity_row(layer: FeatureLayer, values: Mapping[str, str]) -> dict[str, Any]:
    """One entity row for `FeatureLayer.online_features`, from field names and text values."""
    timed = time_fields(layer)
    row: dict[str, Any] = {}
    for key, text in values.items():
        is_time = key in timed or key.endswith(("_time", "timestamp"))
        row[key] = _utc_time(key, text) if is_time else text
    return row


def _utc_time(key: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEntityFrame(
            f"{key}={text!r} is not an ISO date/time.", f"Write it like {key}=2013-12-01T00:00."
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
