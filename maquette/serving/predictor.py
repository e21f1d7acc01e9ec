"""Online predictions: entity keys in, fresh features from Redis, the right model, a logged answer.

`Predictor` is shared by the BentoML service (bentos/service.py) and library mode
(`maquette.load_model`). Per request it resolves the model selector (`NAME`, `NAME:VERSION`,
`NAME@ALIAS`; a bare `NAME` means `NAME@<default alias>`, split by weight when a traffic split
is configured), reads the features through the feature layer's fast path, routes each row to
its partition model (else the parent), logs every prediction to the prediction log before
returning, and scores an optional shadow version that is logged but never returned.

Values that are missing or older than their view's TTL reach the model as missing, exactly as
training saw them (Feast's TTL nulls them in training frames); the response names them.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from feast.types import FeastType

from maquette import registry
from maquette.config import Settings
from maquette.errors import (
    ConfigError,
    DataNotLoaded,
    FeatureNotFound,
    InvalidEntityFrame,
    MaquetteError,
    ModelVersionNotFound,
    StoreUnavailable,
)
from maquette.features.layer import FeatureLayer
from maquette.features.online import PRESENT, OnlineFeatures
from maquette.serving.prediction_log import PredictionLog
from maquette.serving.request_rules import RequestLimits, check_as_of, check_rows, check_size
from maquette.training.model_types import TrainedModel

log = logging.getLogger("maquette.serving.predictor")

# How long a version that failed to load answers with that failure before it is tried again.
MISS_TTL_S = 5.0


@dataclass
class Prediction:
    """One answered row."""

    prediction_id: str
    prediction: float
    model: str
    partition: str
    decision: bool | None = None
    missing_features: list[str] = field(default_factory=list)
    stale_features: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class PredictCall:
    """One request: rows, the model selector, the time freshness is judged at (the client's
    `as_of`) and when the server received it (default: when the batch is answered)."""

    rows: list[dict[str, Any]]
    selector: str | None = None
    as_of: datetime | None = None
    received_at: datetime | None = None


@dataclass(frozen=True)
class ServedVersion:
    """A registered version loaded for serving, with what its requests must carry."""

    tag: str
    name: str
    model: TrainedModel
    feature_service: str
    required: tuple[str, ...]
    timestamp_fields: tuple[str, ...]  # request fields declared as timestamps (UnixTimestamp)
    request_fields: tuple[str, ...] = ()  # sent with each row, not entity keys
    key_types: dict[str, FeastType] = field(default_factory=dict)  # declared entity key types


def served_version(
    layer: FeatureLayer, tag: str, model: TrainedModel, feature_service: str
) -> ServedVersion:
    """A model version ready to serve: what its rows carry, and which fields are times (those
    the feature repo declares `UnixTimestamp`, whatever their names)."""
    plan = layer.read_plan(feature_service)
    name = tag.split(":", 1)[0]
    required = tuple(layer.request_keys(feature_service, model.partition_by))
    request_fields = tuple(plan.request_fields)
    # `labels.time_from: row` matches labels on a row field: logged even if no feature reads it.
    spec = layer.settings.models.get(name)
    labels = spec.labels if spec is not None else None
    if labels is not None and labels.time_from == "row" and labels.time_column not in required:
        required += (labels.time_column,)
        request_fields += (labels.time_column,)
    return ServedVersion(
        tag,
        name,
        model,
        feature_service,
        required,
        plan.time_fields,
        request_fields,
        {k: t for g in plan.groups for k, t in g.key_types.items()},
    )


class Predictor:
    """Routing, features, model and logging for online and library predictions."""

    def __init__(self, settings: Settings, log: bool = True, any_version: bool = False) -> None:
        """`any_version`: NAME:VERSION may name any registered version (library mode, code the
        user runs); off (the service), only versions an alias, a split or a shadow points to."""
        self.settings = settings
        self.layer = FeatureLayer(settings)
        self.log = PredictionLog(settings) if log else None
        self.any_version = any_version
        self.limits = RequestLimits.of(settings)
        self._versions: dict[str, ServedVersion] = {}
        self._misses: dict[str, tuple[float, MaquetteError]] = {}
        self._lock = threading.Lock()
        self._aliases: dict[str, dict[str, str]] = {}
        self._aliases_stamp: float | None = -1.0
        self._aliases_file = str(settings.path(settings.registry.aliases))

    # ---------------------------------------------------------------- which version

    def _alias_table(self) -> dict[str, dict[str, str]]:
        # Re-read only when the file changes: an alias moves without a restart. One stat() per
        # request; the path is resolved once (resolving it was a tenth of a request's time).
        try:
            stamp: float | None = os.stat(self._aliases_file).st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp != self._aliases_stamp:
            self._aliases = registry.alias_table(self.settings)
            self._aliases_stamp = stamp
            if not self.any_version:
                self._forget_unserved()
        return self._aliases

    def served_versions(self, name: str) -> dict[str, str]:
        """The versions of `name` requests may reach: {version: why} (alias, split, shadow)."""
        return self._served(name, self._alias_table())

    def _served(self, name: str, table: dict[str, dict[str, str]]) -> dict[str, str]:
        why: dict[str, str] = {}
        for alias, version in sorted(table.get(name, {}).items()):
            why.setdefault(version, f"@{alias}")
        for version in self.settings.serving.traffic.get(name, {}):
            why.setdefault(version, "traffic split")
        shadow = self.settings.serving.shadow.get(name)
        if shadow:
            why.setdefault(shadow, "shadow")
        return why

    def _forget_unserved(self) -> None:
        # A version no alias, split or shadow points to any more is dropped (requests in flight
        # keep theirs): the loaded set stays as small as what is served.
        with self._lock:
            self._misses.clear()
            for tag in list(self._versions):
                name, _, version = tag.partition(":")
                if version not in self._served(name, self._aliases):
                    del self._versions[tag]

    def resolve(self, selector: str | None) -> str:
        """The NAME:VERSION a request's model selector points at right now."""
        selector = selector or next(iter(self.settings.models), "")
        if not selector:
            raise ModelVersionNotFound(
                "no model named in the request and none declared.",
                "Send model=NAME (or NAME:VERSION, NAME@ALIAS).",
            )
        if ":" in selector:
            name, _, version = selector.partition(":")
            if not self.any_version and version not in self.served_versions(name):
                raise ModelVersionNotFound(
                    f"model {name!r} has no version {version!r} in service: only the versions "
                    "an alias, a traffic split or a shadow points to are served.",
                    f"Served versions of {name}: {self._served_list(name)}. Promote a version "
                    f"to serve it: `maquette models promote {name}:VERSION --alias ALIAS`.",
                )
            return selector
        name, _, alias = selector.partition("@")
        if not alias and name in self.settings.serving.traffic:
            weights = self.settings.serving.traffic[name]
            version = random.choices(list(weights), weights=list(weights.values()))[0]
            return f"{name}:{version}"
        alias = alias or self.settings.serving.default_alias
        table = self._alias_table()
        current = table.get(name, {}).get(alias)
        if current is not None:
            return f"{name}:{current}"
        # Answered from the alias table: an unknown name never scans the model store.
        if name not in table:
            raise ModelVersionNotFound(
                f"no model named {name!r} is served (none of its versions has an alias).",
                f"Served models: {', '.join(sorted(table)) or 'none'}; promote a version with "
                f"`maquette models promote {name}:VERSION --alias {alias}`.",
            )
        known = ", ".join(f"@{a} -> {v}" for a, v in sorted(table[name].items()))
        raise ModelVersionNotFound(
            f"model {name!r} has no alias {alias!r}.",
            f"Aliases of {name}: {known}. Set one with "
            f"`maquette models promote {name}:VERSION --alias {alias}`.",
        )

    def _served_list(self, name: str) -> str:
        served = self.served_versions(name)
        return ", ".join(f"{v} ({why})" for v, why in served.items()) or "none"

    def routes(self, selector: str | None) -> list[str]:
        """Every NAME:VERSION a selector may be routed to now (a split: each of its versions);
        none when it cannot be resolved (the request gets its own error when answered)."""
        name = (selector or next(iter(self.settings.models), "")).partition("@")[0]
        if selector is None or ("@" not in selector and ":" not in selector):
            weights = self.settings.serving.traffic.get(name)
            if weights:
                return [f"{name}:{v}" for v in weights]
        try:
            return [self.resolve(selector)]
        except MaquetteError:
            return []

    def unloaded(self, calls: Sequence[PredictCall]) -> list[str]:
        """Versions the calls route to that are not loaded yet (load them off the event loop)."""
        tags = {t for c in calls for t in self.routes(c.selector)}
        for tag in list(tags):  # the shadow scored beside it
            name = tag.partition(":")[0]
            if shadow := self.settings.serving.shadow.get(name):
                tags.add(f"{name}:{shadow}")
        now = time.monotonic()
        fresh = {t for t, (when, _) in self._misses.items() if now - when < MISS_TTL_S}
        return sorted(t for t in tags if t not in self._versions and t not in fresh)

    def version(self, tag: str) -> ServedVersion:
        """A loaded version (loaded once, on first use; requests in flight keep theirs).

        A version that failed to load is not tried again for MISS_TTL_S seconds (nor after an
        alias moves): requests for it get the same error without scanning the model store.
        """
        served = self._versions.get(tag)
        if served is not None:
            return served
        miss = self._misses.get(tag)
        if miss is not None and time.monotonic() - miss[0] < MISS_TTL_S:
            raise miss[1]
        with self._lock:
            served = self._versions.get(tag)
            if served is None:
                try:
                    served = self._load(tag)
                except MaquetteError as exc:
                    self._misses[tag] = (time.monotonic(), exc)
                    raise
                self._versions[tag] = served
                self._misses.pop(tag, None)
        return served

    def _load(self, tag: str) -> ServedVersion:
        found = registry.resolve(self.settings, tag)
        record = found.record
        model = TrainedModel.load(found.path, record)
        return served_version(self.layer, found.tag, model, record.feature_service)

    def load(self, selector: str) -> ServedVersion:
        return self.version(self.resolve(selector))

    # ---------------------------------------------------------------- predict

    def _clean(self, served: ServedVersion, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return check_rows(
            rows,
            served.required,
            served.key_types,
            served.timestamp_fields,
            self.limits,
            served.tag,
        )

    def predict(
        self, rows: list[dict[str, Any]], selector: str | None = None, as_of: datetime | None = None
    ) -> list[Prediction]:
        """Predictions for rows of entity keys and request fields (logged unless library mode)."""
        (answer,) = self.predict_many([PredictCall(rows, selector, as_of)])
        if isinstance(answer, MaquetteError):
            raise answer
        return answer

    def predict_many(self, calls: Sequence[PredictCall]) -> list[list[Prediction] | MaquetteError]:
        """Answer several requests together: one Redis round trip for all their features and
        one for all their log entries (the HTTP route batches requests that arrive together).

        Each request is answered exactly as alone; one request's bad input is its own error,
        while Redis being down fails them all (StoreUnavailable is raised).
        """
        began = time.perf_counter()
        arrived = datetime.now(UTC)
        out: list[list[Prediction] | MaquetteError] = []
        ready: list[tuple[int, ServedVersion, list[dict[str, Any]], datetime]] = []
        received: dict[int, datetime] = {}
        for call in calls:
            try:
                # Checked first, against the server's clock: as_of becomes the logged request
                # time monitoring cuts its windows by.
                now = check_as_of(call.as_of, call.received_at or arrived, self.limits)
                check_size(call.rows, self.limits)  # before any model is looked up
                served = self.version(self.resolve(call.selector))
                rows = self._clean(served, call.rows)
            except MaquetteError as exc:
                out.append(exc)
                continue
            except Exception as exc:  # one request's odd input must not fail its batch
                out.append(_unusable(exc))
                continue
            received[len(out)] = call.received_at or arrived
            ready.append((len(out), served, rows, now))
            out.append([])
        found = self.layer.online_features_many(
            [(rows, served.feature_service, now) for _, served, rows, now in ready]
        )
        # Requests for the same version are scored together: rows are scored independently,
        # so one model call for all of them gives each request exactly its own answers.
        by_version: dict[str, list[int]] = {}
        for k, ((_, served, _, _), features) in enumerate(zip(ready, found, strict=True)):
            if isinstance(features, MaquetteError):
                out[ready[k][0]] = features
            else:
                by_version.setdefault(served.tag, []).append(k)
        entries: list[dict[str, Any]] = []
        for members in by_version.values():
            served = ready[members[0]][1]
            rows = [r for k in members for r in ready[k][2]]
            values = [v for k in members for v in found[k].values]  # type: ignore[union-attr]
            statuses = [s for k in members for s in found[k].statuses]  # type: ignore[union-attr]
            answers = _answer(served, _model_inputs(served, rows, values, statuses), statuses)
            start = 0
            for k in members:
                slot, _, request_rows, now = ready[k]
                mine = answers[start : start + len(request_rows)]
                start += len(request_rows)
                out[slot] = mine
                if self.log and self.log.sampled():
                    features = found[k]
                    assert isinstance(features, OnlineFeatures)
                    entries += self._log_entries(
                        served, request_rows, features, mine, (now, received[slot]), began
                    )
        if entries:
            assert self.log is not None
            self.log.append(entries)
        return out

    def _log_entries(
        self,
        served: ServedVersion,
        rows: list[dict[str, Any]],
        features: OnlineFeatures,
        answers: list[Prediction],
        times: tuple[datetime, datetime],
        began: float,
    ) -> list[dict[str, Any]]:
        latency = (time.perf_counter() - began) * 1000
        entries = [
            _entry(served, rows[i], features.values[i], answers[i], times, latency, False)
            for i in range(len(rows))
        ]
        shadow = self.settings.serving.shadow.get(served.name)
        if shadow and f"{served.name}:{shadow}" != served.tag:
            try:
                twin = self.version(f"{served.name}:{shadow}")
                twin_inputs = _model_inputs(twin, rows, features.values, features.statuses)
                twin_answers = _answer(twin, twin_inputs, features.statuses)
            except Exception:  # a shadow is never returned, so it never fails a request
                log.exception(
                    "shadow %s:%s could not score; live answers unaffected", served.name, shadow
                )
                return entries
            for i, a in enumerate(twin_answers):
                entries.append(_entry(twin, rows[i], features.values[i], a, times, latency, True))
        return entries

    def ready(self) -> bool:
        """Models load and Redis answers."""
        try:
            for name in self.settings.models:
                self.load(name)
            self.layer.redis.ping()
        except Exception:  # readiness reports, it does not raise
            return False
        return True


def _unusable(exc: Exception) -> InvalidEntityFrame:
    return InvalidEntityFrame(
        f"the request's values could not be used: {type(exc).__name__}: {exc}",
        "Check the types and ranges of the entity keys and request fields.",
    )


def _model_inputs(
    served: ServedVersion,
    rows: list[dict[str, Any]],
    values: list[dict[str, Any]],
    statuses: list[dict[str, str]],
) -> tuple[list[dict[str, Any]], list[str]]:
    # Stale or missing values reach the model as missing, as in training (Feast's TTL).
    records = [
        {f: (v[f] if s.get(f) == PRESENT else None) for f in served.model.features}
        for v, s in zip(values, statuses, strict=True)
    ]
    key = served.model.partition_by
    return records, [str(r[key]) for r in rows] if key else [""] * len(rows)


def _answer(
    served: ServedVersion,
    inputs: tuple[list[dict[str, Any]], list[str]],
    statuses: list[dict[str, str]],
) -> list[Prediction]:
    predictions, used = served.model.predict_records(*inputs)
    out = []
    for i, value in enumerate(np.asarray(predictions, dtype=float)):
        status = statuses[i]
        decision = None
        if served.model.task == "binary" and served.model.threshold is not None:
            decision = bool(value >= served.model.threshold)
        out.append(
            Prediction(
                uuid.uuid4().hex,
                float(value),
                served.tag,
                used[i],
                decision,
                [f for f in served.model.features if status.get(f) == "NOT_FOUND"],
                [f for f in served.model.features if status.get(f) == "OUTSIDE_MAX_AGE"],
            )
        )
    return out


def _entry(
    served: ServedVersion,
    row: dict[str, Any],
    values: dict[str, Any],
    answer: Prediction,
    times: tuple[datetime, datetime],
    latency_ms: float,
    shadow: bool,
) -> dict[str, Any]:
    # `row` holds only the declared keys and request fields (request_rules.check_rows), each
    # value bounded: what a client sends beyond them never reaches the log.
    keys = {k: row[k] for k in served.required if k not in served.request_fields}
    as_of, received_at = times
    return {
        "prediction_id": answer.prediction_id,
        "logged_at": datetime.now(UTC).isoformat(),
        "request_time": as_of.isoformat(),
        "received_at": received_at.isoformat(),
        "model": served.name,
        "version": served.tag.split(":", 1)[1],
        "partition": answer.partition,
        "shadow": shadow,
        "prediction": answer.prediction,
        "decision": answer.decision,
        "latency_ms": latency_ms,
        "entity": keys,
        "request": {k: row[k] for k in served.request_fields if k in row},
        "features": {f: values.get(f) for f in served.model.features},
        "missing": answer.missing_features,
        "stale": answer.stale_features,
    }


# Where each error lands over HTTP: decided here, once (first match wins).
HTTP_STATUS: list[tuple[type[Exception], int]] = [
    (InvalidEntityFrame, 422),
    (ModelVersionNotFound, 404),
    (FeatureNotFound, 404),
    (StoreUnavailable, 503),
    (DataNotLoaded, 503),
    (ConfigError, 500),
]


def http_status(error: Exception) -> int:
    return next((status for kind, status in HTTP_STATUS if isinstance(error, kind)), 500)
