"""A simulated host agent that outlives the engine.

It keeps its tasks and a small storage model (storage domains, images and
their volumes) in its own SQLite file, so killing the engine does not kill
it. A task completes a configurable time after its creation, whether or not
any engine is running: completion is evaluated whenever anyone talks to the
agent, and its storage effect (create a volume, copy an image, delete an
image) is applied at that moment.

Faults are configured in the state file (`orchestrator agent faults`) or by
`ORCHESTRATOR_AGENT_FAULTS` (JSON, fields of `FaultConfig`): a verb or a share
of tasks fails, creation of a verb is refused, the agent is unreachable or
slow for a period, a share of tasks vanishes, answers are malformed, or it
reports tasks it was never given.

The backend answers with plain data, as a remote agent would over the wire;
`SimulatedAgent` is the client that validates every answer (pydantic) before
the engine sees it. Every task ever created stays in the journal (the `tasks`
table, with `cleared_at` and `vanished`), so tests can check what the agent
really did.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.agent.port import (
    AgentTaskStatus,
    CreateResult,
    StorageView,
    TaskSpec,
    parse_create_results,
    parse_statuses,
    parse_storage,
)
from orchestrator.errors import AgentProtocolError, AgentUnavailableError, StoreError
from orchestrator.store import create_private_file, sqlite_uri

AGENT_STATE_ENV = "ORCHESTRATOR_AGENT_STATE"
TASK_SECONDS_ENV = "ORCHESTRATOR_AGENT_TASK_SECONDS"
FAULTS_ENV = "ORCHESTRATOR_AGENT_FAULTS"
STATE_FILE_MARK = "orchestrator-simulated-agent"


# How an agent server misbehaves on the wire (see orchestrator/testing/agent_server.py):
# http_500 answers HTTP 500; drop closes the connection in the middle of an answer; garbage answers
# a body that is not JSON-RPC; oversize answers a body larger than any client accepts; trickle sends
# the answer a few bytes at a time, slower than a client waits; wrong_pool and future_version make
# identify claim another pool or a protocol version from the future.
NetworkFault = Literal["none", "http_500", "drop", "garbage", "oversize", "trickle", "wrong_pool", "future_version"]


class FaultConfig(BaseModel):
    """Faults the simulated agent injects. Shares are probabilities in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    fail_verbs: list[str] = Field(default_factory=list, description="tasks of these verbs fail")
    fail_share: float = Field(0.0, ge=0, le=1, description="share of tasks that fail")
    fail_ordinals: list[int] = Field(default_factory=list, description="the n-th tasks ever created fail (1-based)")
    refuse_verbs: list[str] = Field(default_factory=list, description="creation refused")
    vanish_share: float = Field(0.0, ge=0, le=1, description="share of tasks that vanish")
    unreachable_until: float = Field(0.0, description="epoch seconds; calls fail until then")
    malformed_until: float = Field(0.0, description="epoch seconds; answers are garbage until then")
    malformed_share: float = Field(0.0, ge=0, le=1, description="share of answers that are garbage")
    phantom_tasks: int = Field(0, ge=0, le=100, description="tasks reported but never given")
    extra_task_seconds: float = Field(0.0, ge=0, description="added to every task's duration")
    call_latency: float = Field(0.0, ge=0, description="seconds each call takes")
    create_answer_latency: float = Field(
        0.0, ge=0, description="seconds a create call's answer is held back after the tasks were made"
    )
    timeout_seconds: float = Field(10.0, gt=0, description="a call slower than this times out")
    network_fault: NetworkFault = Field(
        "none", description="served over HTTP: how the agent server misbehaves until network_fault_until"
    )
    network_fault_until: float = Field(0.0, description="epoch seconds; the network fault lasts until then")
    seed: int = 0

    def network_fault_now(self) -> NetworkFault:
        """The network fault in force at this moment ("none" once its time is up)."""
        return self.network_fault if _now() < self.network_fault_until else "none"


class _VerbArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeleteImageArgs(_VerbArgs):
    storage_domain_id: str
    image_id: str


class CreateVolumeArgs(_VerbArgs):
    storage_domain_id: str
    image_id: str
    volume_id: str
    parent_id: str = ""


class CopyImageArgs(_VerbArgs):
    source_storage_domain_id: str
    source_image_id: str
    target_storage_domain_id: str
    target_image_id: str
    target_volume_id: str


VERB_ARGS: dict[str, type[_VerbArgs]] = {
    "delete_image": DeleteImageArgs,
    "create_volume": CreateVolumeArgs,
    "copy_image": CopyImageArgs,
}

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS tasks ("
    " agent_task_id TEXT PRIMARY KEY, key TEXT UNIQUE NOT NULL, verb TEXT NOT NULL,"
    " args TEXT NOT NULL, state TEXT NOT NULL, result TEXT NOT NULL, message TEXT NOT NULL,"
    " created_at REAL NOT NULL, due_at REAL NOT NULL, fate TEXT NOT NULL,"
    " ended_at REAL, effect_applied INTEGER NOT NULL DEFAULT 0,"
    " reverted INTEGER NOT NULL DEFAULT 0, cleared_at REAL, vanished INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS tasks_running ON tasks (due_at) WHERE state = 'running'",
    "CREATE INDEX IF NOT EXISTS tasks_held ON tasks (created_at) WHERE cleared_at IS NULL AND vanished = 0",
    "CREATE TABLE IF NOT EXISTS storage_domains (storage_domain_id TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS volumes (volume_id TEXT PRIMARY KEY,"
    " image_id TEXT NOT NULL, storage_domain_id TEXT NOT NULL, parent_id TEXT, seed_token TEXT)",
    "CREATE INDEX IF NOT EXISTS volumes_image ON volumes (storage_domain_id, image_id)",
    "CREATE TABLE IF NOT EXISTS faults (id INTEGER PRIMARY KEY CHECK (id = 1), config TEXT NOT NULL)",
]


def default_agent_state_path(store_path: Path | None) -> Path:
    env = os.environ.get(AGENT_STATE_ENV)
    if env:
        return Path(env)
    if store_path is not None:
        return store_path.with_name(store_path.name + ".agent")
    return Path("orchestrator.agent")


def task_seconds_from_env(default: float = 1.0) -> float:
    raw = os.environ.get(TASK_SECONDS_ENV)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"{TASK_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise StoreError(f"{TASK_SECONDS_ENV} must not be negative")
    return value


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _share_hit(seed: int, salt: str, key: str, share: float) -> bool:
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class SimulatedAgentBackend:
    """The agent's side: its state file, its clock-driven tasks and its storage."""

    def __init__(self, path: Path, *, task_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.task_seconds = task_seconds
        self._lock = threading.RLock()
        self._conn = self._open()
        self._rng = random.Random()

    def _open(self) -> sqlite3.Connection:
        fresh = not self.path.exists()
        if fresh:
            if not self.path.parent.exists():
                raise StoreError(f"cannot create agent state {self.path}: directory does not exist")
            create_private_file(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise StoreError(f"{self.path} is not a simulated agent state file")
            if "meta" in tables:
                mark = conn.execute("SELECT value FROM meta WHERE key='kind'").fetchone()
                if not mark or mark[0] != STATE_FILE_MARK:
                    raise StoreError(f"{self.path} is not a simulated agent state file")
            for statement in _SCHEMA:
                conn.execute(statement)
            volume_columns = {r[1] for r in conn.execute("PRAGMA table_info(volumes)")}
            if "seed_token" not in volume_columns:  # state files written before seeds could be undone
                conn.execute("ALTER TABLE volumes ADD COLUMN seed_token TEXT")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (STATE_FILE_MARK,))
            conn.execute("INSERT OR IGNORE INTO faults VALUES (1, ?)", (FaultConfig().model_dump_json(),))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"agent state {self.path} is not readable ({exc})") from exc
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---- faults ------------------------------------------------------------------------

    def faults(self) -> FaultConfig:
        with self._lock:
            row = self._conn.execute("SELECT config FROM faults WHERE id = 1").fetchone()
        config = FaultConfig.model_validate_json(row[0])
        env = os.environ.get(FAULTS_ENV)
        if env:
            try:
                overrides = json.loads(env)
                config = FaultConfig.model_validate({**config.model_dump(), **overrides})
            except (ValueError, ValidationError) as exc:
                raise StoreError(f"{FAULTS_ENV} is not a valid fault configuration: {exc}") from None
        return config

    def set_faults(self, config: FaultConfig) -> None:
        with self._write() as conn:
            conn.execute("UPDATE faults SET config = ? WHERE id = 1", (config.model_dump_json(),))

    def _enter_call(self, faults: FaultConfig) -> None:
        """Simulate the network: outages, latency and timeouts."""
        now = _now()
        if now < faults.unreachable_until:
            raise AgentUnavailableError(
                f"agent unreachable: connection refused (simulated outage, {faults.unreachable_until - now:.1f}s left)"
            )
        if faults.call_latency > 0:
            if faults.call_latency >= faults.timeout_seconds:
                time.sleep(faults.timeout_seconds)
                raise AgentUnavailableError(f"agent did not answer within {faults.timeout_seconds:g}s")
            time.sleep(faults.call_latency)

    def _garbled(self, faults: FaultConfig) -> bool:
        return _now() < faults.malformed_until or (
            faults.malformed_share > 0 and self._rng.random() < faults.malformed_share
        )

    # ---- the agent's calls (plain data in, plain data out) ---------------------------------

    def create_tasks(self, specs: list[dict[str, Any]]) -> Any:
        faults = self.faults()
        self._enter_call(faults)
        now = _now()
        answers: list[dict[str, Any]] = []
        with self._write() as conn:
            self._advance(conn, now, faults)
            domains = {r[0] for r in conn.execute("SELECT storage_domain_id FROM storage_domains")}
            for spec in specs:
                answers.append(self._create_one(conn, spec, now, faults, domains))
        if faults.create_answer_latency > 0:  # the tasks exist; their answer is slow to come back
            time.sleep(faults.create_answer_latency)
        if self._garbled(faults):
            return [{"key": a["key"], "accepted": "yes please"} for a in answers]
        return answers

    def _create_one(
        self, conn: sqlite3.Connection, spec: dict[str, Any], now: float, faults: FaultConfig, domains: set[str]
    ) -> dict[str, Any]:
        key, verb, args = spec["key"], spec["verb"], spec.get("args", {})
        row = conn.execute("SELECT agent_task_id FROM tasks WHERE key = ?", (key,)).fetchone()
        if row:  # idempotency: the same key is the same task
            return {"key": key, "accepted": True, "agent_task_id": row[0]}
        error = self._refusal(verb, args, faults, domains)
        if error:
            return {"key": key, "accepted": False, "error": error}
        fate = "ok"
        if (
            verb in faults.fail_verbs
            or (
                faults.fail_ordinals
                and conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] + 1 in faults.fail_ordinals
            )
            or _share_hit(faults.seed, "fail", key, faults.fail_share)
        ):
            fate = "fail"
        elif _share_hit(faults.seed, "vanish", key, faults.vanish_share):
            fate = "vanish"
        agent_task_id = str(uuid.uuid4())
        due = now + self.task_seconds + faults.extra_task_seconds
        conn.execute(
            "INSERT INTO tasks (agent_task_id, key, verb, args, state, result, message, created_at, due_at, fate)"
            " VALUES (?, ?, ?, ?, 'running', '', '', ?, ?, ?)",
            (agent_task_id, key, verb, json.dumps(args), now, due, fate),
        )
        return {"key": key, "accepted": True, "agent_task_id": agent_task_id}

    @staticmethod
    def _refusal(verb: str, args: dict[str, Any], faults: FaultConfig, domains: set[str]) -> str:
        model = VERB_ARGS.get(verb)
        if model is None:
            return f"unknown verb {verb!r}"
        if verb in faults.refuse_verbs:
            return f"verb {verb} refused (simulated fault)"
        try:
            parsed = model.model_validate(args)
        except ValidationError as exc:
            return f"bad arguments for {verb}: {exc.errors()[0]['msg']}"
        for name, value in parsed.model_dump().items():
            if name.endswith("storage_domain_id") and value not in domains:
                return f"unknown storage domain {value}"
        return ""

    def task_statuses(self) -> Any:
        faults = self.faults()
        self._enter_call(faults)
        now = _now()
        with self._write() as conn:
            self._advance(conn, now, faults)
            rows = conn.execute(
                "SELECT agent_task_id, key, verb, state, result, message, created_at FROM tasks"
                " WHERE cleared_at IS NULL AND vanished = 0 ORDER BY created_at"
            ).fetchall()
        if self._garbled(faults):
            return [{"agent_task_id": r[0], "state": "exploded"} for r in rows] or "<html>502 Bad Gateway</html>"
        answer = [
            {
                "agent_task_id": r[0],
                "key": r[1],
                "verb": r[2],
                "state": r[3],
                "result": r[4],
                "message": r[5],
                "created_at": _iso(r[6]),
            }
            for r in rows
        ]
        for _ in range(faults.phantom_tasks):
            answer.append(
                {
                    "agent_task_id": str(uuid.uuid4()),
                    "key": f"phantom-{uuid.uuid4()}",
                    "verb": "delete_image",
                    "state": "finished",
                    "result": "success",
                    "message": "",
                    "created_at": _iso(now),
                }
            )
        return answer

    def stop_task(self, agent_task_id: str) -> Any:
        faults = self.faults()
        self._enter_call(faults)
        now = _now()
        with self._write() as conn:
            self._advance(conn, now, faults)
            conn.execute(
                "UPDATE tasks SET state = 'aborted', result = 'failure', message = 'stopped', ended_at = ?"
                " WHERE agent_task_id = ? AND state = 'running'",
                (now, agent_task_id),
            )
        return {"ok": True}

    def clear_tasks(self, agent_task_ids: list[str]) -> Any:
        faults = self.faults()
        self._enter_call(faults)
        now = _now()
        with self._write() as conn:
            self._advance(conn, now, faults)
            conn.executemany(
                "UPDATE tasks SET cleared_at = ? WHERE agent_task_id = ? AND state != 'running' AND cleared_at IS NULL",
                [(now, i) for i in agent_task_ids],
            )
        return {"ok": True}

    def revert_task(self, agent_task_id: str) -> Any:
        faults = self.faults()
        self._enter_call(faults)
        now = _now()
        with self._write() as conn:
            self._advance(conn, now, faults)
            row = conn.execute(
                "SELECT verb, args, effect_applied, reverted FROM tasks WHERE agent_task_id = ?",
                (agent_task_id,),
            ).fetchone()
            if row is None or not row[2]:
                return {"reverted": False}  # it did nothing: nothing to undo
            if row[3]:
                return {"reverted": True}  # undone already (say, before an engine crash)
            verb, args = row[0], json.loads(row[1])
            if verb == "create_volume":
                conn.execute("DELETE FROM volumes WHERE volume_id = ?", (args["volume_id"],))
            elif verb == "copy_image":
                conn.execute(
                    "DELETE FROM volumes WHERE storage_domain_id = ? AND image_id = ?",
                    (args["target_storage_domain_id"], args["target_image_id"]),
                )
            else:
                return {"reverted": False, "error": f"{verb} cannot be reverted"}
            conn.execute("UPDATE tasks SET reverted = 1 WHERE agent_task_id = ?", (agent_task_id,))
        return {"reverted": True}

    def storage(self) -> Any:
        faults = self.faults()
        self._enter_call(faults)
        return self.storage_snapshot(faults)

    def storage_snapshot(self, faults: FaultConfig | None = None) -> Any:
        """The storage as it is now (administration: no simulated network faults)."""
        faults = faults or self.faults()
        with self._write() as conn:
            self._advance(conn, _now(), faults)
            domains = [r[0] for r in conn.execute("SELECT storage_domain_id FROM storage_domains ORDER BY 1")]
            volumes = conn.execute(
                "SELECT storage_domain_id, image_id, volume_id, parent_id FROM volumes ORDER BY 1, 2, 3"
            ).fetchall()
        return {
            "storage_domains": domains,
            "volumes": [
                {"storage_domain_id": v[0], "image_id": v[1], "volume_id": v[2], "parent_id": v[3] or None}
                for v in volumes
            ],
        }

    # ---- reading without changing anything (the inspection) ----------------------------

    @staticmethod
    def peek_statuses(path: Path) -> list[dict[str, Any]]:
        """Every task held, as the agent would report it now, read without writing its state file.

        A task past its due time is reported as it will end (its storage effect is not applied:
        only the agent's own calls do that).
        """
        if not path.exists():
            raise StoreError(f"no agent state at {path}")
        try:
            conn = sqlite3.connect(f"{sqlite_uri(path)}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise StoreError(f"agent state {path} is not readable ({exc})") from exc
        try:
            faults = conn.execute("SELECT config FROM faults WHERE id = 1").fetchone()
            outage = FaultConfig.model_validate_json(faults[0]).unreachable_until if faults else 0.0
            if _now() < outage:  # the simulated network is down for readers too
                raise AgentUnavailableError(
                    f"agent unreachable: connection refused (simulated outage, {outage - _now():.1f}s left)"
                )
            rows = conn.execute(
                "SELECT agent_task_id, key, verb, state, result, message, created_at, due_at, fate FROM tasks"
                " WHERE cleared_at IS NULL AND vanished = 0 ORDER BY created_at"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"agent state {path} is not readable ({exc})") from exc
        finally:
            conn.close()
        now = _now()
        out = []
        for agent_task_id, key, verb, held_state, held_result, message, created_at, due_at, fate in rows:
            state, result = held_state, held_result
            if state == "running" and due_at <= now:
                if fate == "vanish":
                    continue
                state, result = "finished", "success" if fate == "ok" else "failure"
            out.append(
                {
                    "agent_task_id": agent_task_id,
                    "key": key,
                    "verb": verb,
                    "state": state,
                    "result": result,
                    "message": message,
                    "created_at": _iso(created_at),
                }
            )
        return out

    # ---- administration (not part of the agent interface) -------------------------------

    def seed_storage(
        self, domains: Sequence[str], volumes: Sequence[tuple[str, str, str]], token: str | None = None
    ) -> list[str]:
        """Add storage domains and base volumes (storage_domain, image, volume).

        With a token, the seed is all or nothing and can be undone: if any of the volumes
        exists already (another seed got there first), nothing is added and the ids found are
        returned; otherwise every volume is added, tagged with the token, and [] is returned.
        Without a token, volumes that exist are left as they are.
        """
        with self._write() as conn:
            if token is not None:
                found = [
                    row[0]
                    for start in range(0, len(volumes), 500)
                    for row in conn.execute(
                        "SELECT volume_id FROM volumes WHERE volume_id IN"
                        f" ({','.join('?' * len(volumes[start : start + 500]))})",
                        [v[2] for v in volumes[start : start + 500]],
                    )
                ]
                if found:
                    return sorted(found)
            conn.executemany("INSERT OR IGNORE INTO storage_domains VALUES (?)", [(d,) for d in domains])
            conn.executemany(
                "INSERT OR IGNORE INTO volumes (storage_domain_id, image_id, volume_id, parent_id, seed_token)"
                " VALUES (?, ?, ?, NULL, ?)",
                [(*v, token) for v in volumes],
            )
        return []

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int:
        """Remove these volumes if that seed added them (its store write lost a race); returns how many."""
        with self._write() as conn:
            cursor = conn.executemany(
                "DELETE FROM volumes WHERE seed_token = ? AND volume_id = ?", [(token, v) for v in volume_ids]
            )
            return cursor.rowcount

    def journal(self) -> list[dict[str, Any]]:
        """Every task ever created, with what became of it (for checks, not the engine)."""
        with self._write() as conn:
            self._advance(conn, _now(), self.faults())
            cursor = conn.execute(
                "SELECT agent_task_id, key, verb, args, state, result, message, created_at, ended_at,"
                " effect_applied, reverted, cleared_at, vanished FROM tasks ORDER BY created_at"
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # ---- the clock: tasks end by themselves ---------------------------------------------

    def _advance(self, conn: sqlite3.Connection, now: float, faults: FaultConfig) -> None:
        due = conn.execute(
            "SELECT agent_task_id, verb, args, fate FROM tasks WHERE state = 'running' AND due_at <= ? ORDER BY due_at",
            (now,),
        ).fetchall()
        for agent_task_id, verb, args_json, fate in due:
            if fate == "vanish":
                conn.execute(
                    "UPDATE tasks SET vanished = 1, state = 'aborted', result = 'failure',"
                    " message = 'vanished', ended_at = ? WHERE agent_task_id = ?",
                    (now, agent_task_id),
                )
                continue
            if fate == "fail":
                ok, message = False, "task failed (simulated fault)"
            else:
                ok, message = self._apply_effect(conn, verb, json.loads(args_json))
            conn.execute(
                "UPDATE tasks SET state = 'finished', result = ?, message = ?, ended_at = ?,"
                " effect_applied = ? WHERE agent_task_id = ?",
                ("success" if ok else "failure", message, now, 1 if ok else 0, agent_task_id),
            )

    @staticmethod
    def _apply_effect(conn: sqlite3.Connection, verb: str, args: dict[str, Any]) -> tuple[bool, str]:
        def image_exists(sd: str, image: str) -> bool:
            return (
                conn.execute(
                    "SELECT 1 FROM volumes WHERE storage_domain_id = ? AND image_id = ? LIMIT 1", (sd, image)
                ).fetchone()
                is not None
            )

        if verb == "delete_image":
            sd, image = args["storage_domain_id"], args["image_id"]
            if not image_exists(sd, image):
                return False, f"image {image} not found on {sd}"
            conn.execute("DELETE FROM volumes WHERE storage_domain_id = ? AND image_id = ?", (sd, image))
            return True, ""
        if verb == "create_volume":
            if conn.execute("SELECT 1 FROM volumes WHERE volume_id = ?", (args["volume_id"],)).fetchone():
                return False, f"volume {args['volume_id']} already exists"
            parent = args.get("parent_id")
            if (
                parent
                and not conn.execute(
                    "SELECT 1 FROM volumes WHERE volume_id = ? AND image_id = ? AND storage_domain_id = ?",
                    (parent, args["image_id"], args["storage_domain_id"]),
                ).fetchone()
            ):
                return False, f"parent volume {parent} not found in image {args['image_id']}"
            conn.execute(
                "INSERT INTO volumes (volume_id, image_id, storage_domain_id, parent_id) VALUES (?, ?, ?, ?)",
                (args["volume_id"], args["image_id"], args["storage_domain_id"], args.get("parent_id") or None),
            )
            return True, ""
        if verb == "copy_image":
            if not image_exists(args["source_storage_domain_id"], args["source_image_id"]):
                return False, f"source image {args['source_image_id']} not found"
            if image_exists(args["target_storage_domain_id"], args["target_image_id"]):
                return False, f"target image {args['target_image_id']} already exists"
            conn.execute(
                "INSERT INTO volumes (volume_id, image_id, storage_domain_id, parent_id) VALUES (?, ?, ?, NULL)",
                (args["target_volume_id"], args["target_image_id"], args["target_storage_domain_id"]),
            )
            return True, ""
        return False, f"unknown verb {verb}"


class SimulatedAgent:
    """The engine's client for the simulated agent: validates every answer."""

    def __init__(self, backend: SimulatedAgentBackend, name: str = "spm") -> None:
        self.backend = backend
        self.name = name
        self.calls: dict[str, int] = {}

    @classmethod
    def open(cls, path: Path, *, task_seconds: float | None = None) -> SimulatedAgent:
        seconds = task_seconds if task_seconds is not None else task_seconds_from_env()
        return cls(SimulatedAgentBackend(path, task_seconds=seconds))

    def close(self) -> None:
        self.backend.close()

    def _count(self, call: str) -> None:
        self.calls[call] = self.calls.get(call, 0) + 1

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        self._count("create_tasks")
        raw = self.backend.create_tasks([s.model_dump() for s in specs])
        return parse_create_results(raw, specs)

    def task_statuses(self) -> list[AgentTaskStatus]:
        self._count("task_statuses")
        return parse_statuses(self.backend.task_statuses())

    def stop_task(self, agent_task_id: str) -> None:
        self._count("stop_task")
        self.backend.stop_task(agent_task_id)

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        if agent_task_ids:
            self._count("clear_tasks")
            self.backend.clear_tasks(list(agent_task_ids))

    def revert_task(self, agent_task_id: str) -> bool:
        self._count("revert_task")
        answer = self.backend.revert_task(agent_task_id)
        if not isinstance(answer, dict) or not isinstance(answer.get("reverted"), bool):
            raise AgentProtocolError("agent gave a malformed answer to revert_task")
        if answer.get("error"):
            raise AgentProtocolError(f"agent could not revert task {agent_task_id}: {answer['error']}")
        return bool(answer["reverted"])

    def storage(self) -> StorageView:
        self._count("storage")
        return parse_storage(self.backend.storage())
