"""The service's OpenAPI document tells the truth: Schemathesis against a real `bentoml serve`.

Cases generated from /docs.json, both fitting the schema and breaking it, are sent to the
service (issue 17, item 12); each answer must not be a server error, must have a status the
document lists, and must match the schema documented for it (one error model for every 4xx).
Predictions go to Redis database 2 of the session's Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from maquette.config import Settings
from tests.test_serving import running_service

CASES_PER_MODE = 600  # positive and negative: 1,200 generated requests in all
BUDGET_S = 600  # the whole run, bounded (a healthy run takes ~1-2 minutes)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def contract_service(production, loaded_project: Settings) -> Iterator[str]:
    redis_url = str(loaded_project.redis.url).rsplit("/", 1)[0] + "/2"
    env = {"MAQUETTE_REDIS_URL": redis_url, "MAQUETTE_PREDICTIONS_STREAM": "maquette:contract"}
    with running_service(loaded_project, env) as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S + 120)
def test_every_answer_is_one_the_openapi_document_lists(contract_service: str) -> None:
    schema = schemathesis.openapi.from_url(f"{contract_service}/docs.json")
    failures: list[str] = []
    sent: list[int] = []
    deadline = time.monotonic() + BUDGET_S

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        # Every generated case runs (no shrinking, no example database): a failure is recorded
        # with its request and the run goes on, so one run reports them all.
        @settings(
            max_examples=CASES_PER_MODE,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(generation_mode=mode))
        def send(case: schemathesis.Case) -> None:
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=contract_service, timeout=30)
            sent.append(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS)
            # A failed check (Schemathesis raises a BaseExceptionGroup): kept with its request.
            except (Failure, FailureGroup) as exc:
                if len(failures) < 20:
                    failures.append(
                        f"{case.method} {case.path} {case.media_type} body={case.body!r:.300}"
                        f" -> {response.status_code} {response.text[:300]}\n{exc}"
                    )

        send()

    assert len(sent) >= 1000, f"only {len(sent)} cases ran within {BUDGET_S} s"
    assert not failures, "\n\n".join(failures)
    assert 500 not in sent
    # The service is still up and answers after all of it.
    assert httpx.get(f"{contract_service}/readyz", timeout=5).status_code == 200
