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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import redis

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
from maquette.features.online import OnlineFeatures
from maquette.features.redis_cluster import CLUSTER_DOWN
from maquette.serving import scoring
from maquette.serving.prediction_log import PredictionLog
from maquette.serving.request_rules import RequestLimits, check_as_of, check_rows, check_size
from maquette.serving.scoring import (
    Answers,
    Prediction,
    ServedVersion,
    log_entry,
    served_version,
)
from maquette.training.model_types import TrainedModel

log = logging.getLogger("maquette.serving.predictor")

# How long a version that failed to load answers with that failure before it is tried again.
MISS_TTL_S = 5.0
# How often a service whose aliases are in Redis asks whether they moved (a move reaches every
# replica within this, plus the request that notices it).
ALIAS_POLL_S = 0.25


@dataclass
class PredictCall:
    """One request: rows, the model selector, the time freshness is judged at (the client's
    `as_of`) and when the server received it (default: when the batch is answered)."""

    rows: list[dict[str, Any]]
    selector: str | None = None
    as_of: datetime | None = None
    received_at: datetime | None = None


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
        self._routing: dict[str, dict[str, Any]] = {}  # `maquette models route`, per model
        self._aliases_stamp: float | None = -1.0
        self._aliases_file = str(settings.path(settings.registry.aliases))
        self._aliases_in_redis = settings.registry.alias_store == "redis"
        self._aliases_checked = -ALIAS_POLL_S

    # ---------------------------------------------------------------- which version

    def _alias_table(self) -> dict[str, dict[str, str]]:
        # Re-read only when the table changes: an alias moves without a restart. In a file:
        # one stat() per request (the path resolved once: resolving it was a tenth of a
        # request's time). In Redis (shared by replicas): its serial, at most every
        # ALIAS_POLL_S; Redis not answering keeps the table this process has.
        stamp: float | None
        if self._aliases_in_redis:
            now = time.monotonic()
            if now - self._aliases_checked < ALIAS_POLL_S:
                return self._aliases
            self._aliases_checked = now
            try:
                stamp = registry.alias_stamp(self.settings)
            except (redis.RedisError, *CLUSTER_DOWN):
                log.warning("the alias table's serial could not be read; serving the last one")
                return self._aliases
        else:
            try:
                stamp = os.stat(self._aliases_file).st_mtime_ns
            except FileNotFoundError:
                stamp = None
        if stamp != self._aliases_stamp:
            self._aliases = registry.alias_table(self.settings)
            self._routing = registry.routing_table(self.settings)
            self._aliases_stamp = stamp
            if not self.any_version:
                self._forget_unserved()
        return self._aliases

    def traffic(self, name: str) -> dict[str, float]:
        """NAME's traffic split: what `maquette models route` set, else serving.traffic."""
        self._alias_table()  # the routing is re-read with the aliases
        routed = self._routing.get(name, {})
        if "traffic" in routed:
            return cast(dict[str, float], routed["traffic"])
        return self.settings.serving.traffic.get(name, {})

    def shadow(self, name: str) -> str | None:
        """NAME's shadow version: what `maquette models route` set, else serving.shadow."""
        self._alias_table()
        routed = self._routing.get(name, {})
        if "shadow" in routed:
            return cast("str | None", routed["shadow"])
        return self.settings.serving.shadow.get(name)

    def served_versions(self, name: str) -> dict[str, str]:
        """The versions of `name` requests may reach: {version: why} (alias, split, shadow)."""
        return self._served(name, self._alias_table())

    def _served(self, name: str, table: dict[str, dict[str, str]]) -> dict[str, str]:
        why: dict[str, str] = {}
        for alias, version in sorted(table.get(name, {}).items()):
            why.setdefault(version, f"@{alias}")
        routed = self._routing.get(name, {})
        traffic = routed.get("traffic", self.settings.serving.traffic.get(name, {}))
        for version in traffic:
            why.setdefault(version, "traffic split")
        shadow = routed.get("shadow", self.settings.serving.shadow.get(name))
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
        weights = self.traffic(name) if not alias else {}
        if weights:
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
            weights = self.traffic(name)
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
            if shadow := self.shadow(name):
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
        return answer.rows()

    def predict_many(self, calls: Sequence[PredictCall]) -> list[Answers | MaquetteError]:
        """Answer several requests together: one Redis round trip for all their features, one
        model call per version and one for all their log entries (the HTTP route batches
        requests that arrive together).

        Each request is answered exactly as alone; one request's bad input is its own error,
        while Redis being down fails them all (StoreUnavailable is raised).
        """
        began = time.perf_counter()
        arrived = datetime.now(UTC)
        out: list[Answers | MaquetteError | None] = []
        ready: list[_Ready] = []
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
            ready.append(_Ready(len(out), served, rows, (now, call.received_at or arrived)))
            out.append(None)
        found = self.layer.online_features_many(
            [(r.rows, r.served.feature_service, r.times[0]) for r in ready]
        )
        # Requests for the same version are scored together: rows are scored independently,
        # so one model call for all of them gives each request exactly its own answers.
        by_version: dict[str, list[_Ready]] = {}
        for request, features in zip(ready, found, strict=True):
            if isinstance(features, MaquetteError):
                out[request.slot] = features
            else:
                request.features = features
                by_version.setdefault(request.served.tag, []).append(request)
        entries: list[dict[str, Any]] = []
        logging = self.log is not None
        for members in by_version.values():
            for request, answered in zip(members, _score(members[0].served, members), strict=True):
                out[request.slot] = answered
            if logging:
                entries += self._log_entries(members, out, began)
        if entries:
            assert self.log is not None
            self.log.append(entries)
        return [a if a is not None else _unusable(RuntimeError("unanswered")) for a in out]

    def _log_entries(
        self, members: list[_Ready], out: list[Answers | MaquetteError | None], began: float
    ) -> list[dict[str, Any]]:
        assert self.log is not None
        served = members[0].served
        latency = (time.perf_counter() - began) * 1000
        sampled = [r for r in members if self.log.sampled()]
        entries = []
        for request in sampled:
            answered = out[request.slot]
            assert isinstance(answered, Answers) and request.features is not None
            entries.append(
                log_entry(
                    served, request.rows, request.features, answered, request.times, latency, False
                )
            )
        shadow = self.shadow(served.name)
        if not sampled or not shadow or f"{served.name}:{shadow}" == served.tag:
            return entries
        try:
            twin = self.version(f"{served.name}:{shadow}")
            twin_answers = _score(twin, sampled)
        except Exception:  # a shadow is never returned, so it never fails a request
            log.exception(
                "shadow %s:%s could not score; live answers unaffected", served.name, shadow
            )
            return entries
        for request, answered in zip(sampled, twin_answers, strict=True):
            assert request.features is not None
            entries.append(
                log_entry(
                    twin, request.rows, request.features, answered, request.times, latency, True
                )
            )
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


@dataclass
class _Ready:
    """A request that passed its checks: where its answer goes, its version, rows and times
    (as_of, received), then its features once read."""

    slot: int
    served: ServedVersion
    rows: list[dict[str, Any]]
    times: tuple[datetime, datetime]
    features: OnlineFeatures | None = None


def _score(served: ServedVersion, requests: list[_Ready]) -> list[Answers]:
    """Each request's answers from `served`, in one model call for all of them."""
    found = [r.features for r in requests if r.features is not None]
    flagged = [scoring.flags(served, f) for f in found]
    inputs = [scoring.matrix(served, f, g) for f, g in zip(found, flagged, strict=True)]
    x = inputs[0] if len(inputs) == 1 else np.vstack(inputs)
    partitions = [p for r in requests for p in scoring.partitions_of(served, r.rows)]
    predicted, used = served.model.predict_matrix(x, partitions)
    out, start = [], 0
    for features, flags in zip(found, flagged, strict=True):
        end = start + features.rows
        out.append(scoring.answers(served, predicted[start:end], used[start:end], flags))
        start = end
    return out


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
