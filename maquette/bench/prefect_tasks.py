"""The flow `maquette bench prefect-database` times, in a process of its own:
`python -m maquette.bench.prefect_tasks N [--plain]` prints one JSON line of figures.

N tasks are submitted at once to Prefect's default (thread pool) task runner; the flow's wall
time is what its caller waits, `recorded_s` the time until the server has every task run
Completed (Prefect records task runs from the events the flow sends, after it returns).
`--plain`: the same N calls with no Prefect at all, the floor.
"""

from __future__ import annotations

import argparse
import json
import time

RECORD_TIMEOUT_S = 300.0
PAGE = 200


def square(i: int) -> int:
    return i * i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=int)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    if args.plain:
        start = time.perf_counter()
        sum(square(i) for i in range(args.tasks))
        print(json.dumps({"flow_s": time.perf_counter() - start}))
        return
    print(json.dumps(_timed_flow(args.tasks)))


def _timed_flow(tasks: int) -> dict[str, float]:
    from prefect import flow, task

    work = task(name="bench-square")(square)

    @flow(name="bench-prefect-database")
    def many(n: int) -> int:
        futures = [work.submit(i) for i in range(n)]
        return sum(f.result() for f in futures)

    start = time.monotonic()
    state = many(tasks, return_state=True)
    flow_s = time.monotonic() - start
    if not state.is_completed():
        raise SystemExit(f"the flow ended {state.type}: {state.message}")
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    _wait_until_recorded(run_id, tasks)
    return {"flow_s": flow_s, "recorded_s": time.monotonic() - start}


def _wait_until_recorded(run_id: object, tasks: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    completed = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
    )
    of_run = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            recorded, page = 0, PAGE
            while page == PAGE:  # the API reads at most 200 at a time
                page = len(
                    client.read_task_runs(
                        flow_run_filter=of_run,
                        task_run_filter=completed,
                        limit=PAGE,
                        offset=recorded,
                    )
                )
                recorded += page
            if recorded >= tasks:
                return
            time.sleep(0.1)
    raise SystemExit(f"the server did not record {tasks} completed task runs in time")


if __name__ == "__main__":
    main()
