"""Engine configuration, from `ORCHESTRATOR_*` environment variables or code."""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import InputError


class EngineSettings(BaseSettings):
    """How the task manager polls, submits, retries and gives up."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="ignore", frozen=True)

    poll_interval: float = Field(2.0, gt=0, le=3600, description="seconds between poll cycles")
    submit_batch: int = Field(100, ge=1, le=10_000, description="tasks per create call to the agent")
    zombie_seconds: float = Field(3000 * 60, gt=0, description="a task running longer is stopped and fails")
    end_action_attempts: int = Field(3, ge=1, le=100, description="tries of an end action before giving up")
    end_action_backoff: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    agent_backoff_max: float = Field(30.0, gt=0, description="longest wait between calls to a down agent")
    agent_timeout: float = Field(10.0, gt=0, le=600, description="an agent's answer slower than this is a failure")
    catch_up_interval: float = Field(
        0.25,
        ge=0,
        le=3600,
        description="the engine brings the read models up to date at most this often, busy or idle (and when it "
        "stops); every query catches them up first anyway",
    )
    lease_timeout: float = Field(
        10.0, ge=0.5, le=600, description="a pool whose engine has not renewed its lease for this long is taken over"
    )


def load_engine_settings(**overrides: object) -> EngineSettings:
    try:
        return EngineSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise InputError(f"engine setting {name} (ORCHESTRATOR_{name.upper()}): {first['msg']}") from None
