"""Every environment variable the pipeline reads, with its default, in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from property_pipeline.errors import ConfigurationError

DEFAULT_LOGS_DIR = "logs"
DEFAULT_DB_FILE = "property_pipeline.db"
DEFAULT_LEASE_SECONDS = 300
# A statement of a file's load running longer than this is cancelled by PostgreSQL (it also frees the
# row locks of a processor suspended in the middle of its COPY).
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 600
DEFAULT_API_BASE_URL = "http://127.0.0.1:8765"
DEFAULT_PAGE_SIZE = 400
MAX_PAGE_SIZE = 1000  # the provider's maximum
DEFAULT_API_MAX_ATTEMPTS = 6
DEFAULT_PAGE_DEADLINE_SECONDS = 120  # one attempt at a page, however slowly its bytes come
DEFAULT_RETENTION_MONTHS = 2
DEFAULT_CAMPAIGNS_FILE = "campaigns.yaml"
# A page of 1000 records is about 2 MB; larger files are refused unread (memory stays bounded).
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_SENSOR_MAX_FILES = 500
# A dropped-in file that is not a complete page yet is registered only once unchanged this long.
DEFAULT_SETTLE_SECONDS = 5
# A payload name may lie this far in the future of this machine's clock (clocks drift); further is refused.
DEFAULT_CLOCK_SKEW_SECONDS = 300
# The oldest month the Dagster UI has a partition for (folders older than it are not shown there).
DEFAULT_FIRST_PARTITION_MONTH = "2026-01"
# Where people open the Dagster UI: alert messages link to runs under it.
DEFAULT_UI_BASE_URL = "http://127.0.0.1:3000"
# A month whose quarantined share of records is above this gets a warning from its quarantine check.
DEFAULT_QUARANTINE_WARN_SHARE = 0.01


DAY = 86_400
SUPPORTED_DATABASES = "sqlite:///path/to/file.db or postgresql://user@host/database"


class SettingsError(ConfigurationError, ValueError):
    """An environment variable holds a value the pipeline cannot use."""


def _int_env(name: str, default: int, minimum: int = 1, maximum: int = 10**9) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw[:40]!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    if value > maximum:
        raise SettingsError(f"{name}={raw[:40]} must be at most {maximum:,}")
    return value


def _http_url_env(name: str, default: str | None) -> str | None:
    """An http(s) URL with a host, without its trailing slash; the value is never echoed (it may hold a secret)."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    parsed = urlsplit(raw)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise SettingsError(f"{name} is not an http:// or https:// URL with a host")
    return raw.rstrip("/")


def _db_url_env(name: str) -> str:
    """The database URL, checked enough to say what is wrong without connecting (and without showing a password)."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default_db_url()
    # Imported here: reading the settings stays cheap for the commands that need no database.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise SettingsError(f"{name} is not a database URL; use {SUPPORTED_DATABASES}") from None
    backend = parsed.get_backend_name()
    if backend not in {"sqlite", "postgresql", "postgres"}:
        raise SettingsError(f"{name}: database {backend!r} is not supported; use {SUPPORTED_DATABASES}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise SettingsError(f"{name} has a port outside 1-65535")
    return raw


def _month_env(name: str, default: str) -> str:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", raw):
        raise SettingsError(f"{name}={raw[:40]!r} is not a month of the form YYYY-MM (for example 2026-01)")
    return raw


def _share_env(name: str, default: float) -> float:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw[:40]!r} is not a number (a share such as 0.01 for 1%)") from None
    if not 0 <= value <= 1:
        raise SettingsError(f"{name}={raw[:40]} must be a share between 0 and 1 (0.01 is 1%)")
    return value


def _payloads_url_env(name: str) -> str | None:
    """A payload store: unset (the data root folder), a folder path, or `s3://bucket[/prefix]`."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    if raw.startswith("s3://"):
        bucket, _, _prefix = raw[len("s3://") :].partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise SettingsError(f"{name}={raw[:80]!r}: {bucket!r} is not an S3 bucket name; use s3://bucket/prefix")
        return raw
    if "://" in raw:
        raise SettingsError(f"{name}={raw[:80]!r} is neither a folder path nor s3://bucket/prefix")
    return str(Path(raw).absolute())


def _bool_env(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw[:40]!r} is not a boolean (use true or false)")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with `Settings.from_env()`; tests build it directly."""

    logs_dir: Path
    db_url: str
    # Where payloads and archives live: None for the data root folder `logs_dir`, a folder, or s3://bucket/prefix.
    payloads_url: str | None = None
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    statement_timeout_seconds: int = DEFAULT_STATEMENT_TIMEOUT_SECONDS
    api_base_url: str = DEFAULT_API_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    page_size: int = DEFAULT_PAGE_SIZE
    api_max_attempts: int = DEFAULT_API_MAX_ATTEMPTS
    api_page_deadline_seconds: int = DEFAULT_PAGE_DEADLINE_SECONDS
    campaigns_file: Path = Path(DEFAULT_CAMPAIGNS_FILE)
    retention_months: int = DEFAULT_RETENTION_MONTHS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    archive_enabled: bool = True
    alert_webhook_url: str | None = None
    pending_alert_age_seconds: int = 24 * 3600
    sensor_auto_process: bool = False
    sensor_max_files: int = DEFAULT_SENSOR_MAX_FILES
    process_workers: int | None = None  # None: one per CPU (at most 4) on PostgreSQL, 1 on SQLite
    settle_seconds: int = DEFAULT_SETTLE_SECONDS
    clock_skew_seconds: int = DEFAULT_CLOCK_SKEW_SECONDS
    first_partition_month: str = DEFAULT_FIRST_PARTITION_MONTH
    ui_base_url: str = DEFAULT_UI_BASE_URL
    quarantine_warn_share: float = DEFAULT_QUARANTINE_WARN_SHARE

    @classmethod
    def from_env(cls) -> Settings:
        """Read the `PROPERTY_PIPELINE_*` and `PROPERTY_API_*` variables, with defaults for a fresh machine."""
        logs_dir = Path(os.environ.get("PROPERTY_PIPELINE_LOGS_DIR") or DEFAULT_LOGS_DIR).absolute()
        campaigns = os.environ.get("PROPERTY_PIPELINE_CAMPAIGNS_FILE")
        return cls(
            logs_dir=logs_dir,
            db_url=_db_url_env("PROPERTY_PIPELINE_DB_URL"),
            payloads_url=_payloads_url_env("PROPERTY_PIPELINE_PAYLOADS_URL"),
            lease_seconds=_int_env("PROPERTY_PIPELINE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, maximum=7 * DAY),
            statement_timeout_seconds=_int_env(
                "PROPERTY_PIPELINE_STATEMENT_TIMEOUT_SECONDS", DEFAULT_STATEMENT_TIMEOUT_SECONDS, maximum=DAY
            ),
            api_base_url=_http_url_env("PROPERTY_API_BASE_URL", DEFAULT_API_BASE_URL) or DEFAULT_API_BASE_URL,
            api_key=os.environ.get("PROPERTY_API_KEY") or None,
            page_size=_int_env("PROPERTY_API_PAGE_SIZE", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE),
            api_max_attempts=_int_env("PROPERTY_API_MAX_ATTEMPTS", DEFAULT_API_MAX_ATTEMPTS, maximum=100),
            api_page_deadline_seconds=_int_env(
                "PROPERTY_API_PAGE_DEADLINE_SECONDS", DEFAULT_PAGE_DEADLINE_SECONDS, maximum=DAY
            ),
            campaigns_file=Path(campaigns or DEFAULT_CAMPAIGNS_FILE).absolute(),
            retention_months=_int_env("PROPERTY_PIPELINE_RETENTION_MONTHS", DEFAULT_RETENTION_MONTHS, maximum=1200),
            max_payload_bytes=_int_env(
                "PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES, maximum=16 * 1024**3
            ),
            archive_enabled=_bool_env("PROPERTY_PIPELINE_ARCHIVE", True),
            alert_webhook_url=_http_url_env("PROPERTY_PIPELINE_ALERT_WEBHOOK_URL", None),
            pending_alert_age_seconds=_int_env("PROPERTY_PIPELINE_PENDING_ALERT_SECONDS", DAY, maximum=365 * DAY),
            sensor_auto_process=_bool_env("PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS", False),
            sensor_max_files=_int_env("PROPERTY_PIPELINE_SENSOR_MAX_FILES", DEFAULT_SENSOR_MAX_FILES, maximum=100_000),
            process_workers=_int_env("PROPERTY_PIPELINE_PROCESS_WORKERS", 0, minimum=0, maximum=64) or None,
            settle_seconds=_int_env("PROPERTY_PIPELINE_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS, minimum=0, maximum=DAY),
            clock_skew_seconds=_int_env(
                "PROPERTY_PIPELINE_CLOCK_SKEW_SECONDS", DEFAULT_CLOCK_SKEW_SECONDS, minimum=0, maximum=DAY
            ),
            first_partition_month=first_partition_month_from_env(),
            ui_base_url=_http_url_env("PROPERTY_PIPELINE_UI_BASE_URL", DEFAULT_UI_BASE_URL) or DEFAULT_UI_BASE_URL,
            quarantine_warn_share=_share_env("PROPERTY_PIPELINE_QUARANTINE_WARN_SHARE", DEFAULT_QUARANTINE_WARN_SHARE),
        )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some values replaced (command-line flags win over the environment)."""
        return replace(self, **changes)


def first_partition_month_from_env() -> str:
    """PROPERTY_PIPELINE_FIRST_MONTH: read on its own because the Dagster partitions are built at import."""
    return _month_env("PROPERTY_PIPELINE_FIRST_MONTH", DEFAULT_FIRST_PARTITION_MONTH)


def default_db_url() -> str:
    """SQLite file in the working directory: works on a fresh machine with no services."""
    return f"sqlite:///{Path(DEFAULT_DB_FILE).absolute()}"
