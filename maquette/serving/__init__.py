"""Serving: answering predictions online and in batch.

Modules:
    predictor       Predictor: routing, aliases, traffic split, shadow, feature fetch, the model
    http            the POST /predict fast path inside the BentoML service (PredictRoute)
    request_rules   what a request may carry: as_of window, row/field/text limits, typed keys
    openapi         /docs.json made to list POST /predict's limits, statuses and error body
    prediction_log  the prediction log: Redis Stream -> Parquet (drain, read_predictions)
    batch           predict_batch: point-in-time features, a version, Parquet out
    library         library mode: load_model / LibraryModel, the Predictor in process
    server          service_process: `bentoml serve` of the project's bento service
    bento           building the bento (`maquette build`)

May import: `maquette.training`, `maquette.registry`, `maquette.features`, `maquette.data`,
`maquette.config`, `maquette.errors`.
"""
