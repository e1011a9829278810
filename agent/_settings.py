"""Process settings, from VOICERUN_* environment variables. Built once in main() and passed down."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from metering import MeteringConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICERUN_", env_nested_delimiter="__", extra="forbid")

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    workflows: Path = Path("workflows/examples")
    data_dir: Path = Path("data")
    master_keys: SecretStr | None = None
    """Fernet keys (comma-separated, the first encrypts) for tenants' provider keys, which the
    control API stores and the worker uses for its calls; unset, provider keys are off."""
    recordings: str | None = None
    """Where the worker stores recordings of calls that ask for one: a directory, or
    s3://bucket/prefix?endpoint_url=...&region=... for any S3-compatible store."""

    # -- metering ----------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("VOICERUN_DATABASE_URL", "DATABASE_URL")
    )
    """The ledger: postgresql://... for a pool of workers; unset, a SQLite file in data_dir."""
    worker_id: str = Field(default_factory=socket.gethostname)
    """Names this worker's calls in the ledger, so a restarted worker closes only its own."""
    metering_queue_size: int = Field(default=10_000, ge=100)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (0: any free port); unset, no metrics server."""
    metrics_host: str = "0.0.0.0"

    usage_api_url: str | None = None
    """Base URL of the usage-tracking API (e.g. https://cp-api.withpaygent.com); unset, no export."""
    usage_api_key: SecretStr | None = None
    usage_agent_id: str | None = None
    usage_customer_id: str | None = None
    """The customer billed for calls that name none."""
    usage_customer_name: str | None = None
    usage_plan: str = "default"
    usage_max_attempts: int = Field(default=20, ge=1)
    """Failed deliveries of one event before it goes to the dead letters."""
    usage_api_idempotent: bool = False
    """The usage API applies a request once per Idempotency-Key: a request whose answer was lost
    (a timeout, a crash mid-request) is sent again. Unset, such a request is held in doubt for
    an operator (`voicerun metering doubt`), since resending could bill it twice."""

    def metering(self) -> MeteringConfig:
        """The metering settings, as metering takes them."""
        from metering import MeteringConfig

        return MeteringConfig(
            database_url=self.database_url,
            data_dir=self.data_dir,
            worker_id=self.worker_id,
            queue_size=self.metering_queue_size,
            usage_api_url=self.usage_api_url,
            usage_api_key=self.usage_api_key.get_secret_value() if self.usage_api_key else None,
            usage_agent_id=self.usage_agent_id,
            usage_customer_id=self.usage_customer_id,
            usage_customer_name=self.usage_customer_name,
            usage_plan=self.usage_plan,
            usage_max_attempts=self.usage_max_attempts,
            usage_api_idempotent=self.usage_api_idempotent,
        )

    @field_validator("usage_api_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        # The message never repeats the value: a pasted URL may carry credentials.
        if not url:
            return url
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            host = None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(
                "must be an http:// or https:// URL with a host, e.g. https://cp-api.withpaygent.com"
            )
        return url

    @model_validator(mode="after")
    def _export_is_complete(self) -> Settings:
        if self.usage_api_url:
            missing = [
                f"VOICERUN_{name.upper()}"
                for name in ("usage_api_key", "usage_agent_id", "usage_customer_id")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"VOICERUN_USAGE_API_URL is set, so {', '.join(missing)} must be too")
        return self
