"""JSON-RPC 2.0 over HTTP to one agent's endpoint, bounded in time and size (docs/agent-protocol.md).

`RpcClient.call()` gives a call's raw result, or one of two errors, each one
line naming the agent's URL (never a password in it):

- `AgentUnavailableError`: no usable answer now (connection refused or reset,
  a timeout, the overall deadline passed, HTTP 5xx, the connection dropped
  mid-answer, JSON-RPC error -32000). The caller waits and retries.
- `AgentProtocolError`: an answer that is not a valid answer (not JSON-RPC,
  a JSON-RPC error, larger than max_answer_bytes, the answer to another call).
  `StaleEpochError` (-32001) says another engine has taken over.

Validating the result is the caller's job.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx

from orchestrator.agent.protocol import AGENT_UNAVAILABLE, JSONRPC_VERSION, STALE_EPOCH, RpcFailure, StaleEpochError
from orchestrator.errors import AgentProtocolError, AgentUnavailableError, InputError

__all__ = [
    "CALL_TIMEOUT",
    "CONNECT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "MIB",
    "READ_TIMEOUT",
    "RpcClient",
    "one_line",
]

MIB = 1024 * 1024
# The limits of docs/agent-protocol.md (Transport): connecting, each piece of the answer, the whole call, its size.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 10.0
CALL_TIMEOUT = 15.0
MAX_ANSWER_BYTES = 16 * MIB
# The client closes idle connections well before an agent does (agents keep them longer, see the protocol's
# Transport), so a request is never sent on a connection the agent is closing.
KEEPALIVE_EXPIRY_SECONDS = 30.0
SNIPPET_CHARS = 80


def one_line(text: str, limit: int = 300) -> str:
    """Text for an error message: on one line, at most limit characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """An OS or httpx error as a short phrase: "[Errno 111] Connection refused" -> "connection refused"."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", one_line(str(exc) or type(exc).__name__, 160))
    return text[:1].lower() + text[1:]


class RpcClient:
    """One agent's endpoint: JSON-RPC calls over one keep-alive httpx.Client, bounded in time and size."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InputError(f"agent URL {url!r} is not a URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InputError(f"agent URL {url!r} is not an http:// or https:// URL")
        if min(connect_timeout, read_timeout, call_timeout) <= 0 or max_answer_bytes <= 0:
            raise InputError("agent timeouts and answer size limit must be positive")
        self.url = url
        # What errors show: never a password in the URL.
        self.shown_url = str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.call_timeout = call_timeout
        self.max_answer_bytes = max_answer_bytes
        self._ids = itertools.count(1)
        self._client = httpx.Client(
            # Each read waits at most read_timeout, and never longer than a whole call may take.
            timeout=httpx.Timeout(
                connect=min(connect_timeout, call_timeout),
                read=min(read_timeout, call_timeout),
                write=min(read_timeout, call_timeout),
                pool=min(connect_timeout, call_timeout),
            ),
            limits=httpx.Limits(
                max_connections=8, max_keepalive_connections=4, keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment between the engine and its agents
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, params: dict[str, Any]) -> Any:
        """One call; its result (raw), or AgentUnavailableError / AgentProtocolError / StaleEpochError."""
        rpc_id = next(self._ids)
        body = json.dumps(
            {"jsonrpc": JSONRPC_VERSION, "id": rpc_id, "method": method, "params": params}, separators=(",", ":")
        ).encode()
        content_type, raw = self._post(method, body)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            snippet = one_line(raw[:SNIPPET_CHARS].decode("utf-8", "replace"), SNIPPET_CHARS)
            raise AgentProtocolError(
                f"agent at {self.shown_url} answered {method} with something that is not JSON "
                f"({content_type or 'no content type'}: {snippet!r})"
            ) from None
        return self._result(method, rpc_id, doc)

    def _post(self, method: str, body: bytes) -> tuple[str, bytes]:
        where = f"agent at {self.shown_url}"
        deadline = time.monotonic() + self.call_timeout
        try:
            with self._client.stream(
                "POST",
                self.url,
                content=body,
                headers={"content-type": "application/json", "accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    detail = self._snippet(response, deadline)
                    if response.status_code >= 500:
                        raise AgentUnavailableError(
                            f"{where} answered {method} with HTTP {response.status_code} ({detail})"
                        )
                    raise AgentProtocolError(f"{where} refused {method} with HTTP {response.status_code} ({detail})")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_answer_bytes:
                    raise self._oversize(method, int(declared))
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_answer_bytes:
                        raise self._oversize(method, size)
                    if time.monotonic() > deadline:  # a trickle must not hold a call forever
                        raise AgentUnavailableError(
                            f"{where} did not finish answering {method} within {self.call_timeout:g}s "
                            f"({size} bytes received)"
                        )
                    chunks.append(chunk)
                return response.headers.get("content-type", ""), b"".join(chunks)
        except httpx.ConnectTimeout:
            raise AgentUnavailableError(
                f"{where} did not accept a connection within {self.connect_timeout:g}s"
            ) from None
        except httpx.ConnectError as exc:
            raise AgentUnavailableError(f"{where} is unreachable: {_reason(exc)}") from None
        except httpx.ReadTimeout:
            raise AgentUnavailableError(
                f"{where} did not answer {method} within {min(self.read_timeout, self.call_timeout):g}s"
            ) from None
        except httpx.TimeoutException as exc:
            raise AgentUnavailableError(f"{where} timed out during {method} ({type(exc).__name__})") from None
        except httpx.RemoteProtocolError as exc:
            raise AgentUnavailableError(
                f"{where} closed the connection before its answer to {method} was complete ({_reason(exc)})"
            ) from None
        except httpx.DecodingError as exc:
            raise AgentProtocolError(
                f"{where} sent an answer to {method} that cannot be decoded ({_reason(exc)})"
            ) from None
        except httpx.HTTPError as exc:  # reset, broken pipe, and the rest of the transport's failures
            raise AgentUnavailableError(f"{where}: connection lost during {method} ({_reason(exc)})") from None

    def _oversize(self, method: str, size: int) -> AgentProtocolError:
        return AgentProtocolError(
            f"agent at {self.shown_url} sent an answer to {method} larger than {self.max_answer_bytes} bytes "
            f"(at least {size}); refused"
        )

    @staticmethod
    def _snippet(response: httpx.Response, deadline: float) -> str:
        """The start of an error body, for the message; whatever can be had quickly."""
        text = b""
        with contextlib.suppress(httpx.HTTPError):
            for chunk in response.iter_bytes():
                text += chunk
                if len(text) >= SNIPPET_CHARS or time.monotonic() > deadline:
                    break
        return repr(one_line(text[:SNIPPET_CHARS].decode("utf-8", "replace"), SNIPPET_CHARS)) if text else "no body"

    def _result(self, method: str, rpc_id: int, doc: Any) -> Any:
        where = f"agent at {self.shown_url}"
        if not isinstance(doc, dict) or doc.get("jsonrpc") != JSONRPC_VERSION:
            raise AgentProtocolError(f"{where} answered {method} with JSON that is not a JSON-RPC 2.0 response")
        if "error" in doc:
            try:
                failure = RpcFailure.model_validate(doc)
            except ValueError:
                raise AgentProtocolError(f"{where} answered {method} with a malformed JSON-RPC error") from None
            message = one_line(failure.error.message)
            if failure.error.code == AGENT_UNAVAILABLE:
                raise AgentUnavailableError(f"{where} is unavailable: {message}")
            if failure.error.code == STALE_EPOCH:
                raise StaleEpochError(f"{where} refused {method}: {message}; another engine has taken over")
            raise AgentProtocolError(f"{where} refused {method}: {message} (JSON-RPC error {failure.error.code})")
        if set(doc) != {"jsonrpc", "id", "result"}:
            raise AgentProtocolError(f"{where} answered {method} with a JSON-RPC response without a result")
        if type(doc["id"]) is not int or doc["id"] != rpc_id:
            raise AgentProtocolError(f"{where} answered {method} with the answer to another call (id {doc['id']!r})")
        return doc["result"]

    @contextlib.contextmanager
    def naming_agent(self) -> Iterator[None]:
        """The port's parse functions say "agent ..." in their errors; say which one."""
        try:
            yield
        except AgentProtocolError as exc:
            text = str(exc)
            if text.startswith("agent ") and not text.startswith("agent at "):
                raise AgentProtocolError(f"agent at {self.shown_url} {text[len('agent ') :]}") from None
            raise
