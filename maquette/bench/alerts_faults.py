"""The faults file of `maquette bench alerts`: what is replayed, how often monitoring looks,
and which faults are injected into the faulty replay, each with the incident it should raise.

    replay:
      start: 2013-12-01          # replayed traffic [start, end), UTC
      end: 2014-01-01
      slot: 1h                   # the replay clock's step (materialize, stream, predict)
      pass_every: 6h             # a monitoring pass (monitor.run(as_of=T)) this often
      sample: null               # share of entity rows replayed (null: all)
    faults:
      - name: AA's daily carrier stats null
        kind: null_features      # null_features | stale_view | label_shift | unit_skew
        start: 2013-12-03        # onset (UTC); repaired `days` later
        days: 3
        view: carrier_daily
        where: "carrier = 'AA'"  # DuckDB SQL over the view's rows
        value: null              # null | 0
        expect: {kind: missing_features, model: flight_delay, columns: [carrier_dep_delay_7d]}

Parsing is pydantic (`FaultsFile`); `load_faults` turns every problem into one ConfigError
naming the fault and field, and `check_faults` checks the names against the project (views,
features, models, the SQL) before anything is replayed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.model_spec import as_utc
from maquette.window_spec import DurationText, parse_duration

FaultKind = Literal["null_features", "stale_view", "label_shift", "unit_skew"]
IncidentKind = Literal["accuracy", "missing_features", "drift", "skew", "freshness"]
KINDS = ("null_features", "stale_view", "label_shift", "unit_skew")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Expected(_Strict):
    """The incident a fault should raise: its kind, model, subject and (some of) its columns."""

    kind: IncidentKind
    model: str | None = Field(None, description="Model the incident names (None: freshness).")
    subject: str | None = Field(
        None, description="Partition value, `all`, or the view (freshness); None: any."
    )
    columns: list[str] = Field(
        default_factory=list, description="Columns the incident must list (all of them)."
    )


class Replay(_Strict):
    """The replayed period and the cadence of the monitoring passes."""

    start: datetime
    end: datetime
    slot: DurationText = "1h"
    pass_every: DurationText = "6h"
    sample: float | None = Field(None, gt=0, le=1)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> Replay:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%Y-%m-%d %H:%M} is not after start")
        if self.pass_interval % self.slot_length:
            raise ValueError(
                f"pass_every {self.pass_every} is not a whole number of slots ({self.slot})"
            )
        return self

    @property
    def slot_length(self) -> timedelta:
        return parse_duration(self.slot)

    @property
    def pass_interval(self) -> timedelta:
        return parse_duration(self.pass_every)


class _Fault(_Strict):
    name: str = Field(min_length=1)
    start: datetime
    days: float = Field(gt=0, description="How long the fault lasts before it is repaired.")
    expect: Expected

    @field_validator("start", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value)

    @property
    def end(self) -> datetime:
        """When the fault is repaired."""
        return self.start + timedelta(days=self.days)

    def active(self, when: datetime) -> bool:
        return self.start <= when < self.end


class NullFeatures(_Fault):
    """The faulty entities' online values of a view written as null (or 0) after every
    materialization: a feature pipeline broken for some entities (D3's incident)."""

    kind: Literal["null_features"]
    view: str
    where: str = Field(min_length=1, description="DuckDB SQL over the view's rows.")
    value: Literal[0] | None = None
    features: list[str] | None = Field(None, description="Features hit (None: all of the view).")


class StaleView(_Fault):
    """A view left out of materialization while the fault lasts: its values go stale."""

    kind: Literal["stale_view"]
    view: str


class LabelShift(_Fault):
    """The labels of matching entity rows moved by `add`, ingested as a label file."""

    kind: Literal["label_shift"]
    model: str
    add: float
    where: str | None = Field(None, description="DuckDB SQL over the entity rows (None: all).")


class UnitSkew(_Fault):
    """One feature served in other units: online value * scale + offset for matching rows."""

    kind: Literal["unit_skew"]
    view: str
    feature: str
    scale: float = 1.0
    offset: float = 0.0
    where: str | None = Field(None, description="DuckDB SQL over the view's rows (None: all).")

    @model_validator(mode="after")
    def _changes_something(self) -> UnitSkew:
        if self.scale == 1.0 and self.offset == 0.0:
            raise ValueError("scale 1 and offset 0 serve the same values: set scale or offset")
        return self


Fault = Annotated[NullFeatures | StaleView | LabelShift | UnitSkew, Field(discriminator="kind")]


class FaultsFile(_Strict):
    """A faults file: the replay and the faults injected into its faulty run."""

    replay: Replay
    faults: list[Fault] = Field(min_length=1)

    @model_validator(mode="after")
    def _inside_replay(self) -> FaultsFile:
        names = [f.name for f in self.faults]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"fault names must be unique; repeated: {dupes}")
        for fault in self.faults:
            if not self.replay.start <= fault.start < self.replay.end:
                raise ValueError(
                    f"fault {fault.name!r} starts {fault.start:%Y-%m-%d %H:%M}, outside the "
                    f"replay [{self.replay.start:%Y-%m-%d}, {self.replay.end:%Y-%m-%d})"
                )
        return self


def _where(error: ErrorDetails, data: Any) -> str:
    """`faults[2] ("LGA shift").add` from pydantic's location of an error."""
    parts: list[str] = []
    for step in error["loc"]:
        if isinstance(step, int):
            parts[-1] += f"[{step}]"
            faults = data.get("faults") if isinstance(data, dict) else None
            if parts[-1].startswith("faults[") and isinstance(faults, list):
                fault = faults[step] if step < len(faults) else None
                if isinstance(fault, dict) and fault.get("name"):
                    parts[-1] += f" ({fault['name']!r})"
        elif step in KINDS:
            continue  # the discriminator's branch: the kind is already in the fault
        else:
            parts.append(str(step))
    return ".".join(parts) or "the file"


def parse_faults(data: Any, source: str = "the faults file") -> FaultsFile:
    """A FaultsFile from parsed YAML; ConfigError listing every problem with where it is."""
    try:
        return FaultsFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"  {_where(e, data)}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(
            f"{source} is not a valid faults file:\n" + "\n".join(problems),
            "Fix those fields; each fault needs name, kind (null_features, stale_view, "
            "label_shift, unit_skew), start, days, expect {kind, model, subject, columns} and "
            "its kind's parameters (see maquette/bench/alerts_faults.py).",
        ) from None


def load_faults(path: Path) -> FaultsFile:
    """Read and parse a faults file (YAML)."""
    if not path.is_file():
        raise ConfigError(
            f"faults file {path} does not exist.",
            "Pass --faults FILE, or keep alert_faults.yaml in the project folder.",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "Fix the file and retry.") from exc
    return parse_faults(data, str(path))


def default_faults_path(settings: Settings) -> Path:
    """The project's own faults file, else the demo's beside the dataset module."""
    own = settings.project_dir / "alert_faults.yaml"
    if own.is_file():
        return own
    module = settings.dataset.module
    if module:
        import importlib.util

        spec = importlib.util.find_spec(module.rpartition(".")[0] or module)
        if spec and spec.submodule_search_locations:
            beside = Path(next(iter(spec.submodule_search_locations))) / "alert_faults.yaml"
            if beside.is_file():
                return beside
    return own
