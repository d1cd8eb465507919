"""Keeps the read models current, and rebuilds or verifies them from the log.

Events are applied in batches. Each batch writes the view rows and the
projection's tracked position (`proj_tracking`) in one transaction, under a
writer lock, so every event is applied exactly once even with several
processes advancing the same projection (the engine, `projections run`, a
rebuild). A rebuild fills fresh tables from the whole log, then in one
transaction catches them up to the head and swaps them in; readers see either
the old view or the new one, never a half-built one.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from orchestrator.collector import collector_paused
from orchestrator.errors import OrchestratorError
from orchestrator.store.event_store import EventStore, LogEntry
from orchestrator.store.tables import Cursor, Tables
from projections.backlog import BACKLOG_EVENTS, BacklogBuilder
from projections.read_models import READ_MODELS, RELEVANT_PREFIX, RawEvent, ReadModel, apply_events
from projections.statements import StatementBatch, Writes

TRACKING_TABLE = "proj_tracking"
REBUILD_SUFFIX = "__rebuild"
REBUILD_LOCK = "rebuild"
BATCH_SIZE = 2000  # events per transaction of a rebuild (a live catch-up: the tables' catch_up_events)
# Rows a catch-up writes at most under a lock that stops the engine (SQLite's): 0.1 to 0.3 s. A live
# batch stays under it (most of its rows cancel out: 1,000 RemoveVm a cycle write 27,000 rows); the
# batches of a short backlog (about 4.5 rows an event) shrink to it.
LOCKED_ROWS = 30_000
# The same bound for a backlog long enough to be handed to the worker: the engine waits for the whole
# catch-up anyway, and the commit of a batch rewrites every index page its random keys touched, so
# three times the rows cost far less than three commits (0.6 s a batch instead of 0.3; a quarter
# sooner through the backlog). Clients wait at most one batch between two.
BACKLOG_LOCKED_ROWS = 90_000
MIN_BATCH = 100
# Batches of a backlog read and handed to the worker ahead of the one being written: two, so that it
# has the next at hand when it answers, without waiting for this process to write.
BATCHES_AHEAD = 2

ProgressCallback = Callable[[int, int], None]  # (position, head)


class RebuildBusyError(OrchestratorError):
    """Another rebuild, verification or prune holds the store's rebuild lock."""

    exit_code = 13


@dataclass
class ProjectionStatus:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


@dataclass
class VerifyResult:
    name: str
    position: int
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclass
class RebuildResult:
    name: str
    events: int
    seconds: float
    position: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _next_size(size: int, rows: int, most: int, locked_rows: int = LOCKED_ROWS) -> int:
    """The events of the next batch, so that it writes about `locked_rows` rows (at most `most`)."""
    fits = size * locked_rows // rows if rows else most
    return min(most, max(MIN_BATCH, min(2 * size, fits)))


@dataclass(frozen=True)
class _Span:
    """The stretch of the log a catch-up's batch covers, and the tracking rows it was read from."""

    positions: dict[str, int]
    limit: int  # the events asked for
    events: int  # the events read
    last: int  # the position of its last event
    behind: list[str]  # the projections it advances

    @property
    def full(self) -> bool:
        """Whether the log may run on past it."""
        return self.events >= self.limit

    def positions_after(self) -> dict[str, int]:
        """The tracking table's rows once the batch is written (and nobody else wrote meanwhile)."""
        return {**self.positions, **dict.fromkeys(self.behind, self.last)}


@dataclass
class _CatchUpBatch:
    """A catch-up's next batch: what it covers, and its writes."""

    span: _Span
    writes: Writes

    def write(self, cur: Cursor, tables: Tables) -> None:
        with collector_paused():
            self.writes.run(cur, tables)
        marks = ", ".join("?" * len(self.span.behind))
        sql = f"UPDATE {TRACKING_TABLE} SET position = ? WHERE projection IN ({marks})"
        cur.execute(sql, (self.span.last, *self.span.behind))


@dataclass
class _BatchAhead:
    """A batch after the one being written, being built by the backlog's worker process."""

    span: _Span
    writes: Future[Writes]


class ReadModelRunner:
    """Advances, rebuilds and verifies the read models of one store."""

    def __init__(self, tables: Tables, store: EventStore, read_models: Sequence[ReadModel] | None = None) -> None:
        self.db = tables
        self.store = store
        self.mapper = store.app.mapper
        self.projections = list(read_models or READ_MODELS.values())

    def _raw(self, entry: LogEntry) -> RawEvent:
        _, originator_id, version, topic, state = entry
        if self.mapper.cipher:
            state = self.mapper.cipher.decrypt(state)
        if self.mapper.compressor:
            state = self.mapper.compressor.decompress(state)
        return RawEvent.decode(originator_id, version, topic, state)

    @property
    def _hands_off_backlogs(self) -> bool:
        """Whether a backlog's batches can be built by the worker: it decodes the events as stored
        (no cipher, no compressor) for the read models it knows by name."""
        plain = not self.mapper.cipher and not self.mapper.compressor
        return plain and all(READ_MODELS.get(p.name) is p for p in self.projections)

    # ---- set-up ---------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        with self.db.write() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (projection TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            for p in self.projections:
                for statement in p.create_statements("") + p.index_statements("", ""):
                    cur.execute(statement)
                cur.execute(
                    f"INSERT INTO {TRACKING_TABLE} VALUES (?, 0) ON CONFLICT (projection) DO NOTHING", (p.name,)
                )

    # ---- positions ------------------------------------------------------------------------

    def head(self) -> int:
        return self.store.head()

    @staticmethod
    def _positions(cur: Cursor) -> dict[str, int]:
        cur.execute(f"SELECT projection, position FROM {TRACKING_TABLE}")
        return {str(name): int(pos) for name, pos in cur.fetchall()}

    def status(self) -> list[ProjectionStatus]:
        head = self.head()
        with self.db.read() as cur:
            positions = self._positions(cur)
        return [ProjectionStatus(p.name, positions.get(p.name, 0), head) for p in self.projections]

    # ---- following the log ----------------------------------------------------------------

    def _select(self, cur: Cursor, after: int, limit: int, stop: int | None = None) -> list[LogEntry]:
        return self.store.log_after(cur, after, limit, stop)

    def _apply(
        self, cur: Cursor, notifications: Sequence[LogEntry], targets: list[tuple[ReadModel, int]], suffix: str
    ) -> None:
        """Apply a batch of events in the caller's transaction."""
        with collector_paused():
            self._batch_for(notifications, targets, suffix).run(cur, self.db)

    def _batch_for(
        self, notifications: Sequence[LogEntry], targets: list[tuple[ReadModel, int]], suffix: str
    ) -> StatementBatch:
        events = [(n[0], self._raw(n)) for n in notifications if n[3].startswith(RELEVANT_PREFIX)]
        return apply_events(events, targets, suffix)

    def catch_up(self, *, batch_size: int | None = None, max_seconds: float | None = None) -> int:
        """Apply every event recorded so far, up to `batch_size` (by default the store's
        catch_up_events) a transaction; returns the number of events read.

        Where the read models' write lock stops the engine (SQLite's file lock), a batch is read
        and built before the lock is taken, and only written under it (built again under the lock
        if another process moved the positions, or a prune ran, meanwhile); and the batches of a
        long backlog, whose rows do not cancel out, shrink to about LOCKED_ROWS rows each
        (BACKLOG_LOCKED_ROWS once handed to the worker).

        A backlog of `backlog_events` and more has each batch built by a second process while this
        one writes the batch before (projections/backlog.py), checked against the positions under
        the lock like any batch built beforehand."""
        with BacklogBuilder() as builder:
            return self._catch_up(batch_size or self.db.catch_up_events, max_seconds, builder)

    backlog_events = BACKLOG_EVENTS

    def _catch_up(self, most: int, max_seconds: float | None, builder: BacklogBuilder) -> int:
        size = most
        started = time.monotonic()
        total = 0
        ahead: deque[_BatchAhead] = deque()  # the batches after this one, oldest first
        backlog: bool | None = None  # whether batches are handed on: decided at the first full one

        def hands_on(batch: _CatchUpBatch) -> bool:
            nonlocal backlog
            if batch.span.full and backlog is None:
                backlog = self._is_backlog(batch)
            return batch.span.full and bool(backlog)

        while True:
            built = self._collect(ahead.popleft(), builder) if ahead else None
            if built is None and self.db.builds_catch_up_unlocked:
                with self.db.read() as cur:
                    built = self._build_catch_up(cur, self._positions(cur), size)
            if built is not None and hands_on(built):
                with self.db.read() as cur:
                    self._hand_on(cur, built, ahead, most, builder)
            with self.db.write(flush=False) as cur:  # derived from the log, with its position
                positions = self._positions(cur)
                if built is None or built.span.positions != positions:
                    ahead.clear()  # read from positions that no longer hold
                    built = self._build_catch_up(cur, positions, size)
                    if hands_on(built):
                        self._hand_on(cur, built, ahead, most, builder)
                if not built.span.events:
                    return total
                built.write(cur, self.db)
            total += built.span.events
            if not built.span.full or (max_seconds is not None and time.monotonic() - started > max_seconds):
                return total
            size = self._size_after(built, most, bool(backlog))

    def _size_after(self, built: _CatchUpBatch, most: int, backlog: bool) -> int:
        """The events of the next batch: the most a transaction takes, or, where the lock stops the
        engine, what writes about LOCKED_ROWS rows (BACKLOG_LOCKED_ROWS in a backlog handed to the
        worker) if this batch's rows are a guide."""
        if not self.db.builds_catch_up_unlocked:
            return most
        locked_rows = BACKLOG_LOCKED_ROWS if backlog else LOCKED_ROWS
        return _next_size(built.span.limit, built.writes.rows_written, most, locked_rows)

    def _is_backlog(self, built: _CatchUpBatch) -> bool:
        """Whether the log runs on far enough past this batch for the worker to be worth starting."""
        return self._hands_off_backlogs and self.head() - built.span.last >= self.backlog_events

    def _hand_on(
        self, cur: Cursor, built: _CatchUpBatch, ahead: deque[_BatchAhead], most: int, builder: BacklogBuilder
    ) -> None:
        """Read the batches after `built` (and after those handed on already), up to BATCHES_AHEAD of
        them, and have the worker build them while `built` is written."""
        size = self._size_after(built, most, backlog=True)
        while len(ahead) < BATCHES_AHEAD:
            after = (ahead[-1].span if ahead else built.span).positions_after()
            entries, span = self._read(cur, after, size)
            if not entries:
                return
            writes = builder.submit(entries, [(p.name, position) for p, position in self._targets(after)])
            if writes is None:
                return
            ahead.append(_BatchAhead(span, writes))
            if not span.full:
                return

    @staticmethod
    def _collect(ahead: _BatchAhead, builder: BacklogBuilder) -> _CatchUpBatch | None:
        """The batch the worker built; None if the worker is gone (the batch is built here)."""
        writes = builder.result(ahead.writes)
        return None if writes is None else _CatchUpBatch(ahead.span, writes)

    def _build_catch_up(self, cur: Cursor, positions: dict[str, int], size: int) -> _CatchUpBatch:
        """The next batch of events after the lowest position, built into the writes it makes."""
        entries, span = self._read(cur, positions, size)
        if not entries:
            return _CatchUpBatch(span, Writes())
        with collector_paused():
            return _CatchUpBatch(span, self._batch_for(entries, self._targets(positions), "").writes())

    def _read(self, cur: Cursor, positions: dict[str, int], size: int) -> tuple[list[LogEntry], _Span]:
        """Up to `size` events after the lowest of the read models' positions."""
        targets = self._targets(positions)
        entries = self._select(cur, min(pos for _, pos in targets), size)
        last = entries[-1][0] if entries else 0
        behind = [p.name for p, pos in targets if last > pos]
        return entries, _Span(positions, size, len(entries), last, behind)

    def _targets(self, positions: dict[str, int]) -> list[tuple[ReadModel, int]]:
        """Each read model with its position among the tracking table's rows."""
        return [(p, positions.get(p.name, 0)) for p in self.projections]

    def follow(self, stop: Callable[[], bool], interval: float = 0.2, *, batch_size: int | None = None) -> None:
        """Keep the views current until `stop()` is true (the `projections run` service)."""
        while not stop():
            if self.catch_up(batch_size=batch_size) == 0:
                time.sleep(interval)

    # ---- rebuild and verify ---------------------------------------------------------------
    #
    # Rebuilds and verifications exclude each other (a store-wide lock: a flock beside a SQLite
    # file, a session advisory lock on PostgreSQL); each run fills shadow tables named for that
    # run alone, and swaps them in (or compares them) in one transaction. A run killed at any
    # moment leaves the live views as they were; its shadow tables are dropped by the next run.

    @contextmanager
    def _exclusive(self) -> Iterator[str]:
        """The rebuild lock, and a shadow suffix of this run's own; RebuildBusyError if another runs."""
        with self.db.exclusive(REBUILD_LOCK) as got:
            if not got:
                raise RebuildBusyError(
                    "another rebuild or verification of the read models is running on this store; "
                    "wait for it to finish, then try again"
                )
            self._drop_stale_shadows()
            yield f"{REBUILD_SUFFIX}_{uuid.uuid4().hex[:8]}"

    def _drop_stale_shadows(self) -> None:
        with self.db.write() as cur:
            for table in self.db.tables_starting(cur, "proj_"):
                if REBUILD_SUFFIX in table:
                    cur.execute(f"DROP TABLE IF EXISTS {table}")

    def _fill_shadow(
        self, projection: ReadModel, suffix: str, progress: ProgressCallback | None, batch_size: int
    ) -> int:
        """Build the projection from the whole log into fresh tables; returns its position."""
        with self.db.write() as cur:
            for statement in projection.create_statements(suffix):
                cur.execute(statement)
        position = 0
        head = self.head()
        while True:
            with self.db.write(lock_name=f"rebuild:{projection.name}") as cur:
                notifications = self._select(cur, position, batch_size)
                if notifications:
                    self._apply(cur, notifications, [(projection, position)], suffix)
            if not notifications:
                break
            position = notifications[-1][0]
            if progress:
                progress(position, max(head, position))
            if len(notifications) < batch_size:
                break
        return position

    def _catch_up_shadow(self, cur: Cursor, projection: ReadModel, suffix: str, position: int, stop: int | None) -> int:
        while True:
            notifications = self._select(cur, position, BATCH_SIZE, stop)
            if not notifications:
                return position
            self._apply(cur, notifications, [(projection, position)], suffix)
            position = notifications[-1][0]

    def rebuild(
        self, projection: ReadModel, progress: ProgressCallback | None = None, batch_size: int = BATCH_SIZE
    ) -> RebuildResult:
        started = time.monotonic()
        with self._exclusive() as suffix:
            position = self._fill_shadow(projection, suffix, progress, batch_size)
            with self.db.write() as cur:  # the swap: blocks live updates only for the last stretch
                position = self._catch_up_shadow(cur, projection, suffix, position, None)
                for table in projection.tables:
                    cur.execute(f"DROP TABLE IF EXISTS {table}")
                    cur.execute(f"ALTER TABLE {table}{suffix} RENAME TO {table}")
                for statement in projection.index_statements("", ""):
                    cur.execute(statement)
                cur.execute(
                    f"INSERT INTO {TRACKING_TABLE} VALUES (?, ?) ON CONFLICT (projection) DO UPDATE SET position = ?",
                    (projection.name, position, position),
                )
        return RebuildResult(projection.name, position, time.monotonic() - started, position)

    def verify(self, projection: ReadModel, progress: ProgressCallback | None = None) -> VerifyResult:
        """Build a fresh copy and compare it with the live view, row by row, at one position."""
        with self._exclusive() as suffix:
            try:
                return self._verify(projection, suffix, progress)
            finally:
                with self.db.write() as cur:
                    for table in projection.tables:
                        cur.execute(f"DROP TABLE IF EXISTS {table}{suffix}")

    def _verify(self, projection: ReadModel, suffix: str, progress: ProgressCallback | None) -> VerifyResult:
        position = self._fill_shadow(projection, suffix, progress, BATCH_SIZE)
        result = VerifyResult(projection.name, 0)
        with self.db.write() as cur:
            live_position = self._positions(cur).get(projection.name, 0)
            if position > live_position:
                # The live view lags; bring it to the same point first (it is ours to advance).
                self._apply_live_until(cur, projection, live_position, position)
                live_position = position
            position = self._catch_up_shadow(cur, projection, suffix, position, live_position)
            result.position = live_position
            for table in projection.tables:
                keys = projection.key_columns(table)
                for label, left, right in (
                    ("only in the live view", table, f"{table}{suffix}"),
                    ("only in the rebuild", f"{table}{suffix}", table),
                ):
                    cur.execute(
                        f"SELECT * FROM (SELECT * FROM {left} EXCEPT SELECT * FROM {right}) d ORDER BY {keys} LIMIT 20"
                    )
                    result.differences += [f"{table}: {label}: {tuple(row)}" for row in cur.fetchall()]
        return result

    def _apply_live_until(self, cur: Cursor, projection: ReadModel, after: int, stop: int) -> None:
        position = after
        while position < stop:
            notifications = self._select(cur, position, BATCH_SIZE, stop)
            if not notifications:
                break
            self._apply(cur, notifications, [(projection, position)], "")
            position = notifications[-1][0]
        cur.execute(f"UPDATE {TRACKING_TABLE} SET position = ? WHERE projection = ?", (stop, projection.name))
