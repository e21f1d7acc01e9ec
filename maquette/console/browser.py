"""The console in a real browser: Debian's chromium driven by Playwright.

`screenshots` writes a picture of each main page (the README shows them; `make screenshots`
regenerates them from the demo's state); the browser tests use `chromium_path` and
`serve_in_thread` too.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from maquette.config import Settings
from maquette.errors import ConfigError

VIEWPORT = {"width": 1280, "height": 860}


def chromium_path() -> str:
    """The system chromium (Playwright drives it: no browser download)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise ConfigError(
            "no chromium on this machine.",
            "Install it: `apt-get install chromium` (`make test` and `make screenshots` do).",
        )
    return found


@contextlib.contextmanager
def serve_in_thread(settings: Settings) -> Iterator[str]:
    """The console on a free loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    from maquette.console.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    # log_config=None: leave this process's logging as it is.
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the console did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def main_pages(settings: Settings) -> list[tuple[str, str]]:
    """(name, path) of the pages worth a picture, from what the project holds."""
    from maquette.console.views import Console

    models = Console(settings).models()
    pages = [("home", "/"), ("models", "/models")]
    if models:
        first = models[0]
        pages += [
            ("model", f"/models/{first.name}"),
            ("version", f"/models/{first.name}/{first.latest.version}"),
            ("live-accuracy", f"/models/{first.name}/live"),
        ]
        if len(first.versions) > 1:
            a, b = first.versions[-2], first.versions[-1]
            pages.append(("compare", f"/compare?a={a.tag}&b={b.tag}"))
    return [*pages, ("features", "/features"), ("alerts", "/alerts")]


def screenshots(settings: Settings, folder: Path) -> list[Path]:
    """A PNG of each main page, as a person sees it at 1280x860, into `folder`."""
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with serve_in_thread(settings) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        for name, path in main_pages(settings):
            page.goto(url + path)
            page.wait_for_load_state("networkidle")
            target = folder / f"{name}.png"
            page.screenshot(path=str(target))
            written.append(target)
        browser.close()
    return written
