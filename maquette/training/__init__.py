"""Training: from a model spec to a registered, evaluated version.

Owns the learners (LightGBM, scikit-learn), metrics, preparing train/validation/test frames,
the hyperparameter search, partition models, evaluation, the typed version record and the
training report (`pipeline` runs the steps in order).

May import: `maquette.registry`, `maquette.features`, `maquette.data`, `maquette.config`,
`maquette.errors`.
"""
