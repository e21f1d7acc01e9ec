"""Bench: benchmarks that run the stock way, Maquette and the floor in one run.

- `harness`: the scratch Feast project and Redis database, child processes, timing, peak RSS
  (VmHWM), result tables printed and returned as Markdown.
- `dataset`: what the benchmarks take from the project's dataset (entity rows, request
  columns) and `BenchDataset`, the few facts a dataset declares beside `dataset.module`.
- `features`: materialize, online reads and training frames: stock Feast, Maquette, floor.
- `training`: the project's `train` flow on a Prefect server vs the same steps as plain calls.
- `serving`: Maquette's service vs the stock composition vs a bare endpoint, loaded by wrk.
- `stock_service`, `bare_asgi`, `wrk_post.lua`: the stock and floor servers, the wrk script.
- `stream`: the stream processor vs stock `FeatureStore.push`: sustained rate, freshness lag.
- `monitoring`: label join + live metrics on a large log; Evidently drift, stock vs sampled.
- `soak`: the whole platform under traffic, Redis and the stream processor killed once each:
  schedules fired, restarts, answers, acknowledged predictions reconciled with Parquet.
- `alerts` (`alerts_faults`, `alerts_project`, `alerts_replay`, `alerts_inject`, `alerts_facts`,
  `alerts_report`): a period replayed twice through the real platform, clean and with the
  faults of a faults file injected; per fault the incident that found it and how fast, the
  clean replay's incidents explained by a data fact or not, the drift references compared.
- `durability`: `redis.appendfsync` everysec vs always on the serving path, loaded by wrk.

May import: everything below the CLI; never `maquette.cli` or `maquette.examples` (a
dataset's `BenchDataset` is found through the settings).
"""
