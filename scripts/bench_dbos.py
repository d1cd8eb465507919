"""DBOS Transact doing the RemoveVm work against the same simulated agent.

One workflow per command: one step per task submission (the agent's
`create_tasks` with one task, keyed like ours), one step that waits for the
agent (polls `task_statuses` until the four tasks have ended), and an end step
(`clear_tasks`). DBOS runs embedded, its system database on the same kind of
store as ours: a SQLite file, or a schema of the same PostgreSQL database.

Up to `DIRECT_LIMIT` commands in flight, each in-flight command is a thread
calling the workflow function (the connection pool is sized to fit). Beyond
that, PostgreSQL's 100 connections (shared with other users of the server) and
DBOS's pool cannot give a thread each: the commands are enqueued on a DBOS
queue (durably in flight as ENQUEUED/PENDING workflows), `DIRECT_LIMIT` of them
running at once, the queue polled every 10 ms.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dbos import DBOS, DBOSConfig

from orchestrator import TaskSpec
from orchestrator.testing import SimulatedAgent
from scripts.bench_agent import TimedAgent, seed_agent_images
from scripts.bench_numbers import LifecycleRun, Stopwatch
from scripts.bench_plan import DISKS_PER_VM
from scripts.bench_stores import PG_DSN, Scratch, Store

DIRECT_LIMIT = 100
QUEUE_WORKERS = 50
SQLITE_POOL_CAP = 110
POSTGRES_POOL_CAP = 60  # the shared server allows 100 connections in all
QUEUE_NAME = "bench_remove_vm"
POLL_SLEEP = 0.002
STEPS_PER_WORKFLOW = DISKS_PER_VM + 2


class _Current:
    """The agent the workflows talk to (a workflow's arguments must be plain data)."""

    agent: TimedAgent | None = None
    done: queue.Queue[str] | None = None  # outcomes, as workflows finish (in-process, not durable)


def _agent() -> TimedAgent:
    assert _Current.agent is not None, "no agent set for the DBOS workflows"
    return _Current.agent


@DBOS.step()
def submit_task(key: str, image_id: str) -> str:
    spec = TaskSpec(key=key, verb="delete_image", args={"storage_domain_id": "sd-1", "image_id": image_id})
    result = _agent().create_tasks([spec])[0]
    if not result.accepted or result.agent_task_id is None:
        raise RuntimeError(f"agent refused {key}: {result.error}")
    return result.agent_task_id


@DBOS.step()
def wait_for_agent(agent_task_ids: list[str]) -> dict[str, str]:
    wanted = set(agent_task_ids)
    while True:
        seen = {s.agent_task_id: s for s in _agent().task_statuses() if s.agent_task_id in wanted}
        if len(seen) == len(wanted) and all(s.ended for s in seen.values()):
            return {i: f"{s.state.value}/{s.result.value}" for i, s in seen.items()}
        if len(seen) < len(wanted):
            raise RuntimeError("the agent lost a task")
        time.sleep(POLL_SLEEP)


@DBOS.step()
def end_step(agent_task_ids: list[str]) -> None:
    _agent().clear_tasks(agent_task_ids)


@DBOS.workflow()
def remove_vm_workflow(vm_number: int) -> str:
    workflow_id = DBOS.workflow_id
    ids = [submit_task(f"{workflow_id}/task-{k}", f"img-{vm_number:04d}-{k}") for k in range(1, DISKS_PER_VM + 1)]
    outcome = wait_for_agent(ids)
    end_step(ids)
    result = "succeeded" if all(v == "finished/success" for v in outcome.values()) else "failed"
    if _Current.done is not None:
        _Current.done.put(result)
    return result


@dataclass
class DbosRun(LifecycleRun):
    mode: str
    succeeded: int


def dbos_config(store: Store, pool_size: int) -> DBOSConfig:
    config: DBOSConfig = {
        "name": "orchestrator-bench",
        "log_level": "WARNING",
        "sys_db_pool_size": pool_size,
    }
    if store.backend == "sqlite":
        config["system_database_url"] = store.url
    else:
        assert store.schema is not None
        config["system_database_url"] = PG_DSN
        config["dbos_system_schema"] = store.schema
    return config


def _launch(store: Store, pool_size: int) -> None:
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config=dbos_config(store, pool_size))
    DBOS.launch()


def _run_direct(in_flight: int, commands: int) -> list[str]:
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="bench-dbos") as pool:
        return list(pool.map(remove_vm_workflow, range(1, commands + 1)))


def _run_queued(in_flight: int, commands: int) -> list[str]:
    """Keep `in_flight` workflows enqueued or running; learn of each end in-process (no polling of DBOS)."""
    dbos_queue = DBOS.register_queue(QUEUE_NAME, worker_concurrency=QUEUE_WORKERS, polling_interval_sec=0.01)
    done: queue.Queue[str] = queue.Queue()
    _Current.done = done
    outcomes: list[str] = []
    next_vm, live = 1, 0
    try:
        while len(outcomes) < commands:
            while next_vm <= commands and live < in_flight:
                dbos_queue.enqueue(remove_vm_workflow, next_vm)
                next_vm, live = next_vm + 1, live + 1
            outcomes.append(done.get(timeout=600))
            live -= 1
    finally:
        _Current.done = None
    return outcomes


@dataclass
class RunHooks:
    """Called around the timed part of a run (after DBOS launched, before it is destroyed)."""

    started: Callable[[], None] = lambda: None
    finished: Callable[[], None] = lambda: None


def pool_cap(backend: str) -> int:
    return SQLITE_POOL_CAP if backend == "sqlite" else POSTGRES_POOL_CAP


def run_dbos(scratch: Scratch, store: Store, in_flight: int, commands: int, hooks: RunHooks | None = None) -> DbosRun:
    """Run `commands` workflows, `in_flight` at a time, on a fresh DBOS system database `store`."""
    hooks = hooks or RunHooks()
    direct = in_flight <= DIRECT_LIMIT
    pool = min(in_flight + 10, pool_cap(store.backend)) if direct else QUEUE_WORKERS + 10
    agent = SimulatedAgent.open(scratch.agent_path("dbos"), task_seconds=0.0)
    seed_agent_images(agent, commands + 1)
    timed = TimedAgent(agent)
    _Current.agent = timed
    try:
        _launch(store, pool_size=pool)
        remove_vm_workflow(commands + 1)  # warm-up, not timed
        timed.busy_seconds = 0.0
        hooks.started()
        watch = Stopwatch()
        outcomes = _run_direct(in_flight, commands) if direct else _run_queued(in_flight, commands)
        seconds = watch.seconds
        hooks.finished()
    finally:
        DBOS.destroy()
        _Current.agent = None
        agent.close()
        scratch.drop(store)
    mode = f"{in_flight} threads, pool {pool}" if direct else f"queue, {QUEUE_WORKERS} workers"
    return DbosRun(
        seconds=seconds,
        tasks=commands * DISKS_PER_VM,
        agent_seconds=timed.busy_seconds,
        mode=mode,
        succeeded=sum(1 for o in outcomes if o == "succeeded"),
    )
