"""Stream: the speed layer.

Owns declared window aggregations, the event schema, publishing events to a Redis Stream,
the backfill of the same aggregates over historical events, the stream processor and its
operations (status, dead letters, reset).

May import: `maquette.features`, `maquette.data`, `maquette.config`, `maquette.errors`.
"""
