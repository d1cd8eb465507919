"""Benchmark of the HTTP API and the console's live updates, on SQLite and PostgreSQL.

1. Latency of `show` (GET /api/v1/commands/{id}) and "tasks of an entity"
   (GET /api/v1/entities/vm/{id}/tasks) under a loopback load generator (wrk
   with a Lua script rotating over ids when /usr/bin/wrk exists, else a small
   concurrent httpx client), with 1,000 commands in the store: 900 ended, 100
   in flight (their tasks planned on their VMs). The service runs without an
   engine, so nothing moves while it is measured.
2. The cost of the console's live updates with 100 commands in flight: the
   service runs the engine (tasks of 5 s, a driver keeping 100 RemoveVm
   commands in flight); simulated consoles do what console.js
   does (an EventSource on /api/v1/events, and a fetch of the overview's live
   part for every `change`). Reported: the requests per second the consoles
   make, and the service's CPU with 0, 1 and 10 consoles (from /proc).

Every figure is the median of --runs runs. Prints a table and writes JSON to
bench-results/api-<time>.json. Only loopback addresses are used.

    .venv/bin/python scripts/bench_api.py [--runs 3] [--seconds 5] [--live-seconds 12] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.bootstrap import EngineOptions, Orchestrator, run_engine  # noqa: E402
from orchestrator.config import load_engine_settings  # noqa: E402

PG_DSN = os.environ.get("ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
RESULTS = REPO / "bench-results"
ENDED, IN_FLIGHT = 900, 100
LIVE_IN_FLIGHT = 100
LIVE_VMS = 3000  # removed one by one while the live updates are measured
CONNECTIONS = 8


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    requests_per_second: float


@dataclass
class LiveCost:
    consoles: int
    console_requests_per_second: float
    events_per_second: float
    service_cpu_percent: float


@dataclass
class BackendResult:
    backend: str
    latency: dict[str, Latency] = field(default_factory=dict)
    live: list[LiveCost] = field(default_factory=list)


# ---- stores and the service ------------------------------------------------------------------


@contextmanager
def store_for(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'store.db'}"
        return
    schema = f"bench_api_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def fill_store(store: str, agent_state: Path) -> tuple[list[str], list[str]]:
    """1,000 HibernateVm commands: 900 run to their end, 100 accepted (in flight). Their ids, and the VMs in flight."""
    os.environ["ORCHESTRATOR_AGENT_TASK_SECONDS"] = "0"
    with Orchestrator.open(store, agent_state=agent_state, create=True) as orch:
        orch.seed(vms=ENDED + IN_FLIGHT, disks=1)
        vms = [f"vm-{n:04d}" for n in range(1, ENDED + IN_FLIGHT + 1)]
        ended = orch.submit_many([("HibernateVm", {"vm_id": vm}) for vm in vms[:ENDED]])
        stop = threading.Event()
        run_engine(orch, load_engine_settings(poll_interval=0.05), EngineOptions(until_idle=True), stop)
        flying = orch.submit_many([("HibernateVm", {"vm_id": vm}) for vm in vms[ENDED:]])
        ids = [str(r.command_id) for r in [*ended, *flying] if not isinstance(r, Exception)]
    assert len(ids) == ENDED + IN_FLIGHT, f"only {len(ids)} commands were accepted"
    return ids, vms[ENDED:]


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str


@contextmanager
def service(
    store: str, agent_state: Path, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[Service]:
    url_file = workdir / f"api-{uuid.uuid4().hex[:6]}.url"
    command = [
        sys.executable, "-m", "orchestrator", "--store", store, "--agent-state", str(agent_state),
        "serve", "--listen", "127.0.0.1:0", "--url-file", str(url_file), *args,
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | (env or {})
    log = workdir / f"{url_file.stem}.log"  # a file, not a pipe: a full pipe would stall the service
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=environment, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start: {log.read_text()}")
            time.sleep(0.05)
        yield Service(proc, url_file.read_text().strip())
    except BaseException:
        print(f"the service's log:\n{log.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- latency ------------------------------------------------------------------------------------

LUA = """
paths = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""


def wrk_latency(url: str, paths: list[str], seconds: float, workdir: Path) -> Latency:
    script = workdir / f"paths-{uuid.uuid4().hex[:6]}.lua"
    script.write_text(LUA % ", ".join(json.dumps(p) for p in paths))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} failed answers:\n{out}")
    return Latency(_wrk_ms(out, "50%"), _wrk_ms(out, "99%"), float(re.findall(r"Requests/sec:\s+([\d.]+)", out)[0]))


def _wrk_ms(out: str, percentile: str) -> float:
    value, unit = re.findall(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)[0]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def httpx_latency(url: str, paths: list[str], seconds: float) -> Latency:
    """The fallback load generator: CONNECTIONS threads, each with its own keep-alive connection."""
    samples: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(offset: int) -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=30) as client:
            n = offset
            while time.monotonic() < deadline:
                started = time.perf_counter()
                client.get(paths[n % len(paths)]).raise_for_status()
                mine.append(time.perf_counter() - started)
                n += CONNECTIONS
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(samples)
    return Latency(ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000, len(ordered) / seconds)


def measure_latency(url: str, paths: list[str], seconds: float, runs: int, workdir: Path) -> Latency:
    with httpx.Client(base_url=url, timeout=30) as client:  # warm the caches and connections first
        for path in paths[:50]:
            client.get(path).raise_for_status()
    results = [
        wrk_latency(url, paths, seconds, workdir) if shutil.which("wrk") else httpx_latency(url, paths, seconds)
        for _ in range(runs)
    ]
    return Latency(
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.requests_per_second for r in results),
    )


# ---- the console's live updates ---------------------------------------------------------------------


class Driver:
    """Keeps LIVE_IN_FLIGHT RemoveVm commands in flight: a new one, on a VM not yet used, for each that ended.

    RemoveVm, because the flows that check a storage domain's status refuse every command once the
    domain's aggregate comes back from a snapshot (see the report); RemoveVm checks none.
    """

    def __init__(self, url: str, vms: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.unused = [f"vm-{n:04d}" for n in range(vms, 0, -1)]
        self.submitted: set[str] = set()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as api:
            while not self.stop.is_set():
                try:
                    self._top_up(api)
                except (httpx.HTTPError, KeyError, ValueError) as exc:  # go on: a stalled driver stalls the log
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.5)

    def _top_up(self, api: httpx.Client) -> None:
        flying = api.get("/api/v1/commands", params={"in_flight": "true", "limit": 1000})
        flying.raise_for_status()
        self.submitted &= {c["command_id"] for c in flying.json()["commands"]}
        while len(self.submitted) < LIVE_IN_FLIGHT and self.unused and not self.stop.is_set():
            answer = api.post("/api/v1/commands", json={"flow": "RemoveVm", "params": {"vm_id": self.unused.pop()}})
            if answer.status_code == 201:
                self.submitted.add(answer.json()["command_id"])
            else:
                self.errors.append(f"submit answered {answer.status_code}: {answer.text[:200]}")

    def in_flight(self) -> int:
        with httpx.Client(base_url=self.url, timeout=30) as api:
            return len(api.get("/api/v1/commands", params={"in_flight": "true", "limit": 1000}).json()["commands"])


async def consoles(url: str, count: int, seconds: float) -> tuple[int, int]:
    """`count` consoles for `seconds`: (overview parts fetched, change events received)."""
    fetched = events = 0
    deadline = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal fetched, events
        async with client.stream("GET", "/api/v1/events") as stream:
            async for line in stream.aiter_lines():
                if time.monotonic() > deadline:
                    return
                if line == "event: change":
                    events += 1
                    (await client.get("/?part=live", headers={"Accept": "text/html"})).raise_for_status()
                    fetched += 1

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=seconds + 20)) as client:
        tasks = [asyncio.create_task(one(client)) for _ in range(count)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return fetched, events


def measure_live(service_: Service, seconds: float, runs: int) -> list[LiveCost]:
    driver = Driver(service_.url, LIVE_VMS)
    driver.thread.start()
    try:
        deadline = time.monotonic() + 60
        while driver.in_flight() < LIVE_IN_FLIGHT * 0.9 and time.monotonic() < deadline:
            time.sleep(0.5)
        out = []
        if driver.errors:
            print(f"driver: {len(driver.errors)} error(s), first: {driver.errors[0]}", file=sys.stderr)
        for count in (0, 1, 10):
            samples = []
            for _ in range(runs):
                before, started = cpu_seconds(service_.proc.pid), time.monotonic()
                fetched, events = asyncio.run(consoles(service_.url, count, seconds)) if count else (0, 0)
                if not count:
                    time.sleep(seconds)
                elapsed = time.monotonic() - started
                cpu = (cpu_seconds(service_.proc.pid) - before) / elapsed * 100
                samples.append(LiveCost(count, (fetched + events) / elapsed, events / elapsed, cpu))
            state = f"{driver.in_flight()} in flight, {len(driver.unused)} VMs left, {len(driver.errors)} errors"
            print(f"  {count} console(s): {state}", file=sys.stderr)
            out.append(
                LiveCost(
                    count,
                    statistics.median(s.console_requests_per_second for s in samples),
                    statistics.median(s.events_per_second for s in samples),
                    statistics.median(s.service_cpu_percent for s in samples),
                )
            )
        return out
    finally:
        driver.stop.set()
        driver.thread.join(10)


# ---- running it all ----------------------------------------------------------------------------


def bench_backend(backend: str, args: argparse.Namespace) -> BackendResult:
    result = BackendResult(backend)
    with tempfile.TemporaryDirectory(prefix=f"bench-api-{backend}-") as tmp, store_for(backend, Path(tmp)) as store:
        workdir = Path(tmp)
        agent_state = workdir / "agent.db"
        print(f"{backend}: filling the store with {ENDED + IN_FLIGHT} commands ...", file=sys.stderr)
        ids, flying_vms = fill_store(store, agent_state)
        with service(store, agent_state, workdir) as api:
            print(f"{backend}: measuring latency ...", file=sys.stderr)
            show_paths = [f"/api/v1/commands/{i}" for i in ids]
            task_paths = [f"/api/v1/entities/vm/{vm}/tasks" for vm in flying_vms]
            result.latency["show"] = measure_latency(api.url, show_paths, args.seconds, args.runs, workdir)
            result.latency["tasks of an entity"] = measure_latency(
                api.url, task_paths, args.seconds, args.runs, workdir
            )
    with tempfile.TemporaryDirectory(prefix=f"bench-live-{backend}-") as tmp, store_for(backend, Path(tmp)) as store:
        workdir = Path(tmp)
        agent_state = workdir / "agent.db"
        with Orchestrator.open(store, agent_state=agent_state, create=True) as orch:
            orch.seed(vms=LIVE_VMS, disks=1)
        env = {"ORCHESTRATOR_AGENT_TASK_SECONDS": "5", "ORCHESTRATOR_POLL_INTERVAL": "0.5"}
        with service(store, agent_state, workdir, "--engine", env=env) as api:
            print(f"{backend}: measuring live updates with {LIVE_IN_FLIGHT} commands in flight ...", file=sys.stderr)
            result.live = measure_live(api, args.live_seconds, args.runs)
    return result


def report(results: list[BackendResult], args: argparse.Namespace) -> None:
    tool = "wrk" if shutil.which("wrk") else "httpx threads"
    print(f"\nAPI latency, {ENDED + IN_FLIGHT} commands in the store ({tool}, {CONNECTIONS} connections, "
          f"{args.seconds:g}s runs, medians of {args.runs})")  # fmt: skip
    print(f"{'store':<10} {'request':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for r in results:
        for name, lat in r.latency.items():
            print(f"{r.backend:<10} {name:<20} {lat.p50_ms:>8.2f} {lat.p99_ms:>8.2f} {lat.requests_per_second:>8.0f}")
    print(f"\nLive updates, {LIVE_IN_FLIGHT} commands in flight (engine in the service; {args.live_seconds:g}s runs)")
    print(f"{'store':<10} {'consoles':>8} {'console req/s':>14} {'events/s':>9} {'service CPU %':>14}")
    for r in results:
        for live in r.live:
            print(
                f"{r.backend:<10} {live.consoles:>8} {live.console_requests_per_second:>14.2f} "
                f"{live.events_per_second:>9.2f} {live.service_cpu_percent:>14.1f}"
            )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "load_generator": tool,
        "connections": CONNECTIONS,
        "runs": args.runs,
        "seconds": args.seconds,
        "live_seconds": args.live_seconds,
        "results": [
            {
                "backend": r.backend,
                "latency": {k: vars(v) for k, v in r.latency.items()},
                "live": [vars(v) for v in r.live],
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one latency run")
    parser.add_argument("--live-seconds", type=float, default=12.0, help="length of one live-update run")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    results = [bench_backend(b.strip(), args) for b in args.backends.split(",") if b.strip()]
    report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
