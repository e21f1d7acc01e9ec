"""Training's fits on Ray (`training.executor: ray`, issue 21 item 1): a local Ray cluster trains
flight_delay, search trials and partition models as Ray tasks, and gets what the local executor
got with the same seed: the same trials, best parameters, partitions and metrics. The record says
where it ran."""

from __future__ import annotations

from typing import Any

import pytest

from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.model_spec import TrainingSettings
from maquette.training import pipeline as training
from maquette.training.executors import fit_executor

pytestmark = pytest.mark.ray

# What must not depend on where the fits ran (times and who/when excluded).
SAME = ("params", "partitions", "metrics", "baseline", "importance")


def _search(record: Any) -> list[tuple[Any, ...]]:
    return [(t.params, t.score, t.best_iteration) for t in record.search.trials]


@pytest.mark.slow
def test_flight_delay_trained_on_ray_equals_the_local_run_with_the_same_seed(
    loaded_project: Settings, trained: dict[str, Any]
) -> None:
    local = trained["flight_delay"].record  # the session's run: training.executor local
    on_ray = loaded_project.model_copy(deep=True)
    on_ray.training.executor = "ray"
    on_ray.training.ray_workers = 2

    record = training.train(on_ray, "flight_delay").record

    assert record.executor.type == "ray" and record.executor.workers == 2
    assert local.executor.type == "local"
    assert len(record.search.trials) == len(local.search.trials) >= 2
    assert _search(record) == _search(local)
    assert record.search.best_trial == local.search.best_trial
    for field in SAME:
        assert getattr(record, field) == getattr(local, field), field
    assert [d.partition for d in record.partitions] == ["EWR", "JFK", "LGA"]


def test_ray_without_the_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with (
        pytest.raises(ConfigError, match=r"maquette\[ray\]"),
        fit_executor(TrainingSettings(executor="ray")),
    ):
        pass


def test_a_ray_address_nothing_answers_is_a_config_error_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with (
        pytest.raises(ConfigError, match=r"could not start or reach Ray \(auto\)") as raised,
        fit_executor(TrainingSettings(executor="ray", ray_address="auto")),
    ):
        pass
    assert "ray start --head" in raised.value.remedy
