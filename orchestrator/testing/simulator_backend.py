"""The simulated host agent's side: its state file, its calls and its administration.

It keeps its tasks and a small storage model (storage domains, images and
their volumes) in its own SQLite file, so killing the engine does not kill
it. A task completes a configurable time after its creation, whether or not
any engine is running: completion is evaluated whenever anyone talks to the
agent, and its storage effect (create a volume, copy an image, delete an
image) is applied at that moment (see storage_effects.py). The faults in
force (faults.py) are kept in the same file.

The backend answers with plain data, as a remote agent would over the wire;
`SimulatedAgent` (in process) and the agent server (over HTTP) carry the
answers to a client that validates them. Every task ever created stays in the
journal (the `tasks` table, with `cleared_at` and `vanished`), so tests can
check what the agent really did.
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
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.store import StoreConfig, create_private_file, sqlite_uri
from orchestrator.testing.faults import (
    FaultConfig,
    garbled,
    refuse_if_unreachable,
    share_hit,
    simulate_network,
    stored_faults,
    with_env_overrides,
)
from orchestrator.testing.storage_effects import VERB_ARGS, advance, argument_problem, undo_effect

AGENT_STATE_ENV = "ORCHESTRATOR_AGENT_STATE"
TASK_SECONDS_ENV = "ORCHESTRATOR_AGENT_TASK_SECONDS"
STATE_FILE_MARK = "orchestrator-simulated-agent"

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


def default_agent_state_path(store: StoreConfig | Path | None) -> Path:
    """`ORCHESTRATOR_AGENT_STATE`, else the store's own simulated agent state file.

    A SQLite store's is beside its file (`STORE.agent`). A PostgreSQL store's is in the
    current folder, named after the store, so that stores run from one folder do not share
    one agent: `orchestrator-pg-SCHEMA-HASH.agent`, HASH from the redacted URL (schema
    included). A bare path (or None, for PostgreSQL) is what callers before 0.2 passed.
    """
    env = os.environ.get(AGENT_STATE_ENV)
    if env:
        return Path(env)
    if isinstance(store, StoreConfig):
        if store.path is not None:
            store = store.path
        else:
            digest = hashlib.sha256(store.redacted.encode()).hexdigest()[:12]
            return Path(f"orchestrator-pg-{store.schema_name}-{digest}.agent")
    if store is not None:
        return store.with_name(store.name + ".agent")
    return Path("orchestrator.agent")


def task_seconds_from_env(default: float = 1.0) -> float:
    """How long a simulated task runs: `ORCHESTRATOR_AGENT_TASK_SECONDS`, else default."""
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


def _open_state_file(path: Path) -> sqlite3.Connection:
    """Open (or create, mode 0600) an agent state file, refusing a file that is not one."""
    if not path.exists():
        if not path.parent.exists():
            raise StoreError(f"cannot create agent state {path}: directory does not exist")
        create_private_file(path)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # One exclusive transaction: processes opening a new state file at the same moment
        # see it either untouched or set up, never half made.
        conn.execute("BEGIN IMMEDIATE")
        try:
            _check_and_set_up(conn, path)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"agent state {path} is not readable ({exc})") from exc
    return conn


def _check_and_set_up(conn: sqlite3.Connection, path: Path) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        raise StoreError(f"{path} is not a simulated agent state file")
    if "meta" in tables:
        mark = conn.execute("SELECT value FROM meta WHERE key='kind'").fetchone()
        if not mark or mark[0] != STATE_FILE_MARK:
            raise StoreError(f"{path} is not a simulated agent state file")
    for statement in _SCHEMA:
        conn.execute(statement)
    volume_columns = {r[1] for r in conn.execute("PRAGMA table_info(volumes)")}
    if "seed_token" not in volume_columns:  # state files written before seeds could be undone
        conn.execute("ALTER TABLE volumes ADD COLUMN seed_token TEXT")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (STATE_FILE_MARK,))
    conn.execute("INSERT OR IGNORE INTO faults VALUES (1, ?)", (FaultConfig().model_dump_json(),))


STATUS_FIELDS = ("agent_task_id", "key", "verb", "state", "result", "message", "created_at")


def _status(
    agent_task_id: str, key: str, verb: str, state: str, result: str, message: str, created_at: float
) -> dict[str, Any]:
    """A task as `Tasks.statuses` reports it."""
    return {
        "agent_task_id": agent_task_id,
        "key": key,
        "verb": verb,
        "state": state,
        "result": result,
        "message": message,
        "created_at": datetime.fromtimestamp(created_at, UTC).isoformat(),
    }


class SimulatedAgentBackend:
    """The agent's side: its state file, its clock-driven tasks and its storage."""

    def __init__(self, path: Path, *, task_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.task_seconds = task_seconds
        self._lock = threading.RLock()
        self._conn = _open_state_file(self.path)
        self._rng = random.Random()

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
        return with_env_overrides(stored_faults(self.path, row[0] if row else None))

    def set_faults(self, config: FaultConfig) -> None:
        with self._write() as conn:
            conn.execute("UPDATE faults SET config = ? WHERE id = 1", (config.model_dump_json(),))

    # ---- the agent's calls (plain data in, plain data out) ---------------------------------

    def create_tasks(self, specs: list[dict[str, Any]]) -> Any:
        faults = self.faults()
        simulate_network(faults)
        now = time.time()
        answers: list[dict[str, Any]] = []
        with self._write() as conn:
            advance(conn, now)
            domains = {r[0] for r in conn.execute("SELECT storage_domain_id FROM storage_domains")}
            for spec in specs:
                answers.append(self._create_one(conn, spec, now, faults, domains))
        if faults.create_answer_latency > 0:  # the tasks exist; their answer is slow to come back
            time.sleep(faults.create_answer_latency)
        if garbled(faults, self._rng):
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
            or share_hit(faults.seed, "fail", key, faults.fail_share)
        ):
            fate = "fail"
        elif share_hit(faults.seed, "vanish", key, faults.vanish_share):
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
        if verb not in VERB_ARGS:
            return f"unknown verb {verb!r}"
        if verb in faults.refuse_verbs:
            return f"verb {verb} refused (simulated fault)"
        return argument_problem(verb, args, domains)

    def task_statuses(self) -> Any:
        faults = self.faults()
        simulate_network(faults)
        now = time.time()
        with self._write() as conn:
            advance(conn, now)
            # The time formatted by SQLite (a thousand rows a call, every call of every engine cycle).
            rows = conn.execute(
                "SELECT agent_task_id, key, verb, state, result, message,"
                " strftime('%Y-%m-%dT%H:%M:%f+00:00', created_at, 'unixepoch') FROM tasks"
                " WHERE cleared_at IS NULL AND vanished = 0 ORDER BY created_at"
            ).fetchall()
        if garbled(faults, self._rng):
            return [{"agent_task_id": r[0], "state": "exploded"} for r in rows] or "<html>502 Bad Gateway</html>"
        answer = [dict(zip(STATUS_FIELDS, row, strict=True)) for row in rows]
        for _ in range(faults.phantom_tasks):
            answer.append(
                _status(str(uuid.uuid4()), f"phantom-{uuid.uuid4()}", "delete_image", "finished", "success", "", now)
            )
        return answer

    def hurry(self, share: float) -> int:
        """Make a share of the running tasks due now, so that they end at the next call (benchmarks)."""
        with self._write() as conn:
            running = [row[0] for row in conn.execute("SELECT agent_task_id FROM tasks WHERE state = 'running'")]
            chosen = self._rng.sample(running, round(len(running) * share))
            now = time.time()
            conn.executemany("UPDATE tasks SET due_at = ? WHERE agent_task_id = ?", [(now, t) for t in chosen])
        return len(chosen)

    def stop_task(self, agent_task_id: str) -> Any:
        faults = self.faults()
        simulate_network(faults)
        now = time.time()
        with self._write() as conn:
            advance(conn, now)
            conn.execute(
                "UPDATE tasks SET state = 'aborted', result = 'failure', message = 'stopped', ended_at = ?"
                " WHERE agent_task_id = ? AND state = 'running'",
                (now, agent_task_id),
            )
        return {"ok": True}

    def clear_tasks(self, agent_task_ids: list[str]) -> Any:
        faults = self.faults()
        simulate_network(faults)
        now = time.time()
        with self._write() as conn:
            advance(conn, now)
            conn.executemany(
                "UPDATE tasks SET cleared_at = ? WHERE agent_task_id = ? AND state != 'running' AND cleared_at IS NULL",
                [(now, i) for i in agent_task_ids],
            )
        return {"ok": True}

    def revert_task(self, agent_task_id: str) -> Any:
        faults = self.faults()
        simulate_network(faults)
        now = time.time()
        with self._write() as conn:
            advance(conn, now)
            row = conn.execute(
                "SELECT verb, args, effect_applied, reverted FROM tasks WHERE agent_task_id = ?",
                (agent_task_id,),
            ).fetchone()
            if row is None or not row[2]:
                return {"reverted": False}  # it did nothing: nothing to undo
            if row[3]:
                return {"reverted": True}  # undone already (say, before an engine crash)
            error = undo_effect(conn, row[0], json.loads(row[1]))
            if error:
                return {"reverted": False, "error": error}
            conn.execute("UPDATE tasks SET reverted = 1 WHERE agent_task_id = ?", (agent_task_id,))
        return {"reverted": True}

    def storage(self) -> Any:
        faults = self.faults()
        simulate_network(faults)
        return self.storage_snapshot(faults)

    def storage_snapshot(self, faults: FaultConfig | None = None) -> Any:
        """The storage as it is now (administration: no simulated network faults)."""
        if faults is None:
            self.faults()  # like every call, this one fails while ORCHESTRATOR_AGENT_FAULTS is invalid
        with self._write() as conn:
            advance(conn, time.time())
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
            outage = stored_faults(path, faults[0]).unreachable_until if faults else 0.0
            refuse_if_unreachable(outage)  # the simulated network is down for readers too
            rows = conn.execute(
                "SELECT agent_task_id, key, verb, state, result, message, created_at, due_at, fate FROM tasks"
                " WHERE cleared_at IS NULL AND vanished = 0 ORDER BY created_at"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"agent state {path} is not readable ({exc})") from exc
        finally:
            conn.close()
        now = time.time()
        out = []
        for agent_task_id, key, verb, held_state, held_result, message, created_at, due_at, fate in rows:
            state, result = held_state, held_result
            if state == "running" and due_at <= now:
                if fate == "vanish":
                    continue
                state, result = "finished", "success" if fate == "ok" else "failure"
            out.append(_status(agent_task_id, key, verb, state, result, message, created_at))
        return out

    # ---- administration (not part of the agent port) ------------------------------------

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
        self.faults()  # like every call, this one fails while ORCHESTRATOR_AGENT_FAULTS is invalid
        with self._write() as conn:
            advance(conn, time.time())
            cursor = conn.execute(
                "SELECT agent_task_id, key, verb, args, state, result, message, created_at, ended_at,"
                " effect_applied, reverted, cleared_at, vanished FROM tasks ORDER BY created_at"
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
