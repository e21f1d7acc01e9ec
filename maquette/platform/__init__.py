"""Platform: the running platform and the main job.

Owns `maquette up / status / down` of Redis, Prefect, the deployments runner, the service and
the stream processor (`components`), loading the project's flows, the demo lifecycle (`demo`)
and replaying history as live traffic (`replay`).

May import: every workflow step (`monitoring`, `serving`, `training`, `stream`, `features`,
`data`), `maquette.registry`, `maquette.config`, `maquette.errors`.
"""
