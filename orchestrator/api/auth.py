"""Access control: bearer tokens with a role, kept only as hashes; console sessions.

Tokens come from a file (`--tokens FILE`) or `ORCHESTRATOR_API_TOKENS`, one
entry a line: `sha256:<hex of the token's SHA-256> <role> [name]`, where role is
`read-only` (reads) or `operator` (reads, submits, cancels). Tokens are random
secrets (at least 16 characters), so an unsalted SHA-256 is enough to keep the
file harmless; the presented token's hash is compared with every entry in
constant time. Without tokens the API is open, which `serve` allows on a
loopback address only; an open API then answers only requests whose Host is a
loopback name (a page on another site cannot reach it through DNS rebinding),
and cookie-less unsafe requests must be JSON (a form on another site cannot
post one without a CORS preflight, which this server never grants).

The console keeps a session cookie (HttpOnly, SameSite=Strict, Secure under
TLS) that names a session held in memory here, never the token; unsafe requests
authenticated by that cookie must also carry `X-Orchestrator-Console: 1`.
Refused requests are logged with method, path, client and reason, never with a
token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fastapi import Request

from orchestrator.api.problems import ApiRefusal
from orchestrator.errors import InputError

log = logging.getLogger("orchestrator.api.access")

TOKENS_ENV = "ORCHESTRATOR_API_TOKENS"
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "orchestrator_session"
CONSOLE_HEADER = "X-Orchestrator-Console"
SESSION_SECONDS = 12 * 3600
_ENTRY = re.compile(r"^sha256:([0-9a-f]{64})\s+(\S+)(?:\s+(\S.*))?$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(StrEnum):
    READ_ONLY = "read-only"
    OPERATOR = "operator"


@dataclass(frozen=True)
class TokenEntry:
    digest: bytes
    role: Role
    name: str


@dataclass(frozen=True)
class Principal:
    """Who asks: a token's name and role, a console session's, or anyone (open API)."""

    name: str
    role: Role
    via: str  # token | session | open

    def may(self, needed: Role) -> bool:
        return needed is Role.READ_ONLY or self.role is Role.OPERATOR


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def hash_token_line(token: str, role: str = Role.OPERATOR.value, name: str = "") -> str:
    """The line a tokens file holds for this token (the token itself is not in it)."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise InputError(f"a token must be at least {MIN_TOKEN_LENGTH} characters (make one: openssl rand -hex 32)")
    if role not in {r.value for r in Role}:
        raise InputError(f"role must be {' or '.join(r.value for r in Role)}")
    if name and not re.fullmatch(r"[\w.@-]{1,64}", name):
        raise InputError("a token's name is 1 to 64 letters, digits, . _ @ -")
    return f"sha256:{token_digest(token).hex()} {role}" + (f" {name}" if name else "")


def parse_token_entries(text: str, source: str) -> list[TokenEntry]:
    """Entries from a tokens file's text (or the environment's, where ';' also separates)."""
    entries: list[TokenEntry] = []
    for number, raw in enumerate(re.split(r"[\n;]", text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _ENTRY.match(line)
        # The line is not repeated: a token pasted by mistake must not reach a log.
        if found is None:
            raise InputError(
                f"{source}, entry {number}: not 'sha256:<64 hex digits> ROLE [NAME]' "
                "(make one with: orchestrator serve --hash-token < token-file)"
            )
        digest, role, name = found.groups()
        if role not in {r.value for r in Role}:
            raise InputError(f"{source}, entry {number}: role must be {' or '.join(r.value for r in Role)}")
        entries.append(TokenEntry(bytes.fromhex(digest), Role(role), (name or f"token-{number}").strip()))
    return entries


class TokenSet:
    """The accepted tokens, by hash."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self.entries = entries

    def identify(self, token: str) -> TokenEntry | None:
        digest = token_digest(token)
        found = None
        for entry in self.entries:  # every entry is compared: the time says nothing about which matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


def load_tokens(path: Path | None, env_text: str | None) -> TokenSet | None:
    """The tokens of a file and of the environment together; None when neither gives any."""
    entries: list[TokenEntry] = []
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read the tokens file {path}: {exc.strerror or exc}") from None
        entries += parse_token_entries(text, str(path))
        if not entries:
            raise InputError(f"the tokens file {path} holds no token")
    if env_text and env_text.strip():
        entries += parse_token_entries(env_text, TOKENS_ENV)
    return TokenSet(entries) if entries else None


def is_loopback_host(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Sessions:
    """Console sessions in memory: a random id in the cookie stands for a token's name and role."""

    def __init__(self, seconds: float = SESSION_SECONDS) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[Principal, float]] = {}

    def open(self, principal: Principal) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            self._sessions[session_id] = (Principal(principal.name, principal.role, "session"), now + self.seconds)
        return session_id

    def find(self, session_id: str) -> Principal | None:
        with self._lock:
            found = self._sessions.get(session_id)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


OPEN_PRINCIPAL = Principal("anyone", Role.OPERATOR, "open")


class AccessPolicy:
    """Decides who a request is and whether it may do what it asks."""

    def __init__(self, tokens: TokenSet | None) -> None:
        self.tokens = tokens
        self.sessions = Sessions()

    @property
    def open(self) -> bool:
        return self.tokens is None

    def login(self, token: str) -> Principal | None:
        if self.tokens is None:
            return OPEN_PRINCIPAL
        entry = self.tokens.identify(token)
        return None if entry is None else Principal(entry.name, entry.role, "token")

    def authenticate(self, request: Request, needed: Role) -> Principal:
        """Who asks, if allowed to do what `needed` permits; ApiRefusal (401/403) otherwise."""
        unsafe = request.method not in SAFE_METHODS
        if self.tokens is None:
            host = request.url.hostname or ""
            if not is_loopback_host(host):
                self._refuse(request, 403, "the API without tokens answers loopback host names only")
            if unsafe and not _is_json(request) and request.headers.get(CONSOLE_HEADER) != "1":
                self._refuse(request, 415, "send the request body as application/json")
            return OPEN_PRINCIPAL
        principal = self._identify(request)
        if principal.via == "session" and unsafe and request.headers.get(CONSOLE_HEADER) != "1":
            self._refuse(request, 403, f"a console session's {request.method} must carry {CONSOLE_HEADER}: 1")
        if not principal.may(needed):
            self._refuse(request, 403, f"token {principal.name!r} is {principal.role.value}: it may only read")
        return principal

    def _identify(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                self._refuse(request, 401, "the Authorization header must be 'Bearer <token>'")
            entry = self.tokens.identify(credentials.strip()) if self.tokens else None
            if entry is None:
                self._refuse(request, 401, "the token is not known here")
            assert entry is not None
            return Principal(entry.name, entry.role, "token")
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            principal = self.sessions.find(session_id)
            if principal is not None:
                return principal
            self._refuse(request, 401, "the console session expired; sign in again")
        self._refuse(request, 401, "this API needs a bearer token (Authorization: Bearer <token>)")
        raise AssertionError("unreachable")

    @staticmethod
    def note_refusal(request: Request, reason: str) -> None:
        """Log a refused request: method, path, client and reason (never a header's value)."""
        client = request.client.host if request.client else "?"
        log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, reason)

    def _refuse(self, request: Request, status: int, reason: str) -> None:
        self.note_refusal(request, reason)
        headers = {"WWW-Authenticate": 'Bearer realm="orchestrator"'} if status == 401 else None
        raise ApiRefusal(status, reason, headers)


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
