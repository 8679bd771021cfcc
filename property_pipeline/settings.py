"""Every environment variable the pipeline reads, with its default, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_LOGS_DIR = "logs"
DEFAULT_DB_FILE = "property_pipeline.db"
DEFAULT_LEASE_SECONDS = 300
DEFAULT_API_BASE_URL = "http://127.0.0.1:8765"
DEFAULT_PAGE_SIZE = 400
DEFAULT_RETENTION_MONTHS = 2
DEFAULT_CAMPAIGNS_FILE = "campaigns.yaml"
# A page of 1000 records is about 2 MB; larger files are refused unread (memory stays bounded).
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_SENSOR_MAX_FILES = 500


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _bool_env(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with `Settings.from_env()`; tests build it directly."""

    logs_dir: Path
    db_url: str
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    api_base_url: str = DEFAULT_API_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    page_size: int = DEFAULT_PAGE_SIZE
    campaigns_file: Path = Path(DEFAULT_CAMPAIGNS_FILE)
    retention_months: int = DEFAULT_RETENTION_MONTHS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    archive_enabled: bool = True
    alert_webhook_url: str | None = None
    pending_alert_age_seconds: int = 24 * 3600
    sensor_auto_process: bool = False
    sensor_max_files: int = DEFAULT_SENSOR_MAX_FILES
    process_workers: int | None = None  # None: one per CPU (at most 4) on PostgreSQL, 1 on SQLite

    @classmethod
    def from_env(cls) -> Settings:
        """Read the `PROPERTY_PIPELINE_*` and `PROPERTY_API_*` variables, with defaults for a fresh machine."""
        logs_dir = Path(os.environ.get("PROPERTY_PIPELINE_LOGS_DIR") or DEFAULT_LOGS_DIR).absolute()
        db_url = os.environ.get("PROPERTY_PIPELINE_DB_URL") or default_db_url()
        campaigns = os.environ.get("PROPERTY_PIPELINE_CAMPAIGNS_FILE")
        return cls(
            logs_dir=logs_dir,
            db_url=db_url,
            lease_seconds=_int_env("PROPERTY_PIPELINE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS),
            api_base_url=(os.environ.get("PROPERTY_API_BASE_URL") or DEFAULT_API_BASE_URL).rstrip("/"),
            api_key=os.environ.get("PROPERTY_API_KEY") or None,
            page_size=_int_env("PROPERTY_API_PAGE_SIZE", DEFAULT_PAGE_SIZE),
            campaigns_file=Path(campaigns or DEFAULT_CAMPAIGNS_FILE).absolute(),
            retention_months=_int_env("PROPERTY_PIPELINE_RETENTION_MONTHS", DEFAULT_RETENTION_MONTHS),
            max_payload_bytes=_int_env("PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES),
            archive_enabled=_bool_env("PROPERTY_PIPELINE_ARCHIVE", True),
            alert_webhook_url=os.environ.get("PROPERTY_PIPELINE_ALERT_WEBHOOK_URL") or None,
            pending_alert_age_seconds=_int_env("PROPERTY_PIPELINE_PENDING_ALERT_SECONDS", 24 * 3600),
            sensor_auto_process=_bool_env("PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS", False),
            sensor_max_files=_int_env("PROPERTY_PIPELINE_SENSOR_MAX_FILES", DEFAULT_SENSOR_MAX_FILES),
            process_workers=_int_env("PROPERTY_PIPELINE_PROCESS_WORKERS", 0, minimum=0) or None,
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some values replaced (command-line flags win over the environment)."""
        return replace(self, **changes)


def default_db_url() -> str:
    """SQLite file in the working directory: works on a fresh machine with no services."""
    return f"sqlite:///{Path(DEFAULT_DB_FILE).absolute()}"
