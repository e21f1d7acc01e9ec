"""The feature layer: Feast definitions applied, materialized, and read for training and serving.

`FeatureLayer(settings)` holds one in-process Feast `FeatureStore` (importing Feast costs ~4 s,
so never shell out to its CLI on a hot path) and the fast paths around it:

- `materialize(start, end)` writes Feast's Redis layout in bulk (see `materialize`);
- `training_frame(entities, service)` joins point-in-time with DuckDB ASOF joins and returns the
  same values as `FeatureStore.get_historical_features`, TTL included (see `training_frame`);
- `online_features(rows, service)` reads one pipelined HMGET per entity key and flags values
  older than their view's TTL, which Feast's own online read does not do (see `online`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import redis
from feast import FeatureService, FeatureStore, FeatureView, OnDemandFeatureView, RepoConfig

from maquette.config import Settings
from maquette.data.column_names import refuse_view_case_mismatches, write_declared_columns
from maquette.data.redis_server import unreachable
from maquette.errors import DataNotLoaded, FeatureNotFound, InvalidEntityFrame
from maquette.features.materialize import (
    MaterializationAlongClock,
    MaterializeResult,
    Progress,
    aware_utc,
    materialize_views,
    materialize_views_since_last,
)
from maquette.features.online import HashReads, OnlineFeatures, read_online
from maquette.features.online_store import feast_online_store
from maquette.features.read_plan import Features, ReadPlan, SelectedViews, read_plan_of
from maquette.features.redis_cluster import CLUSTER_DOWN, is_cluster, shared_client
from maquette.features.training_frame import point_in_time_frame

# One online request: entity rows, features (None: the configured service), as-of time.
OnlineRequest = tuple[Sequence[dict[str, Any]], Features | None, datetime | None]


def repo_config(settings: Settings) -> RepoConfig:
    """Feast's configuration built from Maquette's settings (feature_store.yaml mirrors it)."""
    return RepoConfig(
        project=settings.feast.project,
        provider="local",
        registry={"registry_type": "file", "path": str(settings.registry_path)},
        online_store=feast_online_store(settings),
        offline_store={"type": "duckdb"},
        entity_key_serialization_version=3,
        repo_path=str(settings.feature_repo),
    )


def _declared_columns(repo: Path) -> dict[Path, list[tuple[str, str]]]:
    """(view, column) pairs each file-backed view of the repo needs, by its table's path."""
    # Lazy: Feast's repo parsing is only needed by `apply`.
    from feast.feature_view import DUMMY_ENTITY_ID
    from feast.repo_operations import parse_repo

    os.chdir(repo)  # Feast names the repo's modules relative to the working directory
    contents = parse_repo(repo)
    join_keys = {e.name: e.join_key for e in contents.entities}
    declared: dict[Path, list[tuple[str, str]]] = {}
    for view in [*contents.feature_views, *contents.stream_feature_views]:
        source = view.batch_source
        path = getattr(source, "path", None)
        if source is None or not isinstance(path, str) or "://" in path:
            continue  # only local files can be checked before they are read
        # Feast renames the table's columns through field_mapping: check the table's own names.
        to_table = {feast_name: column for column, feast_name in source.field_mapping.items()}
        names = [f.name for f in view.features] + [f.name for f in view.entity_columns]
        names += [join_keys[e] for e in view.entities if e in join_keys]
        names += [source.timestamp_field, source.created_timestamp_column]
        table = (repo / path).resolve()  # an absolute path stays itself
        pairs = declared.setdefault(table, [])
        # A view without entities gets a placeholder key that no table holds.
        for name in dict.fromkeys(n for n in names if n and n != DUMMY_ENTITY_ID):
            pairs.append((view.name, to_table.get(name, name)))
    return declared


class FeatureLayer:
    """Feast plus Maquette's fast paths, for one project's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: FeatureStore | None = None
        self._redis: redis.Redis[bytes] | None = None
        self._reads: HashReads | None = None
        self._plans: dict[str, ReadPlan] = {}

    # ------------------------------------------------------------------ Feast objects

    @property
    def store(self) -> FeatureStore:
        """The in-process Feast store, built on first use."""
        if self._store is None:
            self._repo_importable()
            self._store = FeatureStore(config=repo_config(self.settings))
        return self._store

    def _repo_importable(self) -> None:
        # Feast imports the repo's modules by bare name (as its CLI does from inside the
        # folder). Another project's repo imported earlier in this process would answer under
        # the same names, with its own Parquet paths: forget those modules, put ours first.
        folder = self.settings.feature_repo.resolve()
        for stem in (p.stem for p in folder.glob("*.py")):
            loaded = sys.modules.get(stem)
            loaded_from = getattr(loaded, "__file__", None)
            if loaded is not None and (
                loaded_from is None or Path(loaded_from).resolve().parent != folder
            ):
                del sys.modules[stem]
        repo = str(folder)
        if repo in sys.path:
            sys.path.remove(repo)
        sys.path.insert(0, repo)

    def apply(self) -> list[str]:
        """`feast apply` in-process; returns the names of the objects now registered."""
        # Lazy: Feast's repo operations are only needed here, and cost start-up time elsewhere.
        from feast.repo_operations import apply_total

        repo = self.settings.feature_repo
        if not (repo / "feature_store.yaml").is_file():
            raise DataNotLoaded(
                f"no Feast feature repository at {repo}.",
                "Set paths.feature_repo in maquette.yaml.",
            )
        self.settings.registry_path.parent.mkdir(parents=True, exist_ok=True)
        self._repo_importable()
        cwd = os.getcwd()
        with contextlib.redirect_stdout(sys.stderr):
            try:
                # Checked before Feast registers anything: a view spelling a column otherwise
                # than its table would apply, then fail much later as a KeyError.
                declared = _declared_columns(repo.resolve())
                refuse_view_case_mismatches(declared)
                apply_total(repo_config(self.settings), repo, skip_source_validation=False)
            finally:
                os.chdir(cwd)
        write_declared_columns(self.settings, declared)
        self._store, self._plans = None, {}
        return sorted(fv.name for fv in self.feature_views()) + sorted(
            s.name for s in self.store.list_feature_services()
        )

    def feature_views(self) -> list[FeatureView]:
        """Every batch feature view in the registry; refused if nothing was applied yet."""
        if not self.settings.registry_path.is_file():
            raise DataNotLoaded(
                f"the Feast registry {self.settings.registry_path} does not exist.",
                "Run `maquette features apply` (or `feast apply` in feature_repo/).",
            )
        return list(self.store.list_feature_views(allow_cache=True))

    def feature_service(self, name: str) -> FeatureService:
        """The registered feature service `name`; an unknown name lists the known ones."""
        services = {
            s.name: s
            for s in self.store.registry.list_feature_services(
                self.settings.feast.project, allow_cache=True
            )
        }
        if name not in services:
            raise FeatureNotFound(
                f"unknown feature service {name!r}.",
                f"Known feature services: {', '.join(sorted(services)) or 'none'}.",
            )
        return services[name]

    def views_for(self, features: Features) -> SelectedViews:
        """(view, feature names) pairs for a feature service name or "view:feature" refs."""
        if isinstance(features, str):
            return [
                (self.view(p.name), tuple(f.name for f in p.features))
                for p in self.feature_service(features).feature_view_projections
            ]
        chosen: dict[str, list[str]] = {}
        for ref in features:
            view_name, _, feature = ref.partition(":")
            view = self.view(view_name)
            known = [f.name for f in view.features]
            if feature not in known:
                raise FeatureNotFound(
                    f"feature view {view_name!r} has no feature {feature!r}.",
                    f"Its features: {', '.join(known)}.",
                )
            chosen.setdefault(view_name, []).append(feature)
        return [(self.view(v), tuple(fs)) for v, fs in chosen.items()]

    def view(self, name: str) -> FeatureView | OnDemandFeatureView:
        """The batch or on-demand feature view `name`; an unknown name lists the known ones."""
        views: dict[str, FeatureView | OnDemandFeatureView] = {
            v.name: v for v in self.feature_views()
        }
        views.update({v.name: v for v in self.store.list_on_demand_feature_views(allow_cache=True)})
        if name not in views:
            raise FeatureNotFound(
                f"unknown feature view {name!r}.",
                f"Known feature views: {', '.join(sorted(views))}.",
            )
        return views[name]

    def read_plan(self, features: Features) -> ReadPlan:
        """The read plan of a feature service or refs (worked out once, then cached)."""
        cache_key = features if isinstance(features, str) else "\x00".join(features)
        if cache_key not in self._plans:
            self._plans[cache_key] = read_plan_of(self.views_for(features))
        return self._plans[cache_key]

    def request_keys(self, features: Features, partition_by: str | None = None) -> list[str]:
        """The columns a prediction request carries: join keys, partition key, request fields."""
        return self.read_plan(features).request_keys(partition_by)

    # ------------------------------------------------------------------ offline -> online

    def materialize(
        self,
        start: datetime,
        end: datetime,
        views: Sequence[str] | None = None,
        progress: Progress | None = None,
        explain: bool = False,
    ) -> MaterializeResult:
        """Write the newest row per entity in [start, end] of each view into Redis (Feast layout);
        `explain`: the result's notes say why a view got nothing (costs a scan per view)."""
        start, end = aware_utc(start, "start"), aware_utc(end, "end")
        chosen = [self.view(v) for v in views] if views else self.feature_views()
        return materialize_views(self.settings, self.store, chosen, start, end, progress, explain)

    def materialize_incremental(
        self,
        end: datetime | None = None,
        progress: Progress | None = None,
        views: Sequence[str] | None = None,
        explain: bool = False,
    ) -> MaterializeResult:
        """Each view (default: all) from where its last materialization ended up to `end`."""
        end = aware_utc(end or datetime.now(UTC), "end")
        chosen = [v for v in self.feature_views() if views is None or v.name in views]
        return materialize_views_since_last(
            self.settings, self.store, chosen, end, progress, explain
        )

    def materialization_along_clock(
        self, views: Sequence[str] | None = None, until: datetime | None = None
    ) -> MaterializationAlongClock:
        """Incremental runs of `views` (default: all) along a clock moving up to `until`,
        recorded in Feast's registry once at the end:
        `with layer.materialization_along_clock(until=end) as m: m.advance(t)`."""
        chosen = [v for v in self.feature_views() if views is None or v.name in views]
        return MaterializationAlongClock(self.settings, self.store, chosen, until)

    # ------------------------------------------------------------------ training

    def training_frame(
        self,
        entities: pd.DataFrame | pa.Table,
        features: Features | None = None,
        timestamp_column: str = "event_timestamp",
    ) -> pa.Table:
        """Point-in-time correct features for every entity row, in the rows' own order."""
        selected = self.views_for(features or self.settings.default_feature_service())
        return point_in_time_frame(self.settings, selected, entities, timestamp_column)

    # ------------------------------------------------------------------ serving

    @property
    def redis(self) -> redis.Redis[bytes]:
        """A client of the online store's Redis or Redis Cluster (connects on first command)."""
        if self._redis is None:
            # On a cluster it answers the same commands, routed by key (SCAN: per node).
            self._redis = shared_client(self.settings, 5.0)
        return self._redis

    def clear_online(self) -> int:
        """Delete every online row of this Feast project from Redis; the number of keys.

        Feast never overwrites a newer value with an older one, so replaying history into an
        online store that already holds the future starts here.
        """
        pattern = b"*" + self.settings.feast.project.encode()
        deleted = 0
        try:
            batch: list[bytes] = []
            for key in self.redis.scan_iter(match=pattern, count=5000, _type="HASH"):
                batch.append(key)
                if len(batch) == 5000:
                    deleted += int(self.redis.delete(*batch))
                    batch.clear()
            if batch:
                deleted += int(self.redis.delete(*batch))
        except (redis.ConnectionError, redis.TimeoutError, *CLUSTER_DOWN) as exc:
            raise unreachable(self.settings, exc) from exc
        return deleted

    def online_features(
        self,
        rows: Sequence[dict[str, Any]],
        features: Features | None = None,
        as_of: datetime | None = None,
    ) -> OnlineFeatures:
        """Features for entity rows from Redis, flagged NOT_FOUND or OUTSIDE_MAX_AGE (vs `as_of`)."""
        (found,) = self.online_features_many([(rows, features, as_of)])
        if isinstance(found, Exception):
            raise found
        return found

    def online_features_many(
        self, requests: Sequence[OnlineRequest]
    ) -> list[OnlineFeatures | InvalidEntityFrame]:
        """`online_features` for several requests in one Redis round trip (the server batches
        concurrent requests); a request lacking a join key gets its error, the others answer.
        """
        planned = [
            (rows, self.read_plan(f or self.settings.default_feature_service()), as_of)
            for rows, f, as_of in requests
        ]
        if self._reads is None:
            # On a cluster the reads go through raw pipes only: no redis-py client to build.
            client = None if is_cluster(self.settings) else self.redis
            self._reads = HashReads(self.settings, client)
        return read_online(self.settings, self._reads, planned)
