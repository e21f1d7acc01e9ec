"""Monitoring: how served models do once labels arrive.

Modules:
    labels        ingest late labels; join them with logged predictions (scored predictions)
    live_metrics  metrics per window, version and partition on labelled rows; quality_scores;
                  feature_missing (per feature, against the training null share)
    drift         Evidently drift and quality reports per drift window (cache, windows)
    drift_tests   which drift test each column gets by window size; Benjamini-Hochberg
    evidently_runs  Evidently drift/quality runs of one window, HTML, workspace dashboard
    reference     drift references: training split, trailing served period, season ago
    skew          training/serving skew per alert window: served vs recomputed point-in-time
    freshness     age of the newest value of every feature view in the online store
    verdicts      breach | clear | not enough data per complete window and check
    incidents     verdicts -> incidents (open, resolve, severity), the store, the webhook
    alerts        retraining when an accuracy or drift incident opens
    index         the monitoring index page (reports/monitoring/index.html)
    monitor       one monitoring pass over all of the above (`run`)

May import: `maquette.serving`, `maquette.training`, `maquette.registry`, `maquette.features`,
`maquette.data`, `maquette.config`, `maquette.errors`.
"""
