"""The console's pages and its one action, against a real project: trained and promoted models.

Every page answers from the registry and the platform's state; an unknown model or version
gets a 404 page that lists what exists; moving an alias asks for the platform's credentials,
a token of the console's own form and a confirmation, and is recorded as the CLI records it.
"""

from __future__ import annotations

import base64
import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from maquette import registry
from maquette.config import Settings
from maquette.console.app import create_app
from maquette.console.compare import compare
from maquette.platform.flows import prefect_auth
from tests.conftest import free_port

ALIAS = "console-check"  # moved by these tests; @production is left alone


@contextlib.contextmanager
def console_client(settings: Settings) -> Iterator[httpx.Client]:
    """The project's console served by uvicorn on a loopback port, and an HTTP client of it."""
    port = free_port()
    app = create_app(settings)
    # log_config=None: uvicorn leaves the logging set-up alone (its dictConfig would bind
    # handlers to the stderr pytest captures for this test, closed once the test ends).
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the console did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def client(production: dict[str, str], loaded_project: Settings) -> Iterator[httpx.Client]:
    with console_client(loaded_project) as client:
        yield client


def _credentials(settings: Settings) -> dict[str, str]:
    token = base64.b64encode(prefect_auth(settings).encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _form_token(page: str) -> str:
    found = re.search(r'name="token" value="([0-9a-f]+)"', page)
    assert found, "the model page carries the form's token"
    return found.group(1)


def test_every_page_answers_from_the_registry(
    client: httpx.Client, production: dict[str, str], loaded_project: Settings
) -> None:
    home = client.get("/")
    assert home.status_code == 200
    for component in loaded_project.orchestration.components:
        assert f"<td>{component}</td>" in home.text
    assert "Server-Timing".lower() in home.headers

    models = client.get("/models")
    assert models.status_code == 200
    for tag in production.values():
        name, version = tag.split(":")
        assert f'href="/models/{name}"' in models.text
        assert f'@production → <a href="/models/{name}/{version}">{version}</a>' in models.text

    for tag in production.values():
        name, version = tag.split(":")
        record = registry.resolve(loaded_project, tag).record
        model = client.get(f"/models/{name}")
        assert model.status_code == 200
        assert record.headline() in model.text
        assert record.data["train"].sha256[:10] in model.text

        page = client.get(f"/models/{name}/{version}")
        assert page.status_code == 200
        # Training distributions: a histogram per numeric feature, top values per categorical.
        numeric = [f for f, d in record.distributions.items() if d.get("kind") == "numeric"]
        assert page.text.count('<svg class="spark"') == len(numeric) > 0
        for view in {f.view for f in record.features if f.view}:
            assert f'href="/features#view-{view}"' in page.text
        # One table row per search trial, the chosen one starred; the charts' figures inline.
        assert page.text.count('<td class="num">') >= len(record.search.trials)
        assert f"{record.search.best_trial} ★" in page.text
        assert "data-figure='" in page.text and "/static/plotly.min.js" in page.text
        for feature in record.feature_names:
            assert f"<td>{feature}</td>" in page.text
        report = client.get(f"/models/{name}/{version}/report.html")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")

    script = client.get("/static/plotly.min.js")
    assert script.status_code == 200 and "plotly" in script.text[:2000].lower()


def test_an_unknown_model_or_version_gets_a_404_that_lists_what_exists(
    client: httpx.Client, production: dict[str, str]
) -> None:
    missing = client.get("/models/no_such_model")
    assert missing.status_code == 404
    assert "No model named &#39;no_such_model&#39;" in missing.text
    for name in production:
        assert f'href="/models/{name}"' in missing.text

    name, version = production["flight_delay"].split(":")
    missing = client.get(f"/models/{name}/v999")
    assert missing.status_code == 404
    assert f'href="/models/{name}/{version}"' in missing.text

    assert client.get(f"/models/{name}/{version}/secrets.html").status_code == 404
    assert client.get("/no/such/page").status_code == 404


def _post(client: httpx.Client, name: str, data: dict[str, Any], **kw: Any) -> Any:
    return client.post(f"/models/{name}/aliases", data=data, follow_redirects=False, **kw)


def test_moving_an_alias_needs_credentials_the_form_token_and_a_confirmation(
    client: httpx.Client, production: dict[str, str], loaded_project: Settings
) -> None:
    name, version = production["late_arrival"].split(":")
    before = registry.aliases(loaded_project, name).get(ALIAS)
    token = _form_token(client.get(f"/models/{name}").text)
    move = {"version": version, "alias": ALIAS, "token": token}

    # No credentials: 401 with a login challenge; nothing moves.
    refused = _post(client, name, {**move, "confirm": "yes"})
    assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:guess").decode()}
    assert _post(client, name, {**move, "confirm": "yes"}, headers=wrong).status_code == 401
    # Credentials but a form from elsewhere (no token of this console): 403.
    forged = {**move, "token": "0" * 64, "confirm": "yes"}
    assert _post(client, name, forged, headers=_credentials(loaded_project)).status_code == 403
    assert registry.aliases(loaded_project, name).get(ALIAS) == before

    # First the confirmation page, which changes nothing.
    review = _post(client, name, move, headers=_credentials(loaded_project))
    assert review.status_code == 200
    assert f"Move {name}@{ALIAS}?" in review.text and 'name="confirm" value="yes"' in review.text
    assert registry.aliases(loaded_project, name).get(ALIAS) == before

    moved = _post(client, name, {**move, "confirm": "yes"}, headers=_credentials(loaded_project))
    assert moved.status_code == 303
    assert registry.aliases(loaded_project, name)[ALIAS] == version
    last = registry.alias_history(loaded_project, name)[-1]
    # Recorded exactly as `maquette models promote` records a move.
    assert set(last) == {"name", "alias", "version", "previous", "by", "at"}
    assert (last["alias"], last["version"], last["previous"]) == (ALIAS, version, before)
    page = client.get(moved.headers["location"])
    assert f"@{ALIAS} now points to {version}" in page.text

    # Moved again, the alias can be rolled back to where it pointed before (here the same
    # version: the session has one); the button leads to the same review.
    again = _post(client, name, {**move, "confirm": "yes"}, headers=_credentials(loaded_project))
    assert again.status_code == 303
    page = client.get(f"/models/{name}").text
    assert f"Roll back @{ALIAS} to {version}" in page
    review = _post(client, name, move, headers=_credentials(loaded_project))
    assert review.status_code == 200 and f"Move {name}@{ALIAS}?" in review.text


def test_moving_an_alias_to_a_version_that_does_not_exist_is_refused_with_the_reason(
    client: httpx.Client, production: dict[str, str], loaded_project: Settings
) -> None:
    name, version = production["flight_delay"].split(":")
    token = _form_token(client.get(f"/models/{name}").text)
    history = registry.alias_history(loaded_project, name)
    for confirm in ("", "yes"):
        refused = _post(
            client,
            name,
            {"version": "v999", "alias": ALIAS, "token": token, "confirm": confirm},
            headers=_credentials(loaded_project),
        )
        assert refused.status_code == 422
        assert "v999" in refused.text and version in refused.text
    assert registry.alias_history(loaded_project, name) == history


def test_feast_ui_starts_in_the_feature_repo_after_the_install(
    loaded_project: Settings, tmp_path: Path
) -> None:
    """`feast ui` needs Feast's grpcio extra, which the install includes; it serves the
    project's registry (the console's home page links to it)."""
    port = free_port()
    feast = Path(sys.executable).with_name("feast")
    log = (tmp_path / "feast-ui.log").open("w")
    ui = subprocess.Popen(
        [str(feast), "ui", "-h", "127.0.0.1", "-p", str(port)],
        cwd=loaded_project.path(loaded_project.paths.feature_repo),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert ui.poll() is None, (tmp_path / "feast-ui.log").read_text()[-2000:]
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/projects-list.json", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "feast ui did not answer"
                time.sleep(0.5)
        assert listed.status_code == 200
        assert [p["id"] for p in listed.json()["projects"]] == [loaded_project.feast.project]
    finally:
        ui.terminate()
        ui.wait(30)


def test_compare_puts_two_versions_side_by_side_and_marks_the_better_one(
    client: httpx.Client, production: dict[str, str], loaded_project: Settings
) -> None:
    tag = production["flight_delay"]
    page = client.get("/compare", params={"a": tag, "b": production["late_arrival"]})
    assert page.status_code == 200
    assert "Test metrics won: A 0, B 0." in page.text  # no metric the two tasks share
    missing = client.get("/compare", params={"a": tag, "b": tag.split(":")[0] + ":v999"})
    assert missing.status_code == 404 and f'href="/models/{tag.replace(":", "/")}"' in missing.text
    assert client.get("/compare", params={"a": "nonsense"}).status_code == 404

    # A better B (lower RMSE, one parameter changed, one partition worse): each row says so.
    a = registry.resolve(loaded_project, tag)
    record = a.record.model_copy(deep=True)
    record.metrics.test.model["rmse"] = a.record.metrics.test.model["rmse"] - 1.0
    record.params["num_leaves"] = -1
    partitions = record.metrics.test.partitions or {}
    first = sorted(partitions)[0]
    partitions[first].model["rmse"] += 5.0
    b = registry.ModelVersion(a.name, "v-better", a.path, a.created)
    b.__dict__["record"] = record  # what the registry would read from its record.json
    found = compare(a, b)
    rmse = next(m for m in found.metrics if (m.split, m.metric) == ("test", "rmse"))
    assert rmse.winner == "b" and rmse.difference == pytest.approx(-1.0)
    assert found.params[0].name == "num_leaves" and found.params[0].differs
    assert not any(p.differs for p in found.params[1:])
    assert next(p for p in found.partitions if p.partition == first).winner == "a"
    assert found.wins == {"a": 0, "b": 1}


def test_the_feature_catalog_lists_every_view_feature_and_who_uses_it(
    client: httpx.Client, production: dict[str, str], loaded_project: Settings
) -> None:
    from maquette.features.layer import FeatureLayer

    page = client.get("/features")
    assert page.status_code == 200, page.text[-2000:]
    layer = FeatureLayer(loaded_project)
    for view in layer.feature_views():
        assert f'id="view-{view.name}"' in page.text
        for feature in view.features:
            assert f"<td>{feature.name}</td>" in page.text
    # Each production version is listed beside the features it was trained on.
    for tag in production.values():
        record = registry.resolve(loaded_project, tag).record
        assert page.text.count(f">{tag}</a>") >= len([f for f in record.features if f.view])
    # Freshness was read from Redis (the fixture materialized up to 2014): an age per view.
    assert "Freshness unknown" not in page.text and " days" in page.text
    assert "<h2>Stream processor</h2>" in page.text


def test_a_change_from_another_site_or_host_is_refused_and_odd_credentials_are_a_401(
    client: httpx.Client, production: dict[str, str], loaded_project: Settings
) -> None:
    name, version = production["late_arrival"].split(":")
    token = _form_token(client.get(f"/models/{name}").text)
    move = {"version": version, "alias": ALIAS, "token": token}
    login = _credentials(loaded_project)
    before = registry.alias_history(loaded_project, name)
    # A form on another site, sent with the login the browser remembers: refused.
    for header in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = _post(client, name, {**move, "confirm": "yes"}, headers={**login, **header})
        assert refused.status_code == 403, header
    # A page reached by another name (DNS rebinding): not served.
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    # Any characters in a login box: a 401, not a crash; any user name with the password works.
    odd = {"Authorization": "Basic " + base64.b64encode("José:é".encode()).decode()}
    assert _post(client, name, move, headers=odd).status_code == 401
    password = prefect_auth(loaded_project)
    named = base64.b64encode(f"José:{password}".encode()).decode()
    review = _post(client, name, move, headers={"Authorization": f"Basic {named}"})
    assert review.status_code == 200 and f"Move {name}@{ALIAS}?" in review.text
    assert registry.alias_history(loaded_project, name) == before
    # The notice after a move is the history's, never text from the address.
    page = client.get(f"/models/{name}", params={"moved": "production:v1:evil"}).text
    assert "evil" not in page


def test_the_live_page_names_windows_as_the_passes_store_them(
    production: dict[str, str], loaded_project: Settings
) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.monitoring.windows = ["1d", "hourly"]
    del settings.models["late_arrival"]  # registered, no longer declared
    with console_client(settings) as client:
        live = client.get("/models/flight_delay/live")
        assert live.status_code == 200
        assert live.text.count("<option selected>daily</option>") == 1
        assert "<option>1d</option>" not in live.text
        gone = client.get("/models/late_arrival/live")
        assert gone.status_code == 404 and 'href="/models/flight_delay/live"' in gone.text
