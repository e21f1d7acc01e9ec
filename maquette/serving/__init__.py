"""Serving: answering predictions online and in batch.

Owns the predictor (routing, aliases, traffic split, shadow, feature fetch, the model), the
HTTP fast path inside the BentoML service (`http`), the prediction log (`prediction_log`),
batch scoring (`batch`), library mode and building the bento.

May import: `maquette.training`, `maquette.registry`, `maquette.features`, `maquette.data`,
`maquette.config`, `maquette.errors`.
"""
