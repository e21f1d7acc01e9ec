"""Alerts: thresholds from the settings checked against live metrics, drift and freshness.

An alert is recorded once (an append-only JSON-lines file in the offline store, keyed so the
same breach is not raised again on the next run), printed by the caller, POSTed to the
optional webhook, and, if the model says so, starts the training flow for a candidate version
(promoted only when `promote_retrained` is set).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from maquette import registry
from maquette.config import Settings
from maquette.training import pipeline as training

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

# metric column -> (threshold field, breach when the value is above?)
CHECKS = {
    "rmse": ("rmse_above", True),
    "mae": ("mae_above", True),
    "r2": ("r2_below", False),
    "auc": ("auc_below", False),
    "log_loss": ("log_loss_above", True),
}
ACCURACY_KINDS = {"accuracy", "drift"}

log = logging.getLogger("maquette.monitoring")


@dataclass
class Alert:
    kind: str  # accuracy | drift | missing_features | freshness
    model: str | None
    version: str | None
    partition: str | None
    window_start: str | None
    metric: str
    value: float
    threshold: float
    message: str

    @property
    def key(self) -> str:
        return (
            "|".join(
                str(v)
                for v in (self.kind, self.model, self.version, self.partition, self.window_start)
            )
            + f"|{self.metric}"
        )


def alerts_path(settings: Settings) -> Path:
    return settings.offline_store / "monitoring" / "alerts.jsonl"


def metric_alerts(settings: Settings, name: str, series: pd.DataFrame) -> list[Alert]:
    """Accuracy and missing-feature breaches in a metrics series (one row per window)."""
    limits = settings.model_spec(name).monitoring.thresholds
    found = []
    for row in series.to_dict("records"):
        where = f"{name}:{row['version']} partition {row['partition']}, {row['window']} window "
        where += f"from {pd.Timestamp(row['window_start']):%Y-%m-%d %H:%M}"
        for metric, (field, above) in CHECKS.items():
            limit = getattr(limits, field)
            value = row.get(metric)
            if limit is None or value is None or pd.isna(value):
                continue
            if row["labelled"] < limits.min_labelled:
                continue
            if (value > limit) if above else (value < limit):
                word = "above" if above else "below"
                found.append(
                    Alert(
                        "accuracy",
                        name,
                        str(row["version"]),
                        str(row["partition"]),
                        str(row["window_start"]),
                        metric,
                        float(value),
                        limit,
                        f"{where}: {metric} {value:.4g} is {word} {limit:g} "
                        f"({row['labelled']} labelled predictions).",
                    )
                )
        rate = row["missing_feature_rate"]
        limit = limits.missing_feature_rate_above
        if limit is not None and rate > limit:
            found.append(
                Alert(
                    "missing_features",
                    name,
                    str(row["version"]),
                    str(row["partition"]),
                    str(row["window_start"]),
                    "missing_feature_rate",
                    float(rate),
                    limit,
                    f"{where}: {rate:.1%} of predictions had a missing or stale feature "
                    f"(limit {limit:.1%}).",
                )
            )
    return found


def drift_alerts(settings: Settings, name: str, reports: Iterable[Any]) -> list[Alert]:
    """Windows whose share of drifted features is above the model's limit."""
    limit = settings.model_spec(name).monitoring.thresholds.drift_share_above
    if limit is None:
        return []
    return [
        Alert(
            "drift",
            name,
            r.version,
            "all",
            r.window_start,
            "drift_share",
            r.drift_share,
            limit,
            f"{name}:{r.version}, window from {r.window_start[:10]}: {r.drift_share:.0%} of "
            f"features drifted from the training reference (limit {limit:.0%}): "
            f"{', '.join(r.drifted_features)}.",
        )
        for r in reports
        if r.drift_share > limit
    ]


def record(settings: Settings, alerts: list[Alert]) -> list[Alert]:
    """Append the alerts not recorded before; return those (the new ones)."""
    path = alerts_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = (
        {json.loads(line)["key"] for line in path.read_text().splitlines()}
        if path.is_file()
        else set()
    )
    new = []
    with path.open("a") as out:
        for alert in alerts:
            if alert.key in seen:
                continue
            seen.add(alert.key)
            new.append(alert)
            out.write(json.dumps({"key": alert.key, **asdict(alert)}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return new


def recorded(settings: Settings) -> list[dict[str, Any]]:
    path = alerts_path(settings)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def send_webhook(settings: Settings, alerts: list[Alert]) -> str | None:
    """POST new alerts to the webhook; the error text if it failed (an alert is never lost)."""
    url = settings.monitoring.webhook
    if not url or not alerts:
        return None
    import httpx  # only needed when a webhook is set

    try:
        response = httpx.post(
            url,
            json={"source": "maquette", "alerts": [asdict(a) for a in alerts]},
            timeout=settings.monitoring.webhook_timeout_s,
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return f"webhook {url} failed: {exc} (alerts are still in {alerts_path(settings)})"
    return None


def retrain(settings: Settings, name: str) -> str:
    """Start training a candidate of `name` after an alert: the deployment if one runs, else inline.

    Returns what happened, for the run summary (with why it trained inline, when it did).
    """
    spec = settings.model_spec(name).monitoring
    alias = settings.serving.default_alias if spec.promote_retrained else None
    started, unavailable = _run_deployment(name, alias)
    if started:
        return started
    version = training.train(settings, name)
    if alias:
        registry.promote(settings, version.tag, alias)
        done = f"trained {version.tag} and promoted it to @{alias}"
    else:
        done = f"trained candidate {version.tag} (not promoted; `maquette models promote "
        done += f"{version.tag}`)"
    return f"{done}; inline, as {unavailable}"


def _run_deployment(name: str, promote: str | None) -> tuple[str | None, str]:
    """Start a run of deployment train/<name>: (what started, ""), or (None, why it cannot).

    Only a missing deployment or an unreachable server lets the caller train inline (logged as
    a warning); any other error of the server or the run raises, so a broken platform is seen.
    """
    deployment = f"train/{name}"
    unset = "no Prefect server is set (PREFECT_API_URL; `maquette up` runs one)"
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        return None, unset  # a plain call: not worth the seconds Prefect takes to import
    # Lazy: Prefect takes seconds to import, and only a retraining needs it here.
    import httpx
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:  # no server of the platform's: never start a throwaway one
        return None, unset
    try:
        # A deployment outlives its runner in the server's database: a run created while no
        # runner polls for it (deployments stopped or given up) would wait forever, unseen.
        if not _served(deployment):
            reason = (
                f"no runner serves deployment {deployment} on the Prefect server at {url} "
                "(`maquette up --component deployments` starts it)"
            )
        else:
            started = run_deployment(
                deployment, parameters={"name": name, "promote": promote}, timeout=0
            )
            run = cast("FlowRun", started)  # called from sync code: the run, not a coroutine
            return f"started training run {run.name} ({run.id}) of deployment {deployment}", ""
    except ObjectNotFound:
        reason = (
            f"the Prefect server at {url} has no deployment {deployment} "
            "(`maquette up` serves it with the deployments component)"
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        reason = f"the Prefect server at {url} is unreachable ({exc})"
    log.warning("retraining %s inline: %s", name, reason)
    return None, reason


def _served(deployment: str) -> bool:
    """Whether a runner polls for this deployment's runs (Prefect marks it READY then)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import DeploymentStatus

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(deployment).status == DeploymentStatus.READY
