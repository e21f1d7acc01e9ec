"""Platform: the running platform and the main job.

Modules:
    components    `maquette up / status / down` of Redis, Prefect, the deployments' runner,
                  the prediction service and the stream processor
    supervisor    the project's supervisord: its config, API, restart counts and last exits
    launch        what supervisord runs per component: its environment, leftovers of a
                  crashed run stopped, dependencies waited for, crash loops given up
    flows         the project's flows, loaded from `paths.flows` (CLI, benchmarks, runner),
                  run on the platform's Prefect server when it answers
    schedules     each deployment's schedule, last and next run; the Prefect scheduler's errors
    deployments   the flows' Prefect deployments, built from the settings and served together
    demo          the demo lifecycle: every stage timed, traffic replayed through the service
    replay        a stretch of history replayed as live traffic, the online store following

May import: every workflow step (`monitoring`, `serving`, `training`, `stream`, `features`,
`data`), `maquette.registry`, `maquette.config`, `maquette.errors`.
"""
