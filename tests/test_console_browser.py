"""The console in a real browser (Debian's chromium, driven by Playwright).

Each page of a trained, monitored project opens without a console error and draws its charts;
an alias moved through the forms (credentials, review, confirm) is what the prediction service
answers with on its next request.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from maquette import registry
from maquette.config import Settings
from maquette.console.browser import VIEWPORT, chromium_path, main_pages, serve_in_thread
from maquette.platform.flows import prefect_auth
from tests.test_serving import ROW, running_service

pytestmark = pytest.mark.slow
ALIAS = "browser"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path())
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def console_url(production: dict[str, str], loaded_project: Settings) -> Iterator[str]:
    with serve_in_thread(loaded_project) as url:
        yield url


def _watched(page: Page) -> list[str]:
    """Console errors and uncaught exceptions of the page, as they happen."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_every_page_opens_without_errors_and_draws_its_charts(
    browser: Browser, console_url: str, loaded_project: Settings, production: dict[str, str]
) -> None:
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    errors = _watched(page)
    name, version = production["flight_delay"].split(":")
    other = production["late_arrival"]
    pages = [
        *main_pages(loaded_project),
        ("compare", f"/compare?a={production['flight_delay']}&b={other}"),
        ("not found", "/models/no_such_model"),
    ]
    for label, path in pages:
        answer = page.goto(console_url + path)
        assert answer is not None
        page.wait_for_load_state("networkidle")
        assert answer.status == (404 if label == "not found" else 200), label
        assert page.locator("header").is_visible(), label
        charts = page.locator("div.chart").count()
        # Every chart drew its SVG (plotly.js served by the console itself).
        assert page.locator("div.chart .main-svg").count() >= charts, label
        if label in ("version", "compare"):
            assert charts > 0, label
        if label == "not found":  # the browser reports the page's own 404, and only that
            assert all("404" in e for e in errors), errors
            errors.clear()
        assert errors == [], (label, errors)
    # A link followed like a person would: from the models page to a version's record.
    page.goto(console_url + "/models")
    page.click(f"a[href='/models/{name}/{version}']")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith(f"/models/{name}/{version}")
    assert page.locator("h1").inner_text().startswith(f"{name}:{version}")
    page.close()


@pytest.fixture(scope="module")
def service(production: dict[str, str], loaded_project: Settings) -> Iterator[str]:
    env = {
        "MAQUETTE_PREDICTIONS_STREAM": "maquette:browser-test",
        "MAQUETTE_SERVING_AS_OF_MAX_PAST": "1500w",
    }
    with running_service(loaded_project, env) as url:
        yield url


def _predict(service: str, model: str) -> Any:
    body = {
        "rows": [ROW],
        "model": model,
        "as_of": datetime(2013, 12, 31, 15, tzinfo=UTC).isoformat(),
    }
    return httpx.post(f"{service}/predict", json=body, timeout=30)


def test_an_alias_moved_in_the_browser_is_what_the_service_answers_with(
    browser: Browser,
    console_url: str,
    service: str,
    loaded_project: Settings,
    production: dict[str, str],
) -> None:
    name, version = production["late_arrival"].split(":")
    assert _predict(service, f"{name}@{ALIAS}").status_code == 404  # no such alias yet
    # As a person logs in: any user name, the platform's auth string as the password.
    context = browser.new_context(
        viewport=VIEWPORT,  # type: ignore[arg-type]
        http_credentials={"username": "maquette", "password": prefect_auth(loaded_project)},
    )
    page = context.new_page()
    errors = _watched(page)
    page.goto(f"{console_url}/models/{name}")
    page.select_option("select[name=version]", version)
    page.fill("input[name=alias]", ALIAS)
    page.click("text=Review the move")
    page.wait_for_load_state("networkidle")
    assert f"Move {name}@{ALIAS}?" in page.locator("h1").inner_text()
    assert registry.aliases(loaded_project, name).get(ALIAS) is None  # reviewed, not moved
    page.click(f"text=Move @{ALIAS} to {version}")
    page.wait_for_load_state("networkidle")
    assert f"@{ALIAS} now points to {version}" in page.locator("p.notice").inner_text()
    assert errors == []
    context.close()

    answered = _predict(service, f"{name}@{ALIAS}")
    assert answered.status_code == 200, answered.text
    assert answered.json()["predictions"][0]["model"] == f"{name}:{version}"
    history = registry.alias_history(loaded_project, name)[-1]
    assert (history["alias"], history["version"]) == (ALIAS, version)
