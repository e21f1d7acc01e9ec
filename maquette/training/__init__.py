"""Training: from a model spec to a registered, evaluated version.

Modules:
    model_types  the shared types (training data, trial, trained model); a leaf over `learners`
    learners     fit, predict, save and load one model per algorithm (LightGBM, scikit-learn)
    metrics      regression and binary metrics, the best-F1 threshold, which score is better
    prepare      entity rows + label -> point-in-time training frame -> splits; training sets
    search       parameter sets drawn from the search space, one trial per set
    partitions   a model per partition value, kept only where it beats the parent
    evaluate     model and naive baseline on validation and test, overall and per partition
    explain      feature distributions, importance, partial dependence (for the record)
    records      the version record (record.json): who, when, code, data, search, metrics
    report       report.html and Evidently's preset report for one version
    pipeline     `train`: the steps above in order, then registration

May import: `maquette.registry`, `maquette.features`, `maquette.data`, `maquette.config`,
`maquette.errors`.
"""
