"""Building the batches of a long backlog in a second process, while this one writes.

A catch-up's batch is built in Python (decoding the events, making their rows)
and then written; for a backlog of hundreds of thousands of events each half
takes about as long as the other, and only a second process can do the first
while this one does the second (the drivers take the GIL back for every row
they write, so a thread builds no faster). The worker is given the log entries
as read here and the positions they are built from, and sends back the batch's
writes as plain tuples (`Writes`); everything that decides what is written
where (the positions, the lock, the check that nobody moved them meanwhile)
stays with the caller.

The worker is `python -m projections.backlog_worker`, spoken to over its standard
input and output (pickled frames, each after its length). Not a
`multiprocessing` process: a spawned one imports the caller's main module
again, and a program without the `__main__` guard would run a second time.
A frame exchange runs in a thread of this process, so that starting the worker
and sending it a batch overlap the writing here. Should the worker fail for
any reason but a damaged event, the batch is built here instead, where the
same failure is raised from the code that has it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import IO, Any

from orchestrator.collector import collector_paused
from orchestrator.errors import OrchestratorError
from orchestrator.store.event_store import LogEntry
from projections.read_models import READ_MODELS, RELEVANT_PREFIX, RawEvent, ReadModel, apply_events
from projections.statements import Writes

log = logging.getLogger("orchestrator.projections")

# A catch-up hands its batches to the worker only this far behind the log: starting one costs
# about a third of a second, a batch of a live catch-up a few milliseconds.
BACKLOG_EVENTS = 100_000
FRAME_LENGTH = struct.Struct("!Q")
HELLO = b"projections.backlog_worker 1\n"  # the worker's first words, before any frame
START_SECONDS = 30.0
LONGEST_FRAME = 2**31  # a batch's rows come to tens of megabytes
STOP_SECONDS = 10.0


class WorkerGone(Exception):
    """The worker did not answer (it exited, was killed, or failed on something not ours to report)."""


def build_writes(entries: Sequence[LogEntry], targets: Sequence[tuple[str, int]]) -> tuple[Writes, object]:
    """The writes of a batch of plain log entries for the named read models at their positions, and
    what they were made from: freeing the decoded events and the batch's rows takes a fifth as long
    as making them, and the worker does it after it has answered."""
    models: list[tuple[ReadModel, int]] = [(READ_MODELS[name], position) for name, position in targets]
    events = [(e[0], RawEvent.decode(e[1], e[2], e[3], e[4])) for e in entries if e[3].startswith(RELEVANT_PREFIX)]
    batch = apply_events(events, models, "")
    return batch.writes(), (events, batch)


class BacklogBuilder:
    """One worker process, started at the first batch handed to it and stopped with the block."""

    def __init__(self) -> None:
        self._worker: subprocess.Popen[bytes] | None = None
        self._exchange: ThreadPoolExecutor | None = None
        self._gone: str | None = None  # why the worker is gone, as the exchange's thread found
        self.broken = False

    def __enter__(self) -> BacklogBuilder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def submit(self, entries: Sequence[LogEntry], targets: Sequence[tuple[str, int]]) -> Future[Writes] | None:
        """The batch, being built by the worker; None if the worker is gone (build it here)."""
        if self.broken:
            return None
        if self._exchange is None:
            self._exchange = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backlog-builder")
        return self._exchange.submit(self._round_trip, (list(entries), list(targets)))

    def result(self, writes: Future[Writes]) -> Writes | None:
        """What the worker built; None if it is gone (build it here). A damaged event is raised."""
        try:
            return writes.result()
        except WorkerGone as exc:
            if not self.broken:
                log.warning("the read models' backlog builder stopped (%s); building in this process", exc)
            self.broken = True
            return None

    def _round_trip(self, request: tuple[list[LogEntry], list[tuple[str, int]]]) -> Writes:
        if self._gone is not None:  # the batches handed on after it went
            raise WorkerGone(self._gone)
        try:
            worker = self._started()
            assert worker.stdin is not None and worker.stdout is not None
            _send(worker.stdin, request)
            with collector_paused():
                ok, answer = _receive(worker.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._gone = f"{type(exc).__name__}: {exc}"
            raise WorkerGone(self._gone) from None
        if ok:
            assert isinstance(answer, Writes)
            return answer
        if isinstance(answer, OrchestratorError):
            raise answer
        self._gone = str(answer)
        raise WorkerGone(self._gone)

    def _started(self) -> subprocess.Popen[bytes]:
        """The worker, started and greeted: whatever `sys.executable` is, it answers as the worker
        within START_SECONDS or is killed (OSError, EOFError)."""
        if self._worker is None:
            worker = subprocess.Popen(  # its stderr is ours: a warning of its own reaches the operator
                [sys.executable, "-m", "projections.backlog_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert worker.stdout is not None
            try:
                ready, _, _ = select.select([worker.stdout], [], [], START_SECONDS)
                if not ready or worker.stdout.readline(len(HELLO)) != HELLO:
                    raise EOFError(f"{sys.executable} did not start as the backlog's worker")
            except BaseException:
                worker.kill()
                worker.wait()
                raise
            self._worker = worker
        return self._worker

    def close(self) -> None:
        """Let the worker go (its input ends, it exits) and wait for it; kill it if it does not."""
        if self._exchange is not None:
            self._exchange.shutdown(wait=True, cancel_futures=True)
            self._exchange = None
        worker, self._worker = self._worker, None
        if worker is None:
            return
        assert worker.stdin is not None and worker.stdout is not None
        with contextlib.suppress(OSError):  # it may have gone already
            worker.stdin.close()
        try:
            worker.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        worker.stdout.close()


def _send(stream: IO[bytes], value: object) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(FRAME_LENGTH.size)
    if len(header) < FRAME_LENGTH.size:
        raise EOFError("the worker's output ended")
    (length,) = FRAME_LENGTH.unpack(header)
    if length > LONGEST_FRAME:
        raise EOFError(f"a frame of {length} bytes: not the worker's")
    payload = stream.read(length)
    if len(payload) < length:
        raise EOFError("the worker's output ended within a frame")
    return pickle.loads(payload)  # noqa: S301 (a pipe between this process and the worker it started)


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The worker: build each batch asked for, until the requests end."""
    while True:
        with collector_paused():
            try:
                entries, targets = _receive(requests)
            except EOFError:
                return
            made_from: object = None
            try:
                writes, made_from = build_writes(entries, targets)
                answer: tuple[bool, object] = (True, writes)
            except OrchestratorError as exc:  # a damaged event: the caller reports it as its own
                answer = (False, exc)
            except Exception as exc:  # anything else: the caller builds the batch itself, and meets it there
                answer = (False, f"{type(exc).__name__}: {exc}")
            _send(answers, answer)
            del entries, made_from, answer


def main() -> None:
    # The answers go out on a copy of standard output; anything else written there goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        answers.write(HELLO)
        answers.flush()
        serve(sys.stdin.buffer, answers)
    except (BrokenPipeError, KeyboardInterrupt):
        # The catch-up that started it is gone (killed, or interrupted with its process group):
        # nobody is left to answer, and nothing to say on a terminal that is no longer ours.
        os._exit(0)


if __name__ == "__main__":
    main()
