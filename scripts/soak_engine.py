"""The processes the soak runs beside itself: the engines (killed and restarted), the agent server
(killed and restarted, with --agent-server) and read-model rebuilds.

With `--engines N` (PostgreSQL), N engine processes run at once and share the pools under their
leases; each kill picks one of them at random."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from orchestrator.crashpoints import CRASH_EXIT_CODE
from projections import RebuildBusyError
from scripts.soak_config import EARLY_KILL_SECONDS, SoakConfig
from scripts.soak_report import Figures

REPO = Path(__file__).resolve().parent.parent


class Engine:
    """One `orchestrator run` subprocess at a time; its stderr goes to a log file per start."""

    def __init__(self, config: SoakConfig, rng: random.Random, figures: Figures, number: int = 1) -> None:
        self.config = config
        self.rng = rng
        self.figures = figures
        self.number = number  # which of the soak's engines (1..--engines)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env.update(
            ORCHESTRATOR_AGENT_TASK_SECONDS=str(self.config.task_seconds),
            ORCHESTRATOR_POLL_INTERVAL=str(self.config.poll_interval),
            ORCHESTRATOR_AGENT_BACKOFF_MAX="2",
            ORCHESTRATOR_END_ACTION_BACKOFF="0.2",
        )
        env.update(extra)
        return env

    def argv(self) -> list[str]:
        c = self.config
        return [sys.executable, "-m", "orchestrator", "--store", c.store, "--agent-state", str(c.agent_state)]

    def start(self, *, crash_in_recovery: bool = False) -> None:
        assert self.proc is None
        batch = self.rng.choice(["1", "1", "2", "100"])  # one task per agent call makes kills land mid-command
        self.figures.submit_batches[batch] += 1
        self.figures.engine_starts += 1
        self.log_path = self.config.workdir / f"engine-{self.figures.engine_starts:04d}.log"
        self._log = self.log_path.open("wb")
        extra = {"ORCHESTRATOR_CRASH_AT": "in_recovery"} if crash_in_recovery else {}
        self.proc = subprocess.Popen(
            [*self.argv(), "run"],
            cwd=REPO,
            env=self.env(ORCHESTRATOR_SUBMIT_BATCH=batch, **extra),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.started_at = time.monotonic()

    def crash_in_recovery(self, cycle: int) -> None:
        """A start that exits at the `in_recovery` crash point (verdicts recorded, stops not yet made)."""
        self.kill()
        self.start(crash_in_recovery=True)
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        if code != CRASH_EXIT_CODE:
            self.figures.problems.append(
                f"cycle {cycle}: an engine meant to exit in recovery ended with {code}: {self.last_lines()}"
            )
        else:
            self.figures.recovery_crashes += 1
        self.kill()
        self.start()

    def check_alive(self, cycle: int) -> None:
        """An engine that exited without being killed is a problem (a crash, or a crash loop)."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        self._closed()
        self.figures.problems.append(
            f"cycle {cycle}: engine {self.number} exited by itself with code {code}: {self.last_lines()} "
            f"(log {self.log_path})"
        )
        self.start()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.figures.kills += 1
            if time.monotonic() - self.started_at < EARLY_KILL_SECONDS:
                self.figures.early_kills += 1
        self.proc.wait()
        self._closed()

    def _closed(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def last_lines(self, n: int = 3) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return tail(self.log_path.read_text(errors="replace"), n) or "(empty log)"

    def drain(self) -> None:
        """The last engine: recover and run until nothing is in flight; anything but success is a problem."""
        timeout = self.config.final_timeout
        drained = subprocess.run(
            [*self.argv(), "run", "--until-idle", "--timeout", f"{timeout:g}"],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            check=False,
        )
        if drained.returncode != 0:
            self.figures.problems.append(
                f"final `run --until-idle` exited with {drained.returncode}: {tail(drained.stderr, 3)}"
            )


class Engines:
    """The soak's engines, `--engines` of them at once: every one started and watched; a kill picks one.

    On PostgreSQL they share the pools, each under a fenced lease; a SIGKILLed engine's pools are
    taken over at once by another (its liveness lock went with its process)."""

    def __init__(self, config: SoakConfig, rng: random.Random, figures: Figures) -> None:
        self.rng = rng
        self.all = [Engine(config, rng, figures, n) for n in range(1, config.engines + 1)]
        figures.engines = len(self.all)

    @property
    def first(self) -> Engine:
        return self.all[0]

    def pick(self) -> Engine:
        """The engine a kill applies to (one engine: that one, drawing nothing from the generator)."""
        return self.rng.choice(self.all) if len(self.all) > 1 else self.all[0]

    def start(self) -> None:
        for engine in self.all:
            engine.start()

    def check_alive(self, cycle: int) -> None:
        for engine in self.all:
            engine.check_alive(cycle)

    def kill(self) -> None:
        for engine in self.all:
            engine.kill()

    def crash_in_recovery(self, cycle: int) -> None:
        """An engine start that dies at the `in_recovery` crash point. Every engine is killed first:
        a live one would hold the pools, and the start would stand by with nothing to recover."""
        self.kill()
        self.first.crash_in_recovery(cycle)
        for engine in self.all[1:]:
            engine.start()

    def drain(self) -> None:
        self.first.drain()


class Rebuilder:
    """Read-model rebuilds and verifications run beside the engine, some of them killed midway.

    A run that ends by itself must end well: rebuilt (0), verified equal (0), or refused
    because another runs (RebuildBusyError's 11). A verification that finds a difference (10) is a problem.
    """

    def __init__(self, config: SoakConfig, rng: random.Random, figures: Figures, engine: Engine) -> None:
        self.config = config
        self.rng = rng
        self.figures = figures
        self.engine = engine
        self.runs: list[tuple[subprocess.Popen[str], str, float | None]] = []  # process, kind, kill at

    def step(self, cycle: int) -> None:
        self._reap(cycle)
        if self.rng.random() >= self.config.rebuild_chance:
            return
        kind = self.rng.choice(["rebuild", "verify", "rebuild commands"])
        args = ["projections", "rebuild", *(["--verify"] if kind == "verify" else kind.split()[1:])]
        proc = subprocess.Popen(
            [*self.engine.argv(), *args],
            cwd=REPO,
            env=self.engine.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_at = time.monotonic() + self.rng.uniform(0.2, 1.5) if self.rng.random() < 0.4 else None
        self.runs.append((proc, kind, kill_at))
        self.figures.rebuilds[f"{kind} started"] += 1

    def _reap(self, cycle: int) -> None:
        still = []
        for proc, kind, kill_at in self.runs:
            if proc.poll() is None and kill_at is not None and time.monotonic() >= kill_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.figures.rebuilds[f"{kind} killed"] += 1
                continue
            if proc.poll() is None:
                still.append((proc, kind, kill_at))
                continue
            _, stderr = proc.communicate()
            if proc.returncode == 0:
                self.figures.rebuilds[f"{kind} ok"] += 1
            elif proc.returncode == RebuildBusyError.exit_code:
                self.figures.rebuilds[f"{kind} refused: another runs"] += 1
            else:
                self.figures.problems.append(
                    f"cycle {cycle}: projections {kind} exited {proc.returncode}: {tail(stderr, 2)}"
                )
        self.runs = still

    def finish(self) -> None:
        """Wait for the runs still going (bounded), then reap them."""
        deadline = time.monotonic() + 120
        while self.runs and time.monotonic() < deadline:
            self._reap(self.figures.cycles)
            time.sleep(0.05)
        for proc, kind, _ in self.runs:
            proc.kill()
            self.figures.problems.append(f"projections {kind} did not end within 120s")
        self.runs = []


def tail(text: str, n: int) -> str:
    """The last `n` lines of a log or of stderr that are not blank, on one line."""
    return " | ".join([line for line in text.splitlines() if line.strip()][-n:])


class AgentServer:
    """The default pool's agent as a server process (`orchestrator agent serve`), on one port throughout."""

    def __init__(self, config: SoakConfig, figures: Figures) -> None:
        self.config = config
        self.figures = figures
        self.url_file = config.workdir / "agent.url"
        self.log_path = config.workdir / "agent-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""

    def start(self) -> None:
        self.url_file.unlink(missing_ok=True)
        c = self.config
        argv = [sys.executable, "-m", "orchestrator", "agent", "serve", "--state", str(c.agent_state)]
        argv += ["--pool", "default", "--listen", f"127.0.0.1:{self.port}", "--url-file", str(self.url_file)]
        argv += ["--task-seconds", str(c.task_seconds)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not self.url_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent server did not start (see {self.log_path})")
            time.sleep(0.02)
        self.url = self.url_file.read_text().strip()
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def kill(self, *, counted: bool = True) -> None:
        """SIGKILL the server; `counted` unless it is the soak's own cleanup at the end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.figures.agent_kills += counted
        self.proc = None
