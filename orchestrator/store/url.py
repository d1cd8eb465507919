"""Store URLs: one URL selects SQLite (the embedded default) or PostgreSQL.

`sqlite:///PATH` (relative, SQLAlchemy style; `sqlite:////abs/path` for an
absolute one) or any libpq connection URI, `postgresql://[user[:password]@]host
[:port][,host2...]/dbname[?param=value...]`, with one parameter of ours:
`schema=NAME` (default `public`). Every libpq parameter is kept (sslmode,
sslrootcert, a host that is a socket directory, options, target_session_attrs,
several hosts), parsed by libpq itself through psycopg, so a URL means what it
means to `psql`. The URL comes from `--store` or `ORCHESTRATOR_STORE`.

The password is held as a secret: `redacted` is the only form of a URL fit for
output, and `scrub` removes the password (and an sslpassword), plain or
percent-encoded, from any text (a driver's error). psycopg is imported only for
PostgreSQL URLs (a SQLite command starts faster). `sqlite_read_only_uri` is how
to read a SQLite store without writing beside it (a read-only copy).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

from orchestrator.errors import StoreError, StoreUnavailableError

DEFAULT_STORE_URL = "sqlite:///orchestrator.db"
STORE_ENV_VAR = "ORCHESTRATOR_STORE"
SCHEMA_PARAM = "schema"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HINT = "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"
# Parameters whose values are secrets as well as the password.
_SECRET_PARAMS = ("password", "sslpassword")
_DEFAULT_CONNECT_TIMEOUT = "3"


@dataclass(frozen=True)
class StoreConfig:
    """A parsed store URL. `redacted` is the only form fit for output.

    A plain dataclass (made only by `parse_store_url`, which checks every part): building a
    pydantic model for it cost every command a few milliseconds of start-up.
    """

    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None
    # libpq connection parameters, every one the URL gave but the secrets
    conninfo: dict[str, str] = field(default_factory=dict)
    password: SecretStr = field(default_factory=lambda: SecretStr(""))
    schema_name: str = "public"

    # ---- the parts other code and tests ask for ---------------------------------------------

    @property
    def host(self) -> str:
        return self.conninfo.get("host", "")

    @property
    def port(self) -> str:
        return self.conninfo.get("port", "5432")

    @property
    def user(self) -> str:
        return self.conninfo.get("user", "")

    @property
    def dbname(self) -> str:
        return self.conninfo.get("dbname", "")

    @property
    def redacted(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}"
        auth = quote(self.user, safe="") + (":***" if self.password.get_secret_value() else "")
        netloc = f"{auth}@" if auth else ""
        netloc += self._hosts_for_url()
        hidden = ("host", "port", "user", "dbname", "hostaddr", *_SECRET_PARAMS)
        shown = {k: v for k, v in self.conninfo.items() if k not in hidden}
        if self.schema_name != "public":
            shown[SCHEMA_PARAM] = self.schema_name
        query = urlencode(sorted(shown.items()), quote_via=quote)
        return urlunsplit(("postgresql", netloc, "/" + quote(self.dbname, safe=""), query, ""))

    def _hosts_for_url(self) -> str:
        hosts = self.host.split(",") if self.host else [""]
        ports = self.port.split(",") if self.port else [""]
        parts = []
        for i, host in enumerate(hosts):
            port = ports[i] if i < len(ports) else ports[-1]
            shown = quote(host, safe="") if host.startswith("/") else host
            parts.append(f"{shown}:{port}" if port else shown)
        return ",".join(parts)

    def scrub(self, text: str) -> str:
        """Remove the secrets (password, sslpassword), plain or percent-encoded, from any text (a driver's error)."""
        secrets = [self.password.get_secret_value(), self.conninfo.get("sslpassword", "")]
        for secret in filter(None, secrets):
            for form in dict.fromkeys((secret, quote(secret, safe=""), quote(secret))):
                text = text.replace(form, "***")
        return text

    def connection_lost(self, exc: BaseException) -> StoreUnavailableError:
        """The outage a driver error on an open connection means, said without the secrets."""
        return StoreUnavailableError(f"lost the connection to {self.redacted}: {self.scrub(str(exc))}")

    # ---- connecting -------------------------------------------------------------------------

    def pg_conninfo(self, **overrides: str | int) -> dict[str, str | int]:
        """Keyword arguments for psycopg.connect: every parameter of the URL, with the password."""
        info: dict[str, str | int] = {
            "connect_timeout": _DEFAULT_CONNECT_TIMEOUT,
            "application_name": "orchestrator",
            **self.conninfo,
            **overrides,
        }
        if self.password.get_secret_value():
            info["password"] = self.password.get_secret_value()
        return info

    def eventsourcing_env(self) -> dict[str, str]:
        """The event store library's settings (given to it directly, never put in os.environ)."""
        if self.kind == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.path),
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": self.port,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password.get_secret_value(),
            "POSTGRES_SCHEMA": self.schema_name,
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "8",
            "POSTGRES_LOCK_TIMEOUT": "30",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "60",
            "ORCHESTRATOR_LIBPQ_EXTRAS": json.dumps(self.libpq_extras()),
        }

    def libpq_extras(self) -> dict[str, str]:
        """Parameters beyond the five the event store library passes on itself (sslmode ...)."""
        return {k: v for k, v in self.conninfo.items() if k not in ("host", "port", "user", "dbname")}


def sqlite_read_only_uri(path: Path) -> str:
    """A `file:` URI that reads a SQLite store without writing anything, even beside it.

    Reading a database in WAL mode needs its `-shm` file; SQLite creates it when it is
    missing, which fails where the directory is not writable (a backup, a read-only mount).
    There the file is opened `immutable=1`: nobody can be writing it, since a writer would
    need that directory for its `-wal` and `-shm` files.
    """
    uri = f"file:{quote(str(path))}?mode=ro"
    shm = path.with_name(path.name + "-shm")
    if not shm.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        uri += "&immutable=1"
    return uri


def store_url_from_env(explicit: str | None) -> str:
    return explicit or os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_URL


def parse_store_url(url: str) -> StoreConfig:
    """Parse a store URL, or raise StoreError saying what a good one looks like."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or len(rest) < 2:
            raise StoreError(f"store URL {url!r} has no file path; {_HINT}")
        return StoreConfig(kind="sqlite", path=Path(rest[1:]))  # sqlite:///rel -> rel; sqlite:////abs -> /abs
    if url.startswith(("postgresql://", "postgres://")):
        return _parse_postgres(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    what = f"scheme {scheme[:20]!r}" if scheme else "form"
    raise StoreError(f"this store URL's {what} is not supported; {_HINT}")


def _without_schema_param(url: str) -> str:
    """The URL as libpq reads it: our `schema=` parameter dropped, every other byte kept.

    Rebuilding it from parts would lose the `//` of a URL without a host (`postgresql:///db`)
    and turn the encoded spaces of `options=-c%20...` into `+`, which libpq reads literally.
    """
    base, mark, query = url.partition("?")
    if not mark:
        return url
    kept = [item for item in query.split("&") if unquote_plus(item.split("=", 1)[0]) != SCHEMA_PARAM]
    return base + ("?" + "&".join(kept) if kept else "")


def _parse_postgres(url: str) -> StoreConfig:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreError(f"PostgreSQL store URL is malformed ({exc}); {_HINT}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in reversed(query) if k == SCHEMA_PARAM), "public")
    if not _SCHEMA_NAME.match(schema):
        raise StoreError(f"schema name {schema[:70]!r} is not a plain lower-case identifier")
    libpq_url = _without_schema_param(url)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(libpq_url).items() if v is not None}
    except ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "not a connection URI"
        password = parts.password or ""
        if password:
            reason = reason.replace(password, "***")
        raise StoreError(f"PostgreSQL store URL is malformed ({reason}); {_HINT}") from None
    if not params.get("dbname"):
        raise StoreError(f"PostgreSQL store URL has no database name; {_HINT}")
    for port in params.get("port", "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise StoreError(f"PostgreSQL store URL has a bad port ({port[:10]!r}); {_HINT}")
    password = params.pop("password", "")
    params.setdefault("host", "127.0.0.1")
    params.setdefault("user", "postgres")
    return StoreConfig(kind="postgresql", conninfo=params, password=SecretStr(password), schema_name=schema)
