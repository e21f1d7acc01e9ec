"""The record of a trained version: everything Michelangelo's model repository keeps.

Who trained it and when, the code and library versions, the full configuration (spec,
resolved parameters, every search trial), the exact features and their views, the training,
validation and test data (path, content hash, rows, time range), per-feature distributions,
importance and partial dependence, metrics on validation and test overall and per partition,
and the same metrics for the naive baseline with the gain over it.
"""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from maquette.training.explain import feature_profiles, importance, partial_dependence
from maquette.training.model_types import TrainedModel, TrainingData, Trial
from maquette.version_record import VersionRecord

LIBRARIES = (
    "maquette",
    "lightgbm",
    "scikit-learn",
    "feast",
    "bentoml",
    "prefect",
    "evidently",
    "pandas",
    "numpy",
    "pyarrow",
    "duckdb",
)


def code_version(project_dir: Path) -> dict[str, Any]:
    """The git commit of the project (and whether the work tree had changes), if it is a repo."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(project_dir), *args],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit, "dirty": bool(git("status", "--porcelain")) if commit else None}


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def baseline_summary(data: TrainingData, evaluation: dict[str, Any]) -> dict[str, Any]:
    test = evaluation["test"]
    keys = ", ".join(data.spec.baseline_by) or "everything"
    what = "mean" if data.spec.task == "regression" else "rate"
    description = f"Naive baseline: the training window's {what} of the label per {keys}"
    if data.spec.task == "regression":
        model, base = test["model"]["rmse"], test["baseline"]["rmse"]
        gain = f"Test RMSE {model:.2f} vs baseline {base:.2f}: {100 * (base - model) / base:.1f}% lower."
        beats = model < base
    else:
        model, base = test["model"]["auc"], test["baseline"]["auc"]
        gain = f"Test AUC {model:.3f} vs baseline {base:.3f}: {model - base:+.3f}."
        beats = model > base
    return {"description": description, "gain": gain, "beats_baseline": bool(beats)}


def build_record(
    name: str,
    version: str,
    data: TrainingData,
    model: TrainedModel,
    trials: list[Trial],
    best: Trial,
    decisions: list[dict[str, Any]],
    evaluation: dict[str, Any],
    started: datetime,
    ended: datetime,
    project_dir: Path,
    executor: dict[str, Any] | None = None,
) -> VersionRecord:
    """The full record of one version."""
    spec = data.spec
    ranked = importance(data, model)
    numeric_top = [f for f in ranked if f not in model.categories][:3]
    raw = {
        "name": name,
        "version": version,
        "task": spec.task,
        "algorithm": spec.algorithm,
        "feature_service": spec.feature_service,
        "trained_by": {"user": getpass.getuser(), "host": socket.gethostname()},
        "executor": executor or {"type": "local"},
        "started_at": started.isoformat(),
        "ended_at": ended.isoformat(),
        "seconds": (ended - started).total_seconds(),
        "code_version": code_version(project_dir),
        "libraries": library_versions(),
        "spec": spec.model_dump(mode="json"),
        "params": {**best.params, "best_iteration": best.best_iteration},
        "search": {
            "metric": spec.search.metric or ("rmse" if spec.task == "regression" else "auc"),
            "method": spec.search.method,
            "best_trial": best.number,
            "trials": [
                {
                    "number": t.number,
                    "params": t.params,
                    "score": t.score,
                    "best_iteration": t.best_iteration,
                    "seconds": t.seconds,
                    "pruned": t.pruned,
                }
                for t in trials
            ],
        },
        "features": [{"name": f, "view": data.feature_views[f]} for f in data.features],
        "feature_names": data.features,
        "categories": data.categories,
        "data": data.data_refs,
        "label_shift": data.label_shift,
        "label_shift_note": "RMSLE is computed on label + label_shift (the training minimum moved to 0)",
        "threshold": model.threshold,
        "distributions": feature_profiles(data.frames["train"], data.features),
        "importance": ranked,
        "partial_dependence": partial_dependence(data, model, numeric_top),
        "partitions": decisions,
        "metrics": evaluation,
        "baseline": baseline_summary(data, evaluation),
    }
    # Through JSON as record.json has always been written (numpy scalars as `json` writes them),
    # so the typed record holds exactly what the file will.
    return VersionRecord.model_validate(json.loads(json.dumps(raw, default=str)))
