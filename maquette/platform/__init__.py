"""Platform: the running platform and the main job.

Modules:
    components    `maquette up / status / down` of Redis, Prefect, the deployments' runner,
                  the prediction service and the stream processor
    flows         the project's flows, loaded from `paths.flows` (CLI, benchmarks, runner)
    deployments   the flows' Prefect deployments, built from the settings and served together
    demo          the demo lifecycle: every stage timed, traffic replayed through the service
    replay        a stretch of history replayed as live traffic, the online store following

May import: every workflow step (`monitoring`, `serving`, `training`, `stream`, `features`,
`data`), `maquette.registry`, `maquette.config`, `maquette.errors`.
"""
