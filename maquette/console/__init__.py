"""The Maquette console (`maquette ui`): one web UI over models, versions, aliases and the platform.

`create_app(settings)` is the Starlette app; `serve(settings)` runs it with uvicorn on
`console.host:console.port`, in a process of its own (never inside the prediction service).
"""

from __future__ import annotations

from maquette.config import Settings


def serve(settings: Settings) -> None:
    """Run the console until interrupted."""
    import uvicorn

    from maquette.console.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.console.host,
        port=settings.console.port,
        log_level="warning",
    )
