"""The README's "Bring your own data" tutorial, run verbatim in a fresh folder (slow).

Its ```bash blocks are extracted from README.md and run as written, by bash, one script, in a
temporary folder: `maquette init shop --example` to `maquette down`, through training, HTTP
serving, published events, labels and a monitoring pass. The environment is the caller's with
the venv on PATH (nothing the README does not tell a user to set). Then the tests check what it
left: served predictions equal library-mode ones, the streamed feature equals the one computed
here from the events it published, the live RMSE equals the one computed here from its
predictions and labels, and the reports exist. Nothing here imports the demo's code.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# The tutorial trains two models and starts the service: ~4 minutes on two idle cores; the
# limit leaves room for a machine busy with other work.
TUTORIAL = [pytest.mark.slow, pytest.mark.timeout(1200)]
pytestmark = TUTORIAL


def tutorial_text(readme: str) -> str:
    """The README's "Bring your own data" section."""
    start = readme.index("## Bring your own data\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end >= 0 else None]


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of `text`, in order, as written."""
    return re.findall(r"^```bash\n(.*?)^```$", text, re.S | re.M)


def predict_request(text: str) -> dict[str, Any]:
    """The JSON body of the tutorial's POST /predict (its `curl -d '...'`)."""
    match = re.search(r"/predict\".*?-d '(\{.*?\})'", text, re.S)
    assert match, "the tutorial has no `curl .../predict -d '{...}'`"
    return dict(json.loads(match.group(1)))


@dataclass(frozen=True)
class Tutorial:
    """A finished run of the tutorial: its folder, the project it made, what it printed."""

    folder: Path
    project: Path
    env: dict[str, str]
    out: str
    request: dict[str, Any]


def _user_env() -> dict[str, str]:
    # The test session's own settings (conftest's BentoML home, MAQUETTE_*) are not a user's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAQUETTE_", "BENTOML_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _maquette(run: Tutorial, *args: str) -> str:
    done = subprocess.run(
        ["maquette", *args], cwd=run.project, env=run.env, capture_output=True, text=True
    )
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tutorial]:
    text = tutorial_text((ROOT / "README.md").read_text())
    folder = tmp_path_factory.mktemp("tutorial")
    script = folder / "tutorial.sh"
    script.write_text("\n".join(bash_blocks(text)))
    env = _user_env()
    run = Tutorial(folder, folder / "shop", env, "", predict_request(text))
    try:
        # -x: the log shows which command failed; -e and pipefail: the first failure stops it.
        done = subprocess.run(
            ["bash", "-e", "-x", "-o", "pipefail", str(script)],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert done.returncode == 0, f"the tutorial stopped:\n{done.stdout[-6000:]}"
        run = Tutorial(folder, folder / "shop", env, done.stdout, run.request)
        # The tutorial ends with `maquette down`; library mode reads the same Redis again.
        _maquette(run, "redis", "start")
        yield run
    finally:
        if (folder / "shop" / "maquette.yaml").is_file():
            for stop in (["down"], ["redis", "stop"]):
                subprocess.run(["maquette", *stop], cwd=folder / "shop", env=env, check=False)


def test_tutorial_blocks_are_found_and_start_with_init() -> None:
    blocks = bash_blocks(tutorial_text((ROOT / "README.md").read_text()))
    assert blocks[0].startswith("maquette init shop --example\ncd shop\n")
    assert blocks[-1].strip() == "maquette down"


def test_tutorial_served_predictions_equal_library_predictions(tutorial: Tutorial) -> None:
    served = json.loads((tutorial.project / "predictions.json").read_text())["predictions"]
    request = tutorial.request
    code = (
        "import json, sys\nfrom datetime import datetime\nimport maquette\n"
        "body = json.load(sys.stdin)\n"
        "model = maquette.load_model(body['model'])\n"
        "answers = model.predict(body['rows'], as_of=datetime.fromisoformat(body['as_of']))\n"
        "print(json.dumps([[a.model, a.prediction] for a in answers]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(request),
        cwd=tutorial.project,
        env=tutorial.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    library = json.loads(done.stdout.strip().splitlines()[-1])
    assert [[p["model"], p["prediction"]] for p in served] == library
    assert len(served) == len(request["rows"]) == 4
    assert all(p["model"] == "rating:v1" for p in served)


def _window(events: list[dict[str, Any]], item: int, as_of: datetime) -> list[float]:
    start = as_of - timedelta(hours=1)
    return [
        float(e["rating"])
        for e in events
        if e["item_id"] == item and start < datetime.fromisoformat(e["rated_at"]) <= as_of
    ]


def test_tutorial_streamed_feature_equals_the_published_events(tutorial: Tutorial) -> None:
    lines = (tutorial.project / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    as_of = datetime.fromisoformat(tutorial.request["as_of"])
    scored = pq.read_table(tutorial.project / ".maquette/offline/scored/rating.parquet")
    checked = 0
    for entity, features in zip(
        scored["entity"].to_pylist(), scored["features"].to_pylist(), strict=True
    ):
        item = json.loads(entity)["item_id"]
        ratings = _window(events, item, as_of)
        if not ratings:
            continue
        served = json.loads(features)
        assert served["item_ratings_60m"] == len(ratings)
        assert served["item_mean_rating_60m"] == pytest.approx(sum(ratings) / len(ratings))
        assert served["item_max_rating_60m"] == max(ratings)
        checked += 1
    assert checked == 2  # both rows for item 7, rated three times in the hour before as_of


def test_tutorial_features_get_shows_the_streamed_values_present_at_as_of(
    tutorial: Tutorial,
) -> None:
    # `features get ... --as-of` prints one table row per feature: name, value, status.
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"(item_\w+_60m)\W+([\d.]+)\W+([A-Z_]+)", tutorial.out)
    }
    assert rows == {
        "item_ratings_60m": ("3", "PRESENT"),
        "item_mean_rating_60m": (repr((5 + 4 + 2) / 3), "PRESENT"),
        "item_max_rating_60m": ("5.0", "PRESENT"),
    }, tutorial.out[-3000:]


def _records(document: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in `document` that carries an rmse."""
    if isinstance(document, dict):
        if "rmse" in document:
            yield document
        for value in document.values():
            yield from _records(value)
    elif isinstance(document, list):
        for value in document:
            yield from _records(value)


def test_tutorial_live_rmse_equals_the_one_from_its_predictions_and_labels(
    tutorial: Tutorial,
) -> None:
    with (tutorial.project / "ratings_known.csv").open() as labels_file:
        labels = {
            (int(r["user_id"]), int(r["item_id"])): float(r["label"])
            for r in csv.DictReader(labels_file)
        }
    served = json.loads((tutorial.project / "predictions.json").read_text())["predictions"]
    rows = tutorial.request["rows"]
    errors = [
        p["prediction"] - labels[(r["user_id"], r["item_id"])]
        for r, p in zip(rows, served, strict=True)
    ]
    by_hand = math.sqrt(sum(e * e for e in errors) / len(errors))
    metrics = json.loads(_maquette(tutorial, "monitor", "metrics", "rating", "--json"))
    daily = [m for m in _records(metrics) if m.get("partition") == "all"]
    assert len(daily) == 1, metrics
    assert daily[0]["labelled"] == len(labels) == 4
    assert daily[0]["rmse"] == pytest.approx(by_hand, rel=1e-9)


def test_tutorial_leaves_the_monitoring_reports(tutorial: Tutorial) -> None:
    reports = tutorial.project / ".maquette/reports/monitoring"
    index = (reports / "index.html").read_text()
    assert "rating" in index
    assert "4 predictions, 4 labelled" in tutorial.out
    # Four predictions are below the example's min_rows: the week's drift page says "not enough
    # data" and tests nothing (no quality report either), and no incident opens.
    pages = sorted(p.name.rsplit("_", 1)[-1] for p in (reports / "rating").glob("*.html"))
    assert pages == ["drift.html"]
    assert "not enough data" in next((reports / "rating").glob("*_drift.html")).read_text()
    alerts = json.loads(_maquette(tutorial, "monitor", "alerts", "--all", "--json"))
    assert alerts["open"] == [] and alerts.get("resolved", []) == [], alerts
