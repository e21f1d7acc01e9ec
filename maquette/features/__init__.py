"""Features: the feature layer over Feast.

Owns `feast apply`, materialization into Redis, online reads, point-in-time training frames
(`layer`), the ASOF-join SQL with Feast's semantics (`point_in_time`), Feast's Redis wire
format (`redis_layout`) and the pure calendar transforms of on-demand views (`transforms`).

May import: `maquette.data`, `maquette.config`, `maquette.errors`.
"""
