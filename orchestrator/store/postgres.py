"""Everything PostgreSQL-specific: the recorder, bulk loads, the in-flight index, the read models'
tables and the locks.

The recorder is the library's, extended to keep `orchestrator_in_flight` (the
root commands in flight) in the same transaction as the events that change it.

Bulk loads look up each aggregate through the primary-key index with a LATERAL
subquery per id: a plain join lets the planner pick a hash or merge join over
the whole table when it has no statistics (freshly written, autovacuum off), so
recovery would cost what the history holds rather than what is in flight.
`OFFSET 0` keeps PostgreSQL from flattening the lateral into such a join, and
JIT is switched off for these reads: without statistics the planner's cost
estimate is huge, and compiling the plan would take longer than running it.
Prepared statements run with their generic plan, made once per connection: a
custom plan of the one-entity load took longer to make than to run.
"""

from __future__ import annotations

import contextlib
import json
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError, Notification, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.utils import get_topic, retry
from psycopg.sql import SQL, Identifier

from orchestrator.errors import StoreError, StoreUnavailableError
from orchestrator.store.event_store import IN_FLIGHT_TABLE, LogEntry
from orchestrator.store.leases import (
    ENGINES_TABLE,
    LEASES_TABLE,
    LeaseTable,
    WriteFence,
    lease_lost,
    lease_table_statements,
)
from orchestrator.store.tables import Cursor, Operation, Where, condition_sql, execute_rows, summed
from orchestrator.store.url import StoreConfig

EVENTS_TABLE = "orchestrator_events"
SNAPSHOTS_TABLE = "orchestrator_snapshots"
RETENTION_LOCK_TIMEOUT_S = 30  # a prune batch waits this long for the events table, then fails (nothing deleted)


RECORD_FUNCTION = "orchestrator_record_events"
LEASE_LOST_STATE = "OR001"  # the function's SQLSTATE when the write's lease is no longer current
READ_CHANGED_STATE = "OR002"  # ... when an aggregate the writer read unverified has moved on


class InFlightRecorder(PostgresApplicationRecorder):
    """The library's recorder, writing each transaction of events with one call of a function of ours.

    The function (`orchestrator_record_events`, created with the tables) checks the write's fence,
    takes the library's table lock (commits in notification order), checks that the aggregates the
    writer read without asking the store are still at the versions it read, keeps the in-flight
    index, and inserts the events: one statement, one round trip, committed on its own. The
    library's way is a pipeline of five statements and a commit, whose client side cost more than
    the server's work for one command's transaction.
    """

    def __init__(self, datastore: PostgresDatastore, events_table_name: str = EVENTS_TABLE) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(datastore.schema)
        self.in_flight = SQL("{}.{}").format(schema, Identifier(IN_FLIGHT_TABLE))
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {} (command_id TEXT PRIMARY KEY)").format(self.in_flight)
        )
        leases, engines = qualified(datastore.schema, LEASES_TABLE), qualified(datastore.schema, ENGINES_TABLE)
        for statement in lease_table_statements(leases, engines, "DOUBLE PRECISION"):
            self.sql_create_statements.append(SQL(statement))  # type: ignore[arg-type]
        function = SQL("{}.{}").format(schema, Identifier(RECORD_FUNCTION))
        events = SQL("{}.{}").format(schema, Identifier(events_table_name))
        self.sql_create_statements.append(
            SQL(RECORD_FUNCTION_SQL).format(
                function=function,
                events=events,
                in_flight=self.in_flight,
                leases=SQL(leases),  # type: ignore[arg-type]
            )
        )
        # Arrays sent as array literals, written here: the driver adapts a list element by element
        # (a third of a small insert's client time), a string as it is.
        self.record_call = SQL(
            "SELECT {}(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[], %s::text[], %s::text[],"
            " %s, %s, %s, %s::uuid[], %s::bigint[], %s, %s)"
        ).format(function)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Record the events in one transaction of their own: IntegrityError when an aggregate's
        version is taken or a read aggregate moved on, LeaseLostError when the fence is stale."""
        if not stored_events:
            return []
        fence: WriteFence | None = kwargs.get("fence")
        reads: Mapping[UUID, int] = kwargs.get("read_versions") or {}
        params = (
            array_literal(str(e.originator_id) for e in stored_events),
            array_literal(str(e.originator_version) for e in stored_events),
            array_literal(quoted(e.topic) for e in stored_events),
            array_literal(f'"\\\\x{e.state.hex()}"' for e in stored_events),
            array_literal(str(i) for i in kwargs.get("in_flight_added", ())),
            array_literal(str(i) for i in kwargs.get("in_flight_removed", ())),
            fence.pool if fence else None,
            fence.engine_id if fence else None,
            fence.epoch if fence else None,
            array_literal(str(i) for i in reads),
            array_literal(str(v) for v in reads.values()),
            f"{self.datastore.lock_timeout}s",
            bool(kwargs.get("flush", True)),
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            try:
                curs.execute(self.record_call, params, prepare=True)
            except psycopg.Error as exc:
                if exc.sqlstate == LEASE_LOST_STATE and fence is not None:
                    raise lease_lost(fence) from None
                if exc.sqlstate == READ_CHANGED_STATE:
                    raise IntegrityError(str(exc).strip().splitlines()[0]) from None
                raise
        return None  # nothing here reads the notification ids back (the library's put skips them then)


def array_literal(elements: Iterable[str]) -> str:
    """A PostgreSQL array literal of elements already written as such (see `quoted`)."""
    return "{" + ",".join(elements) + "}"


def quoted(text: str) -> str:
    """A text element of an array literal: in double quotes, its backslashes and quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# One transaction of events. Without `flush` its commit does not wait for the WAL to reach the
# disk (it is visible at once; the next commit that waits flushes it too). The fence's row is
# read FOR SHARE before the table lock: a takeover (an UPDATE of that row) waits for this write,
# and this write, if the takeover came first, sees the new epoch and records nothing. Aggregates
# read unverified are checked under the table lock, which every writer of events takes: none can
# move on before this transaction ends.
RECORD_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION {function}(
    ids uuid[], versions bigint[], topics text[], states bytea[], added text[], removed text[],
    fence_pool text, fence_engine text, fence_epoch bigint, read_ids uuid[], read_versions bigint[],
    lock_wait text, flush boolean)
RETURNS void LANGUAGE plpgsql AS $body$
BEGIN
    PERFORM set_config('lock_timeout', lock_wait, true);
    IF NOT flush THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    IF fence_pool IS NOT NULL THEN
        PERFORM 1 FROM {leases}
            WHERE pool_id = fence_pool AND engine_id = fence_engine AND epoch = fence_epoch FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the lease of pool % at epoch % is no longer current', fence_pool, fence_epoch
                USING ERRCODE = 'OR001';
        END IF;
    END IF;
    LOCK TABLE {events} IN EXCLUSIVE MODE;
    IF cardinality(read_ids) > 0 AND EXISTS (
        SELECT 1 FROM unnest(read_ids, read_versions) AS r(id, version)
        WHERE (SELECT max(e.originator_version) FROM {events} e WHERE e.originator_id = r.id) IS DISTINCT FROM r.version
    ) THEN
        RAISE EXCEPTION 'an aggregate this write read has changed since' USING ERRCODE = 'OR002';
    END IF;
    IF cardinality(added) > 0 THEN
        INSERT INTO {in_flight} SELECT unnest(added) ON CONFLICT DO NOTHING;
    END IF;
    IF cardinality(removed) > 0 THEN
        DELETE FROM {in_flight} WHERE command_id = ANY(removed);
    END IF;
    INSERT INTO {events} (originator_id, originator_version, topic, state)
        SELECT * FROM unnest(ids, versions, topics, states);
END
$body$
"""


LIBPQ_EXTRAS = "ORCHESTRATOR_LIBPQ_EXTRAS"
# Without JIT, and with the generic plan of every prepared statement (psycopg prepares a query
# run five times): the event store's queries are index lookups whatever their parameters, and a
# custom plan costs more to make than to run (a one-entity load: 0.26 ms planning, 0.1 ms running).
SESSION_OPTIONS = "-c jit=off -c plan_cache_mode=force_generic_plan"


class Factory(PostgresFactory):
    """The library's PostgreSQL factory with our recorder, passing on every libpq parameter of the URL.

    The library's datastore passes five connection parameters to its pool; the rest (sslmode,
    sslrootcert, options, target_session_attrs ...) are handed to the pool here, before it
    opens its first connection.
    """

    application_recorder_class = InFlightRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        extras = json.loads(self.env.get(LIBPQ_EXTRAS) or "{}")
        kwargs = self.datastore.pool.kwargs
        if isinstance(kwargs, dict):
            kwargs.update(extras)
            kwargs["options"] = with_options(kwargs.get("options"), SESSION_OPTIONS)


def with_options(given: object, *ours: str) -> str:
    """A libpq `options` value: the URL's own (a statement_timeout, say) and then ours."""
    return " ".join(x for x in (str(given or ""), *ours) if x)


FACTORY_TOPIC = get_topic(Factory)


def _stored(rows: Sequence[Any]) -> list[StoredEvent]:
    return [StoredEvent(r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"])) for r in rows]


class PostgresDialect:
    """The SQL of bulk loads and of the in-flight index, for the event store."""

    kind = "postgresql"
    factory_topic = FACTORY_TOPIC
    events_table = EVENTS_TABLE
    snapshots_table = SNAPSHOTS_TABLE

    def __init__(self, config: StoreConfig) -> None:
        self.config = config

    def _table(self, name: str) -> str:
        return f'"{self.config.schema_name}"."{name}"'

    def select_stored(self, recorder: Any, sql: str, params: Sequence[Any]) -> list[StoredEvent]:
        """One statement, one round trip (its connection runs without JIT, see Factory), planned for
        its own parameters: a bulk load's arrays differ in length from one call to the next."""
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(sql, params, prepare=False)
            return _stored(cursor.fetchall())

    def events_after(self, recorder: Any, versions: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        table = self._table(recorder.events_table_name)
        lookup = f"SELECT * FROM {table} x WHERE x.originator_id = v.id AND x.originator_version > v.ver OFFSET 0"
        sql = (
            "SELECT e.originator_id, e.originator_version, e.topic, e.state"
            f" FROM unnest(%s::uuid[], %s::bigint[]) AS v(id, ver) CROSS JOIN LATERAL ({lookup}) e"
            " ORDER BY e.originator_id, e.originator_version"
        )
        return self.select_stored(recorder, sql, [[i for i, _ in versions], [v for _, v in versions]])

    def snapshots_and_events(
        self, recorder: Any, snapshots: bool, known: Sequence[tuple[UUID, int | None]]
    ) -> tuple[list[StoredEvent], list[StoredEvent]]:
        """One statement: the latest snapshot of each aggregate whose version is unknown (-1 below),
        and every event after the known version or that snapshot (part 1: snapshots, part 2: events)."""
        events, snaps = self._table(recorder.events_table_name), self._table(self.snapshots_table)
        latest = (
            f"SELECT DISTINCT ON (x.originator_id) x.originator_id, x.originator_version, x.topic, x.state"
            f" FROM {snaps} x JOIN v ON x.originator_id = v.id AND v.known < 0"
            " ORDER BY x.originator_id, x.originator_version DESC"
            if snapshots
            else "SELECT NULL::uuid AS originator_id, 0 AS originator_version, '' AS topic, ''::bytea AS state LIMIT 0"
        )
        sql = (
            f"WITH v AS (SELECT * FROM unnest(%s::uuid[], %s::bigint[]) AS v(id, known)), s AS ({latest})"
            " SELECT 1 AS part, originator_id, originator_version, topic, state FROM s"
            " UNION ALL"
            " SELECT 2, e.originator_id, e.originator_version, e.topic, e.state"
            " FROM v LEFT JOIN s ON s.originator_id = v.id CROSS JOIN LATERAL ("
            f"SELECT * FROM {events} x WHERE x.originator_id = v.id"
            " AND x.originator_version > GREATEST(v.known, COALESCE(s.originator_version, 0)) OFFSET 0) e"
            " ORDER BY 1, 2, 3"
        )
        params = [[i for i, _ in known], [-1 if version is None else version for _, version in known]]
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return _stored([r for r in rows if r["part"] == 1]), _stored([r for r in rows if r["part"] == 2])

    def head_and_news(
        self, recorder: Any, after: int, topics: Sequence[str], limit: int
    ) -> tuple[int, list[Notification]]:
        """One statement: the head, with the entries after `after` up to it (a row of NULLs when none)."""
        table = self._table(self.events_table)
        sql = (
            f"SELECT h.head, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state"
            f" FROM (SELECT MAX(notification_id) AS head FROM {table}) h LEFT JOIN LATERAL ("
            f"SELECT * FROM {table} x WHERE x.notification_id > %s AND x.notification_id <= h.head"
            " AND x.topic = ANY(%s) ORDER BY x.notification_id LIMIT %s) e ON true"
        )
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(sql, (after, list(topics), limit))
            rows = cursor.fetchall()
        head = int(rows[0]["head"] or 0) if rows else 0
        found = [
            Notification(
                id=r["notification_id"],
                originator_id=r["originator_id"],
                originator_version=r["originator_version"],
                topic=r["topic"],
                state=bytes(r["state"]),
            )
            for r in rows
            if r["notification_id"] is not None
        ]
        return head, found

    def in_flight_ids(self, recorder: Any) -> list[UUID]:
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(f"SELECT command_id FROM {self._table(IN_FLIGHT_TABLE)}")
            return [UUID(r["command_id"]) for r in cursor.fetchall()]

    def fill_in_flight(self, recorder: Any, ids: Sequence[UUID]) -> None:
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"INSERT INTO {self._table(IN_FLIGHT_TABLE)} SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                ([str(i) for i in ids],),
            )

    def log_after(self, cursor: Cursor, after: int, limit: int, stop: int | None) -> list[LogEntry]:
        bounded = stop is not None
        bound, params = (" AND notification_id <= ?", [after, stop, limit]) if bounded else ("", [after, limit])
        cursor.execute(
            "SELECT notification_id, originator_id::text, originator_version, topic, state"
            f" FROM {self._table(self.events_table)}"
            f" WHERE notification_id > ?{bound} ORDER BY notification_id LIMIT ?",
            params,
        )
        return [(int(r[0]), str(r[1]), int(r[2]), str(r[3]), bytes(r[4])) for r in cursor.fetchall()]

    # ---- retention: an operator's prune (orchestrator/retention/) -------------------------------

    def lock_versions(self, cursor: Cursor, ids: Sequence[UUID]) -> dict[UUID, int]:
        """The last version of each of these aggregates that has events; no event can be added until
        the transaction ends (the lock the library's inserts take, EXCLUSIVE: readers go on)."""
        events = self._table(self.events_table)
        cursor.execute(f"SET LOCAL lock_timeout = '{RETENTION_LOCK_TIMEOUT_S}s'")
        cursor.execute(f"LOCK TABLE {events} IN EXCLUSIVE MODE")
        cursor.execute(
            f"SELECT originator_id, MAX(originator_version) FROM {events}"
            " WHERE originator_id = ANY(?::uuid[]) GROUP BY originator_id",
            (list(ids),),
        )
        return {UUID(str(r[0])): int(r[1]) for r in cursor.fetchall()}

    def delete_aggregates(self, cursor: Cursor, ids: Sequence[UUID]) -> int:
        """Delete every event and snapshot of these aggregates in the cursor's transaction; the number
        of events deleted (notification ids come from a sequence: never reused)."""
        wanted = (list(ids),)
        sql = "DELETE FROM {} WHERE originator_id = ANY(?::uuid[])"
        deleted = int(cursor.execute(sql.format(self._table(self.events_table)), wanted).rowcount)
        cursor.execute(sql.format(self._table(self.snapshots_table)), wanted)
        return deleted

    def tables(self, *, read_only: bool = False) -> PostgresTables:
        return PostgresTables(self.config, read_only=read_only)

    def lock(self, purpose: str) -> AdvisoryLock:
        """A store-wide lock held until released or until this process dies (the engine lease)."""
        return AdvisoryLock(self.config, purpose)

    def leases(self) -> LeaseTable:
        return LeaseTable(PostgresLeaseConnection(self.config))

    def has_table(self, recorder: Any, table: str) -> bool:
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (self.config.schema_name, table),
            )
            return cursor.fetchone() is not None


def qualified(schema: str, table: str) -> str:
    """`"schema".table`, quoted as PostgreSQL wants an identifier."""
    return '"' + schema.replace('"', '""') + '".' + table


# The lease connection's own limits: a lease operation that waits this long has failed.
LEASE_STATEMENT_TIMEOUT_MS = 10_000


class PostgresLeaseConnection:
    """The lease tables over a connection of their own, with TCP keepalives, reconnected when it breaks."""

    now_sql = "extract(epoch from clock_timestamp())::float8"

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.leases = qualified(config.schema_name, LEASES_TABLE)
        self.engines = qualified(config.schema_name, ENGINES_TABLE)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._alive: str | None = None
        self.generation = 0

    def _connect(self) -> psycopg.Connection[Any]:
        limits = f"-c statement_timeout={LEASE_STATEMENT_TIMEOUT_MS} -c lock_timeout={LEASE_STATEMENT_TIMEOUT_MS}"
        options = " ".join(x for x in (self.config.conninfo.get("options", ""), limits) if x)
        info = self.config.pg_conninfo(
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=LEASE_STATEMENT_TIMEOUT_MS,
            options=options,
            application_name="orchestrator-lease",
        )
        try:
            return psycopg.connect(**info, autocommit=True)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot connect to {self.config.redacted}: {self._reason(exc)}") from None

    def _reason(self, exc: BaseException) -> str:
        text = str(exc).strip()
        return self.config.scrub(text.splitlines()[0] if text else type(exc).__name__)

    def _alive_key(self, engine_id: str) -> int:
        return advisory_key(self.config, f"engine-alive:{engine_id}")

    def claim_liveness(self, engine_id: str) -> None:
        """A session advisory lock on the lease connection: it goes when the process (or the
        connection) dies, and comes again with the next connection."""
        self._alive = engine_id
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
            self._conn = None  # the next transaction connects and takes it

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Cursor]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    yield _QmarkCursor(conn.cursor())
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._conn.close()
                self._conn = None
                raise StoreUnavailableError(
                    f"lost the connection to {self.config.redacted}: {self._reason(exc)}"
                ) from None

    def _connection(self) -> psycopg.Connection[Any]:
        """The lease connection, made again (with this engine's liveness lock) when it was lost."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
            self.generation += 1
            if self._alive is not None:  # the server may go away here too: the caller says it was lost
                self._conn.execute("SELECT pg_advisory_lock(%s)", (self._alive_key(self._alive),))
        return self._conn

    def dead_among(self, engine_ids: Iterable[str], me: str) -> set[str]:
        """Engines whose liveness lock is free: their process, or its lease connection, is gone."""
        dead = set()
        with self.transaction() as cur:
            for engine_id in sorted(set(engine_ids) - {me}):
                key = self._alive_key(engine_id)
                cur.execute("SELECT pg_try_advisory_xact_lock(?)", (key,))
                if cur.fetchone()[0]:
                    dead.add(engine_id)
        return dead

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None


def advisory_key(config: StoreConfig, purpose: str) -> int:
    """An advisory lock key for one purpose in one store (locks are database-wide: the schema is in it)."""
    return zlib.crc32(f"orchestrator-{purpose}:{config.schema_name}".encode())


class AdvisoryLock:
    """A session advisory lock held by a connection of its own: it goes when the connection goes."""

    def __init__(self, config: StoreConfig, purpose: str) -> None:
        self.config = config
        self.key = advisory_key(config, purpose)
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return True
        try:
            info = self.config.pg_conninfo(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
            conn = psycopg.connect(**info, autocommit=True)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            reason = self.config.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise StoreUnavailableError(f"cannot connect to {self.config.redacted}: {reason}") from None
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if not row or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._conn is not None:
            # Unlock before closing: a closed connection's locks are let go by its server process
            # a moment later, and whoever asks in that moment would find the lock still taken.
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def holding(self) -> Iterator[bool]:
        got = self.try_acquire()
        try:
            yield got
        finally:
            if got:
                self.release()


class _QmarkCursor:
    """A psycopg cursor that takes `?` placeholders (the read models' statements are written once)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), tuple(params))  # type: ignore[arg-type]

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        if params:
            self._cursor.executemany(sql.replace("?", "%s"), [tuple(p) for p in params])  # type: ignore[arg-type]

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def copy(self, statement: str) -> Any:
        """COPY ... FROM STDIN (bulk insert)."""
        return self._cursor.copy(statement)  # type: ignore[arg-type]


class PostgresTables:
    """The read models' tables in a PostgreSQL store: a small pool; writers by transaction advisory lock.

    Per-row statements cost PostgreSQL more than the work they do, so each group of writes is one
    set statement: COPY for inserts, UPDATE ... FROM unnest for updates, = ANY for deletes.
    """

    dialect = "postgresql"
    catch_up_events = 20_000
    builds_catch_up_unlocked = False  # the read models' advisory lock stops no event writer

    def __init__(self, config: StoreConfig, *, read_only: bool = False) -> None:
        from psycopg_pool import ConnectionPool

        self.config = config
        self.read_only = read_only
        info = config.pg_conninfo()
        options = with_options(info.get("options"), f"-c search_path={config.schema_name},public")
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            kwargs={**info, "autocommit": True, "options": options},
            min_size=1,
            max_size=4,
            open=False,
            timeout=10,
            # A connection is tried before it is lent (one empty round trip): after a server restart
            # each idle one would otherwise fail once, and the engine would meet the outage again
            # for each, long after the store answered.
            check=ConnectionPool.check_connection,
        )
        self._open_lock = threading.Lock()
        self._opened = False

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            self._open_once()
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self.config.connection_lost(exc) from None

    def _open_once(self) -> None:
        """Open the pool on first use, once: threads serving requests at the same moment must not
        each wait for it (the pool's wait is not meant to be called from two threads)."""
        if self._opened:
            return
        with self._open_lock:
            if not self._opened:
                self._pool.open(wait=True, timeout=10)
                self._opened = True

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[Cursor]:
        with self._connection() as pg, pg.transaction(force_rollback=True):
            pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _QmarkCursor(pg.cursor())

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as pg:
            return pg.execute(sql.replace("?", "%s"), tuple(params)).fetchall()  # type: ignore[arg-type]

    @contextlib.contextmanager
    def write(self, lock_name: str = "projections", *, flush: bool = True) -> Iterator[Cursor]:
        if self.read_only:
            raise StoreError("this connection is read-only")
        key = advisory_key(self.config, lock_name)
        with self._connection() as pg, pg.transaction():
            if flush:
                pg.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            else:  # SET LOCAL synchronous_commit, in the same round trip as the lock
                pg.execute("SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(%s)", (key,))
            yield _QmarkCursor(pg.cursor())

    def run_group(
        self,
        cursor: Cursor,
        operation: Operation,
        target: str,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        where: Where = (),
    ) -> None:
        if operation == "decrement":
            key, column = columns
            totals = summed(rows)
            cursor.execute(
                f"UPDATE {target} AS t SET {column} = t.{column} - v.by FROM unnest(?::text[], ?::int[]) AS v(k, by)"
                f" WHERE t.{key} = v.k",
                ([k for k, _ in totals], [by for _, by in totals]),
            )
        elif operation == "insert":
            assert isinstance(cursor, _QmarkCursor)
            with cursor.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        elif operation == "delete":
            cursor.execute(f"DELETE FROM {target} WHERE {columns[0]} = ANY(?)", ([r[0] for r in rows],))
        else:
            self._update(cursor, target, columns, rows, where)

    @staticmethod
    def _update(
        cursor: Cursor, target: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]], where: Where
    ) -> None:
        """One UPDATE ... FROM unnest(...) for the group; a key updated twice under a condition
        runs row by row, because the first update decides whether the second still matches."""
        key, *assigned = columns
        condition, params = condition_sql(where, "t.")
        latest = {r[0]: r for r in rows}  # a row updated twice in one group keeps its last values
        if where and len(latest) < len(rows):
            sets = ", ".join(f"{c} = ?" for c in assigned)
            plain, _ = condition_sql(where)
            execute_rows(
                cursor, f"UPDATE {target} SET {sets} WHERE {key} = ?{plain}", [(*r[1:], r[0], *params) for r in rows]
            )
            return
        arrays = [[r[i] for r in latest.values()] for i in range(len(columns))]
        types = ["bigint" if any(isinstance(v, int) for v in values) else "text" for values in arrays]
        unnest = ", ".join(f"?::{t}[]" for t in types)
        names = ", ".join(f"c{i}" for i in range(len(columns)))
        sets = ", ".join(f"{c} = v.c{i + 1}" for i, c in enumerate(assigned))
        cursor.execute(
            f"UPDATE {target} AS t SET {sets} FROM unnest({unnest}) AS v({names}) WHERE t.{key} = v.c0{condition}",
            [*arrays, *params],
        )

    def tables_starting(self, cursor: Cursor, prefix: str) -> list[str]:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND left(table_name, ?) = ?",
            (self.config.schema_name, len(prefix), prefix),
        )
        return [str(r[0]) for r in cursor.fetchall()]

    @contextlib.contextmanager
    def exclusive(self, purpose: str) -> Iterator[bool]:
        with AdvisoryLock(self.config, purpose).holding() as got:
            yield got
