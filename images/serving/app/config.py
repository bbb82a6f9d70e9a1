"""Settings of the serving app, read once from the environment (docs/interfaces.md)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Settings(BaseSettings):
    """Every knob of the server; the environment variable is the field name in upper case."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", protected_namespaces=())

    models_dir: Path = Field(Path("/models"), description="root of the exported models (mounted read-only)")
    model_name: str = Field("iris-classifier", description="which model under MODELS_DIR")
    host: str = Field("0.0.0.0", description="listen address")
    port: int = Field(8000, ge=1, le=65535, description="listen port")
    workers: int = Field(2, ge=1, le=64, description="worker processes, each with its own model holder")
    reload_interval_seconds: float = Field(
        2.0, gt=0, le=3600, description="how often current.json is checked for a newly published model"
    )
    swap_delay_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description=(
            "a newly published model takes over at its published_at plus this many seconds, in every worker "
            "and pod alike, so that versions never go back between workers; keep it above the reload interval "
            "plus the time to load a model (0: each worker swaps as soon as it has loaded)"
        ),
    )
    worker_healthcheck_timeout_seconds: int = Field(
        30,
        ge=1,
        le=600,
        description=(
            "how long the supervisor (app/supervisor.py) waits for a worker's heartbeat before killing and "
            "replacing it; uvicorn's default of 5 s killed busy workers mid-request on a loaded node"
        ),
    )
    max_header_bytes: int = Field(
        16384,
        ge=1024,
        le=1048576,
        description="request line plus headers of one request, in bytes; over it: 431 and the connection closed",
    )
    max_headers: int = Field(100, ge=8, le=1000, description="header fields in one request; over it: 431")
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="from a connection's opening (or a request's first byte) until its headers are complete; then 408",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="from a request's headers until its whole body has arrived; then 408"
    )
    keep_alive_timeout_seconds: float = Field(
        5.0, gt=0, le=600, description="an idle keep-alive connection is closed after this many seconds"
    )
    max_connections: int = Field(
        512,
        ge=1,
        le=100_000,
        description="open connections per worker; a connection beyond them gets 503 and is closed at once",
    )
    log_level: str = Field("info", description="critical, error, warning, info or debug")
    access_log: bool = Field(False, description="log every request (off by default: it costs on the hot path)")

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _SAFE_NAME.match(value):
            raise ValueError(
                "must be a plain directory name of letters, digits, '.', '_' or '-' (not starting with a separator)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        allowed = ("critical", "error", "warning", "info", "debug")
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value.lower()


def describe_errors(exc) -> str:
    """One line per invalid setting: the environment variable, the value given and what is allowed."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
        lines.append(f"invalid setting {name}={err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)
