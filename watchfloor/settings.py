"""The one settings object, read from the environment (prefix ``WATCHFLOOR_``) at start-up.

Nothing reads the environment at import time: the command line builds a ``Settings`` and
passes it down, so tests build their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Configuration of every Watchfloor process. Each field is documented in the README."""

    model_config = SettingsConfigDict(env_prefix="WATCHFLOOR_", extra="ignore")

    # Where to find the broker and the database. Unset means: start the embedded ones.
    mqtt_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path(".watchfloor")

    # Ingest
    ingest_client_id: str = "watchfloor-ingest-1"
    # Shared-subscription group; empty subscribes directly (one worker only). The embedded
    # broker (rumqttd) panics when a persistent session with a $share filter resumes, so the
    # demo runs one worker with a direct subscription.
    ingest_share_group: str = "watchfloor-ingest"
    mqtt_protocol: str = Field(default="auto", pattern="^(auto|5|3.1.1)$")
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=600)
    ingest_queue_max: int = Field(default=20_000, ge=100)
    ingest_batch_max: int = Field(default=5_000, ge=1)
    ingest_batch_interval_ms: int = Field(default=20, ge=1, le=10_000)
    require_registration: bool = False

    # Validation limits (see docs/mqtt-contract.md)
    max_payload_bytes: int = Field(default=4_096, ge=256, le=1_048_576)
    max_future_skew_s: int = Field(default=300, ge=0)
    rejected_payload_keep_bytes: int = Field(default=1_024, ge=0, le=65_536)

    # Alerts (raised by ingest)
    alert_battery_warn_pct: float = Field(default=20.0, ge=0, le=100)
    alert_battery_critical_pct: float = Field(default=10.0, ge=0, le=100)
    alert_storage_warn_pct: float = Field(default=90.0, ge=0, le=100)
    alert_gps_lost_after_s: int = Field(default=120, ge=1)
    alert_offline_after_s: int = Field(default=120, ge=5)

    # Storage. timescaledb: "auto" uses it when the server has it (preloaded), "off" never,
    # "require" refuses to migrate without it.
    timescaledb: str = Field(default="auto", pattern="^(auto|off|require)$")
    retention_days: int = Field(default=30, ge=1)
    compress_after_days: int = Field(default=2, ge=1)
