"""A simulated agent served by a process of its own (`orchestrator agent serve`), started and killed at will.

The demo, the soak and the tests run agents this way: a real server on loopback,
over its own state file, reachable at one URL for its whole life (a restart
takes the same port again), so it can be SIGKILLed and brought back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

START_SECONDS = 30.0


class AgentProcess:
    def __init__(
        self,
        state: Path,
        pool: str,
        *,
        task_seconds: float = 0.3,
        log: Path | None = None,
        url_file: Path | None = None,
    ) -> None:
        self.state = state
        self.pool = pool
        self.task_seconds = task_seconds
        self.log = log
        self.url_file = url_file or state.with_name(f"{state.name}.url")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""

    def start(self) -> AgentProcess:
        """Start serving (on the port it had, after a first start) and wait for its URL."""
        self.url_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "orchestrator", "agent", "serve", "--state", str(self.state), "--pool", self.pool]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--url-file", str(self.url_file)]
        argv += ["--task-seconds", str(self.task_seconds)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        out = self.log.open("ab") if self.log is not None else None
        try:
            self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=out or subprocess.DEVNULL)
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + START_SECONDS
        while not self.url_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent server of pool {self.pool} did not start (exit {self.proc.poll()})")
            time.sleep(0.02)
        self.url = self.url_file.read_text().strip()
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL it (no cleanup, as a host dies); True if it was running."""
        was = self.alive
        if self.proc is not None and was:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        return was

    def restart(self) -> None:
        self.kill()
        self.start()
