"""Stream: the speed layer.

Windowed aggregates over events on a Redis Stream, pushed to Feast's stores, and the same
aggregates over historical events (the backfill), both from one declaration: `stream.events`
and `stream.aggregations` in maquette.yaml, or a Python `StreamDefinition` (`stream.definition`).

    aggregations   WindowAggregation, StreamDefinition and stream_definition(settings)
    events         Event, parse_event, publish, publish_lines: entries on the Redis Stream
    history        events_sql (historical events) and replay (them, as live traffic)
    backfill       backfill (the batch layer) and load_dataset (tables, then backfill)
    windows        Window: one key's recent events, and the Redis keys of the state
    processor      StreamProcessor: read, window, write online and offline, commit
    targets        the feature views a processor feeds; merge_rows into their Parquet
    reconnect      wait_for_redis: backoff through a Redis outage, logged once each way
    foreground     run_until_stopped: a processor until a signal (`maquette stream run`)
    operations     status, dead_letters, reset

May import: `maquette.features`, `maquette.data`, `maquette.config`, `maquette.errors`.
"""
