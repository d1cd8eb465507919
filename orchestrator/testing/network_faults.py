"""The agent server's deliberately broken answers: the network faults of `FaultConfig.network_fault`.

They apply to the protocol's methods, never to the `Simulator.*`
administration (which must be able to switch them off). http_500, garbage
and oversize answer without carrying out the call (as a proxy in the way
would); drop and trickle carry it out and then lose or slow the answer, which
is where a client's retry must be idempotent. wrong_pool and future_version
change what `Agent.identify` says (agent_service.py), not how it is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from orchestrator.testing.faults import NetworkFault

OVERSIZE_ANSWER_BYTES = 64 * 1024 * 1024  # larger than any client's cap
TRICKLE_BYTES = 4  # per TRICKLE_INTERVAL: a few bytes a second, slower than any client waits
TRICKLE_INTERVAL = 0.5

# The faults that answer in place of the call: the call is not carried out.
ANSWERED_INSTEAD: frozenset[NetworkFault] = frozenset({"http_500", "garbage", "oversize"})


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class _DroppedResponse(Response):
    """Declares the whole answer's length, sends half of it, and leaves: the server closes the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": bytes(self.body[: len(self.body) // 2]), "more_body": True})


class _TrickleResponse(Response):
    """Sends the answer a few bytes at a time; gives up when the client leaves or the server stops."""

    def __init__(self, body: bytes, stopping: threading.Event) -> None:
        super().__init__(body, media_type="application/json")
        self._stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body = bytes(self.body)
            for start in range(0, len(body), TRICKLE_BYTES):
                if gone.is_set() or self._stopping.is_set():
                    return  # unfinished: the server closes the connection
                chunk = body[start : start + TRICKLE_BYTES]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(TRICKLE_INTERVAL)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _oversize(rpc_id: int | str | None) -> AsyncIterator[bytes]:
    """A valid-looking statuses answer far larger than any client accepts."""
    task = _json(
        {
            "agent_task_id": "00000000-0000-0000-0000-000000000000",
            "key": "oversize",
            "verb": "delete_image",
            "state": "running",
            "result": "",
            "message": "",
            "created_at": "2024-01-01T00:00:00+00:00",
        }
    )
    chunk = (task + b",") * (65536 // (len(task) + 1))
    yield b'{"jsonrpc":"2.0","id":' + _json(rpc_id) + b',"result":{"tasks":['
    for _ in range(OVERSIZE_ANSWER_BYTES // len(chunk)):
        yield chunk
    yield task + b"]}}"


def faulty_response(
    fault: NetworkFault, body: bytes, rpc_id: int | str | None, stopping: threading.Event
) -> Response | None:
    """The broken HTTP answer this fault stands for; None if the fault does not touch the answer's delivery."""
    if fault == "http_500":
        return PlainTextResponse("simulated fault: internal server error", status_code=500)
    if fault == "garbage":
        return HTMLResponse("<html><body><h1>502 Bad Gateway</h1><p>simulated fault</p></body></html>")
    if fault == "oversize":
        return StreamingResponse(_oversize(rpc_id), media_type="application/json")
    if fault == "drop":
        return _DroppedResponse(body, media_type="application/json")
    if fault == "trickle":
        return _TrickleResponse(body, stopping)
    return None


def expected_drop(record: logging.LogRecord) -> bool:
    """The drop fault is meant to leave its answer unfinished: uvicorn need not complain about it."""
    return record.getMessage() != "ASGI callable returned without completing response."
