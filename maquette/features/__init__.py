"""Features: the feature layer over Feast.

Modules:
    layer           FeatureLayer: `feast apply`, the registry's views and services, the facade
    read_plan       which views and features a service reads, per view its join keys and TTL
    materialize     materialize (all history first, then incrementally); why a view got nothing
    online          online reads from Redis, OnlineFeatures, PRESENT/NOT_FOUND/OUTSIDE_MAX_AGE
    training_frame  point-in-time training frames, on-demand views computed on them
    point_in_time   the ASOF-join SQL with Feast's historical-retrieval semantics
    redis_layout    Feast's Redis wire format, encoded and decoded in bulk
    transforms      the pure calendar transforms of on-demand views
    entity_rows     entity rows typed as the repo declares them; request times parsed (CLI, serving)

May import: `maquette.data`, `maquette.config`, `maquette.errors`.
"""
