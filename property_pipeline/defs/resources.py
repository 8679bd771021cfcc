"""Resources: the core's payload store, database, API client and campaigns file, configured from the environment.

Secrets never become plain config: the database URL and the API key are passed as `dg.EnvVar`, so
the UI shows the variable's name, never its value. Settings without a secret fall back to the
defaults of `property_pipeline.settings`, so a fresh clone runs with no variable set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.capture import Campaign, CampaignConfigError, load_campaigns
from property_pipeline.db.engine import create_db_engine, ensure_schema
from property_pipeline.registration import DropInRules
from property_pipeline.settings import (
    DEFAULT_API_MAX_ATTEMPTS,
    DEFAULT_CLOCK_SKEW_SECONDS,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_PAGE_DEADLINE_SECONDS,
    DEFAULT_PAGE_SIZE,
    DEFAULT_QUARANTINE_WARN_SHARE,
    DEFAULT_RETENTION_MONTHS,
    DEFAULT_SETTLE_SECONDS,
    Settings,
)
from property_pipeline.store import backend
from property_pipeline.store.choose import open_payload_store
from property_pipeline.store.folder import PayloadRoot


class PayloadStore(dg.ConfigurableResource):
    """Where payloads live: the data root folder (`property_payloads/YYYY-MM/`, markers, archives) or the
    S3-compatible bucket that `payloads_url` names."""

    logs_dir: str = Field(description="Data root (PROPERTY_PIPELINE_LOGS_DIR); relative paths are from the cwd.")
    payloads_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix for object storage, or a folder; unset: the data root "
        "(PROPERTY_PIPELINE_PAYLOADS_URL). Endpoint and credentials from the AWS environment variables.",
    )
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        description="Largest payload file that is read; larger ones FAIL unread (PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES).",
    )
    settle_seconds: int = Field(
        default=DEFAULT_SETTLE_SECONDS,
        description="A dropped-in file that is not a complete page is registered once unchanged this long "
        "(PROPERTY_PIPELINE_SETTLE_SECONDS).",
    )
    clock_skew_seconds: int = Field(
        default=DEFAULT_CLOCK_SKEW_SECONDS,
        description="How far in the future a payload name's timestamp may lie (PROPERTY_PIPELINE_CLOCK_SKEW_SECONDS).",
    )

    def drop_in_rules(self) -> DropInRules:
        """When a file on disk may be registered."""
        return DropInRules(self.max_payload_bytes, self.settle_seconds, self.clock_skew_seconds)

    def store(self) -> backend.PayloadStore:
        """The payload store; a folder has its sub-folders created."""
        store = open_payload_store(self.payloads_url, Path(self.logs_dir))
        if store.folder is not None:
            store.folder.ensure_folders()
        return store

    def root(self) -> PayloadRoot:
        """The data root folder with its folders created (the folder backend only)."""
        root = PayloadRoot(Path(self.logs_dir))
        root.ensure_folders()
        return root


class PipelineDatabase(dg.ConfigurableResource):
    """The pipeline's database (status table, properties), with the schema checked when a run or tick starts."""

    url: str = Field(description="SQLAlchemy URL (PROPERTY_PIPELINE_DB_URL).")
    lease_seconds: int = Field(
        default=DEFAULT_LEASE_SECONDS, description="How long a PROCESSING claim stays valid without a heartbeat."
    )
    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        engine = create_db_engine(self.url)
        ensure_schema(engine)
        self._engine = engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("PipelineDatabase is used outside a run or tick; Dagster sets it up for one")
        return self._engine


class PropertyApi(dg.ConfigurableResource):
    """The property-search API that capture reads from."""

    base_url: str = Field(description="API root (PROPERTY_API_BASE_URL).")
    api_key: str | None = Field(default=None, description="Sent as x-api-key (PROPERTY_API_KEY).")
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, description="Records per page (PROPERTY_API_PAGE_SIZE).")
    max_attempts: int = Field(
        default=DEFAULT_API_MAX_ATTEMPTS, description="Attempts per page before giving up (PROPERTY_API_MAX_ATTEMPTS)."
    )
    page_deadline_seconds: int = Field(
        default=DEFAULT_PAGE_DEADLINE_SECONDS,
        description="Longest one attempt at a page may take (PROPERTY_API_PAGE_DEADLINE_SECONDS).",
    )
    max_page_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        description="Largest page stored; larger ones are refused unstored (PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES).",
    )

    def client(self) -> PropertySearchClient:
        """A new client; use it as a context manager."""
        return PropertySearchClient(
            self.base_url,
            self.api_key,
            page_size=self.page_size,
            max_attempts=self.max_attempts,
            max_page_bytes=self.max_page_bytes,
            page_deadline=self.page_deadline_seconds,
        )


class CampaignCatalog(dg.ConfigurableResource):
    """The campaigns file that says what capture fetches."""

    path: str = Field(description="campaigns.yaml (PROPERTY_PIPELINE_CAMPAIGNS_FILE).")

    def enabled(self) -> list[Campaign]:
        """The enabled campaigns, in file order."""
        return [campaign for campaign in load_campaigns(Path(self.path)) if campaign.enabled]

    def named(self, campaign_id: str) -> Campaign:
        """The campaign with this id, enabled or not (naming it is asking for it); CampaignConfigError if absent."""
        campaigns = load_campaigns(Path(self.path))
        for campaign in campaigns:
            if campaign.campaign_id == campaign_id:
                return campaign
        known = ", ".join(c.campaign_id for c in campaigns) or "none"
        raise CampaignConfigError(f"campaign {campaign_id!r} is not in {self.path} (campaigns there: {known})")


class RetentionPolicy(dg.ConfigurableResource):
    """How many months of payload files stay on disk, and whether older ones are archived before deletion."""

    keep_months: int = Field(
        default=DEFAULT_RETENTION_MONTHS,
        ge=1,
        description="Months kept, the current one included (PROPERTY_PIPELINE_RETENTION_MONTHS).",
    )
    archive: bool = Field(default=True, description="Archive and verify before deleting (PROPERTY_PIPELINE_ARCHIVE).")


class QuarantinePolicy(dg.ConfigurableResource):
    """How much of a month's records may be quarantined before its quarantine check warns."""

    warn_share: float = Field(
        default=DEFAULT_QUARANTINE_WARN_SHARE,
        ge=0,
        le=1,
        description="Warn above this share of a month's records (PROPERTY_PIPELINE_QUARANTINE_WARN_SHARE; 0.01 = 1%).",
    )


def database_kind(url: str) -> str:
    """The kind Dagster shows for assets stored in the pipeline database: `postgres` or `sqlite`."""
    return "sqlite" if url.startswith("sqlite") else "postgres"


def _env_or(name: str, default: str) -> str:
    """`dg.EnvVar(name)` when the variable is set (resolved in the run, hidden in the UI), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _env_or_none(name: str) -> str | None:
    """`dg.EnvVar(name)` when the variable is set, else None (a setting that may be absent, such as a key)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def database_resources(url: str, lease_seconds: int = DEFAULT_LEASE_SECONDS) -> dict[str, Any]:
    """`database`, and the IO manager that hands `properties` to downstream assets, reading through it.

    The database is given to Dagster partially configured (every value set, nothing left to the launch):
    that is how a resource nested in another one is the very instance that is also top-level, so a run
    opens one engine. A fully configured nested resource would be set up a second time, and Dagster
    1.13 warns (DeprecationWarning) while doing so.
    """
    from property_pipeline.defs.io_managers import (  # it imports PipelineDatabase from here
        PROPERTIES_IO_MANAGER_KEY,
        PropertiesFrameIOManager,
    )

    database = PipelineDatabase.configure_at_launch(url=url, lease_seconds=lease_seconds)
    return {"database": database, PROPERTIES_IO_MANAGER_KEY: PropertiesFrameIOManager(database=database)}


def pipeline_resources(settings: Settings) -> dict[str, Any]:
    """The resources every asset, check, sensor and job of the project uses, keyed by the names they ask for."""
    return {
        "payload_store": PayloadStore(
            logs_dir=_env_or("PROPERTY_PIPELINE_LOGS_DIR", str(settings.logs_dir)),
            payloads_url=_env_or_none("PROPERTY_PIPELINE_PAYLOADS_URL") or settings.payloads_url,
            max_payload_bytes=settings.max_payload_bytes,
            settle_seconds=settings.settle_seconds,
            clock_skew_seconds=settings.clock_skew_seconds,
        ),
        **database_resources(_env_or("PROPERTY_PIPELINE_DB_URL", settings.db_url), settings.lease_seconds),
        "property_api": PropertyApi(
            base_url=settings.api_base_url,
            api_key=_env_or_none("PROPERTY_API_KEY"),
            page_size=settings.page_size,
            max_attempts=settings.api_max_attempts,
            page_deadline_seconds=settings.api_page_deadline_seconds,
            max_page_bytes=settings.max_payload_bytes,
        ),
        "campaigns": CampaignCatalog(path=str(settings.campaigns_file)),
        "retention_policy": RetentionPolicy(keep_months=settings.retention_months, archive=settings.archive_enabled),
        "quarantine_policy": QuarantinePolicy(warn_share=settings.quarantine_warn_share),
    }
