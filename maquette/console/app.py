"""The console's web app: server-rendered pages (Starlette + Jinja2), one process of its own.

Reading needs no JavaScript and no login (it binds to loopback, like the rest of the platform);
changing anything (moving an alias) is a POST that asks for the platform's credentials (HTTP
Basic: any user name, the Prefect server's auth string as the password, from
`orchestration.prefect_auth` or `<state>/secrets/prefect_auth`), carries a form token only a
page of this console holds, and goes through a confirmation page first.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import plotly
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from maquette.config import Settings
from maquette.console import charts
from maquette.console.catalog import CatalogReader, age
from maquette.console.compare import compare
from maquette.console.live import live_page
from maquette.console.views import Console, NotFound
from maquette.monitoring.evidently_runs import reports_dir
from maquette.platform.flows import prefect_auth

TEMPLATES = Path(__file__).parent / "templates"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
REALM = 'Basic realm="Maquette console", charset="UTF-8"'
# Reports (Evidently's, the training report) run their own scripts: in a sandbox without the
# console's origin, so nothing in them can act with the console's login.
SANDBOXED = {"Content-Security-Policy": "sandbox allow-scripts allow-popups"}
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#1d2330"/>'
    '<path d="M3 12V4l5 5 5-5v8" stroke="#fff" stroke-width="2" fill="none"/></svg>'
)


def create_app(settings: Settings) -> Starlette:
    """The console of one project."""
    console = Console(settings)
    catalog = CatalogReader(settings)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.filters["age"] = age
    # Numbers only (our own SVG of counts): safe to insert as markup.
    env.filters["histogram"] = lambda d: Markup(charts.histogram_svg(d))
    env.globals["project"] = settings.project_dir.resolve().name

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def home(request: Request) -> Response:
        return page(
            request,
            "home.html",
            components=console.components(),
            schedules=console.schedules(),
            alerts=console.alerts(limit=5),
            links=console.links(),
        )

    def alerts(request: Request) -> Response:
        return page(
            request,
            "alerts.html",
            alerts=console.alerts(),
            webhook=bool(settings.monitoring.webhook),
            prefect=console.links().prefect,
        )

    def features(request: Request) -> Response:
        versions = [v for m in console.models() for v in m.versions]
        return page(request, "features.html", catalog=catalog.read(versions))

    def models(request: Request) -> Response:
        return page(request, "models.html", models=console.models())

    def model(request: Request) -> Response:
        name = request.path_params["name"]
        summary = console.model(name)
        history = console.alias_history(name)
        # After a move: the newest move of that alias, as the history records it.
        asked = request.query_params.get("moved")
        moved = next((m for m in history if m["alias"] == asked), None) if asked else None
        return page(
            request,
            "model.html",
            model=summary,
            history=history,
            rollbacks=console.rollbacks(name),
            token=_form_token(settings, name),
            moved=moved,
        )

    def version(request: Request) -> Response:
        summary = console.model(request.path_params["name"])  # one read of the registry
        found = summary.version(request.path_params["version"])
        record = found.record
        return page(
            request,
            "version.html",
            version=found,
            record=record,
            aliases=[a for a, v in summary.aliases.items() if v == found.version],
            others=[v for v in summary.versions if v.version != found.version],
            trials_chart=charts.search_trials(record),
            importance_chart=charts.importance({found.tag: record}),
            dependence_charts=[
                charts.partial_dependence(record, f) for f in record.partial_dependence
            ],
        )

    def live(request: Request) -> Response:
        summary = console.model(request.path_params["name"])
        if summary.name not in settings.models:
            # Registered, but maquette.yaml no longer declares it: nothing monitors it.
            known = [(m, f"/models/{m}/live") for m in sorted(settings.models)]
            raise NotFound(f"{summary.name} is not declared in maquette.yaml any more.", known)
        found = live_page(
            settings,
            summary.name,
            summary.task,
            request.query_params.get("window", ""),
            request.query_params.get("metric", ""),
        )
        return page(request, "live.html", model=summary, live=found)

    def monitoring_report(request: Request) -> Response:
        summary = console.model(request.path_params["name"])
        folder = reports_dir(settings, summary.name).resolve()
        path = (folder / request.path_params["file"]).resolve()
        if path.parent != folder or path.suffix != ".html" or not path.is_file():
            raise NotFound(
                f"{summary.name} has no monitoring report {request.path_params['file']!r}.",
                [(f"Live accuracy of {summary.name}", f"/models/{summary.name}/live")],
            )
        return FileResponse(path, media_type="text/html", headers=SANDBOXED)

    def compare_versions(request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        found = compare(console.tagged(a), console.tagged(b))
        records = {found.a.tag: found.a.record, found.b.tag: found.b.record}
        return page(
            request,
            "compare.html",
            c=found,
            importance_chart=charts.importance(records),
        )

    def version_file(request: Request) -> Response:
        name, number = request.path_params["name"], request.path_params["version"]
        found = console.version(name, number)
        artifacts = found.record.artifacts
        files = {
            "report": artifacts.report if artifacts else "report.html",
            "evidently": artifacts.evidently if artifacts else "evidently.html",
        }
        kind = request.path_params["kind"]
        if kind not in files:
            raise NotFound(
                f"{found.tag} has no {kind}.html.",
                [(f"{k}.html", f"/models/{name}/{number}/{k}.html") for k in files],
            )
        path = (found.path / files[kind]).resolve()
        if not path.is_file() or found.path.resolve() not in path.parents:
            raise HTTPException(404, f"{found.tag} has no {files[kind]}.")
        return FileResponse(path, media_type="text/html", headers=SANDBOXED)

    async def move_alias(request: Request) -> Response:
        _require_same_origin(request)
        _require_credentials(request, settings)
        form = await request.form()
        fields = {k: str(v) for k, v in form.items()}
        # The registry and the alias file's lock are blocking: off the event loop.
        return await asyncio.to_thread(_move_alias, request, fields)

    def _move_alias(request: Request, form: dict[str, str]) -> Response:
        name = request.path_params["name"]
        summary = console.model(name)
        version, alias = form.get("version", ""), form.get("alias", "").strip()
        if not _same(form.get("token", ""), _form_token(settings, name)):
            return page(
                request,
                "refused.html",
                403,
                model=summary,
                reason="The form did not come from this console (its token is missing or "
                "wrong): open the model's page and submit the form there.",
            )
        if form.get("confirm") != "yes":
            if version not in {v.version for v in summary.versions} or not alias:
                known = ", ".join(v.version for v in summary.versions)
                return page(
                    request,
                    "refused.html",
                    422,
                    model=summary,
                    reason=f"{name} has no version {version!r} (versions: {known}), or no "
                    "alias was given.",
                )
            return page(
                request,
                "confirm.html",
                model=summary,
                version=version,
                alias=alias,
                current=summary.aliases.get(alias),
                token=_form_token(settings, name),
            )
        try:
            move = console.promote(name, version, alias)
        except ValueError as exc:
            return page(request, "refused.html", 422, model=summary, reason=str(exc))
        return RedirectResponse(f"/models/{name}?moved={move['alias']}", status_code=303)

    async def favicon(request: Request) -> Response:
        return Response(
            FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
        )

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def plotly_js(request: Request) -> Response:
        return FileResponse(
            PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NotFound):
            return page(request, "not_found.html", 404, message=exc.message, known=exc.known)
        detail = exc.detail if isinstance(exc, HTTPException) else "Not found."
        known = [("Home", "/"), ("Models", "/models")]
        return page(request, "not_found.html", 404, message=detail, known=known)

    async def cross_site(request: Request, exc: Exception) -> Response:
        return Response(
            "Refused: the request came from a page of another site. Move aliases from this "
            "console's own pages.\n",
            status_code=403,
        )

    async def unauthorized(request: Request, exc: Exception) -> Response:
        return Response(
            "Moving an alias needs the platform's credentials: any user name, and the "
            "Prefect server's auth string as the password (orchestration.prefect_auth, or the "
            "file .maquette/secrets/prefect_auth).\n",
            status_code=401,
            headers={"WWW-Authenticate": REALM},
        )

    routes = [
        Route("/", home),
        Route("/models", models),
        Route("/alerts", alerts),
        Route("/features", features),
        Route("/models/{name}", model),
        Route("/compare", compare_versions),
        Route("/models/{name}/aliases", move_alias, methods=["POST"]),
        Route("/models/{name}/live", live),
        Route("/models/{name}/monitoring/{file}", monitoring_report),
        Route("/models/{name}/{version}", version),
        Route("/models/{name}/{version}/{kind:str}.html", version_file),
        Route("/static/plotly.min.js", plotly_js),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
    ]

    @contextlib.asynccontextmanager
    async def warmed(app: Starlette) -> AsyncIterator[None]:
        # The model store (BentoML) and the metrics (scikit-learn) load on first use: load them
        # now, so the first person to open a page does not wait for the imports.
        await asyncio.to_thread(console.models)
        yield

    app = Starlette(
        lifespan=warmed,
        routes=routes,
        exception_handlers={
            NotFound: not_found,
            404: not_found,
            _Unauthorized: unauthorized,
            _CrossSite: cross_site,
        },
    )
    app.add_middleware(ServerTiming)
    # Only the names this console is reached by: a DNS-rebinding page (evil.example resolving
    # to 127.0.0.1) gets 400, not the pages.
    hosts = sorted({"127.0.0.1", "localhost", settings.console.host})
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return app


class ServerTiming:
    """Adds `Server-Timing: app;dur=<ms>` to every answer: the time from the request to the
    answer's headers (data gathered and page rendered), as browsers' devtools show it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={1000 * (time.perf_counter() - began):.1f}"
                message.setdefault("headers", []).append((b"server-timing", took.encode()))
            await send(message)

        await self.app(scope, receive, timed)


class _Unauthorized(Exception):
    """A change asked without the platform's credentials."""


class _CrossSite(Exception):
    """A change asked by a page of another site."""


def _require_credentials(request: Request, settings: Settings) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    try:
        given = base64.b64decode(value, validate=True).decode() if scheme.lower() == "basic" else ""
    except (ValueError, UnicodeDecodeError):
        given = ""
    # A browser's login box sends "user:password": the auth string is the password (any user
    # name); a client may also send the auth string itself, as Prefect's clients do.
    expected = prefect_auth(settings)
    password = given.partition(":")[2]
    if not expected or not given or not (_same(given, expected) or _same(password, expected)):
        raise _Unauthorized


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two texts, any characters (compare_digest refuses non-ASCII
    str)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _require_same_origin(request: Request) -> None:
    """A change comes from this console's own pages: a form on another site (which the browser
    would send with the login it remembers) is refused, whatever it carries."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if site is not None and site not in ("same-origin", "none"):
        raise _CrossSite
    if origin is not None and origin.split("://", 1)[-1] != host:
        raise _CrossSite


def _form_token(settings: Settings, name: str) -> str:
    """A token only this console's pages carry: a cross-site form cannot forge it, even when the
    browser sends the credentials it remembers."""
    key = prefect_auth(settings).encode()
    return hmac.new(key, f"move-alias:{name}".encode(), hashlib.sha256).hexdigest()
