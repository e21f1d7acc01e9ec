"""Monitoring: how served models do once labels arrive.

Modules:
    labels        ingest late labels; join them with logged predictions (scored predictions)
    live_metrics  metrics per window, version and partition on labelled rows; quality_scores
    drift         Evidently drift and quality reports per window, the workspace dashboard
    skew          training/serving skew: served features vs recomputed point-in-time ones
    freshness     age of the newest value of every feature view in the online store
    alerts        thresholds -> recorded alerts, webhook, retraining
    index         the monitoring index page (reports/monitoring/index.html)
    monitor       one monitoring pass over all of the above (`run`)

May import: `maquette.serving`, `maquette.training`, `maquette.registry`, `maquette.features`,
`maquette.data`, `maquette.config`, `maquette.errors`.
"""
