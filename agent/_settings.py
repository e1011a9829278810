"""Process settings, from VOICERUN_* environment variables. Built once in main() and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICERUN_", env_nested_delimiter="__", extra="forbid")

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    workflows: Path = Path("workflows/examples")
    data_dir: Path = Path("data")
