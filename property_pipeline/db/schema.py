"""Table definitions (SQLAlchemy Core). The Alembic migrations create them; nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)

from property_pipeline.states import CaptureRunState, FileStatus


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes everywhere: `timestamptz` on PostgreSQL, naive UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the pipeline stores UTC-aware times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return as_utc(value)


def as_utc(value: datetime | str | None) -> datetime | None:
    """A time read from the database as an aware UTC datetime: SQLite returns naive text (and untyped text from
    MIN() and MAX()), PostgreSQL a timestamptz."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# Autoincrement needs INTEGER PRIMARY KEY on SQLite; BIGINT elsewhere.
Id = BigInteger().with_variant(Integer(), "sqlite")
# PostgreSQL: `json` compressed with lz4 (migration 0004), the record's text as loaded: a bulk load
# costs far less than parsing every record into jsonb. `raw::jsonb` gives jsonb where one is wanted.
RawJson = JSON()

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

batch_file_status = Table(
    "batch_file_status",
    metadata,
    Column("file_id", Id, primary_key=True, autoincrement=True),
    Column(
        "file_path", String(512), nullable=False, unique=True, comment="YYYY-MM/<name>, relative to the payload folder"
    ),
    Column("campaign_id", String(64), nullable=False),
    Column("batch_number", Integer, nullable=False),
    Column("month", String(7), nullable=False),
    Column("status", String(16), nullable=False),
    Column("checksum_sha256", String(64), nullable=False),
    Column("file_size_bytes", BigInteger, nullable=False),
    Column("captured_at", UTCDateTime, nullable=False, comment="capture time, from the file name"),
    Column("created_at", UTCDateTime, nullable=False, comment="registration time"),
    Column("pending_since", UTCDateTime, comment="last back to PENDING (retry, reprocess); empty: since registration"),
    Column("processed_at", UTCDateTime),
    Column("error_details", Text),
    Column("properties_count", Integer, comment="records in the file"),
    Column("success_count", Integer),
    Column("error_count", Integer),
    Column("processing_time_ms", Integer),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("locked_by", String(128)),
    Column("locked_until", UTCDateTime),
    Column("duplicate_of_file_id", Id, ForeignKey("batch_file_status.file_id")),
    Column("archived_at", UTCDateTime),
    Column("deleted_at", UTCDateTime),
    Column("archive_name", String(255)),
    Column(
        "plain_json",
        Boolean,
        comment="the page decodes as plain JSON (orjson reads it), found when registered; empty: not known",
    ),
    Column(
        "content_unreadable",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="empty or not a page when registered: never recorded as a duplicate",
    ),
    CheckConstraint(FileStatus.sql_check("status"), name="status"),
    Index(None, "status", "month", "file_id"),
    Index(None, "checksum_sha256"),
    Index(None, "campaign_id", "batch_number"),
    # Partial indexes, created by the migrations and not declared here (declaring a dialect's option loads that
    # dialect's modules, about a tenth of a second at every command's start):
    # - one original per content (0006): unique checksum_sha256 WHERE duplicate_of_file_id IS NULL AND NOT
    #   content_unreadable; a second registrar of the same bytes gets a conflict;
    # - the PENDING files by file_id (0009): the next claim is the first entry, however many settled files
    #   come before it;
    # - the COMPLETED originals by processing_time_ms DESC, file_id (0009): the report's slowest files.
)

# Per month and campaign, what `batch_file_status` counts: kept by triggers on that table, in the
# transaction of each change (migration 0009), so it always equals a count of the table. Read only.
file_totals = Table(
    "file_totals",
    metadata,
    Column("month", String(7), primary_key=True),
    Column("campaign_id", String(64), primary_key=True),
    Column("files", BigInteger, nullable=False, comment="0 once every file of the group moved or was removed"),
    Column("pending", BigInteger, nullable=False),
    Column("processing", BigInteger, nullable=False),
    Column("completed", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("discarded", BigInteger, nullable=False),
    Column("discarded_deleted", BigInteger, nullable=False, comment="DISCARDED files deleted by retention"),
    Column("duplicates", BigInteger, nullable=False),
    Column("records_loaded", BigInteger, nullable=False, comment="success_count of the COMPLETED files"),
    Column("records_quarantined", BigInteger, nullable=False, comment="error_count of the COMPLETED files"),
    Column("archived", BigInteger, nullable=False),
    Column("deleted", BigInteger, nullable=False),
    Column("records_on_disk", BigInteger, nullable=False, comment="properties_count of files not deleted"),
    Column("bytes_on_disk", BigInteger, nullable=False),
    Column("original_rows_loaded", BigInteger, nullable=False, comment="success_count of COMPLETED originals"),
    Column("original_processing_ms", BigInteger, nullable=False, comment="processing_time_ms of the same"),
)

file_status_events = Table(
    "file_status_events",
    metadata,
    Column("event_id", Id, primary_key=True, autoincrement=True),
    Column("file_id", Id, ForeignKey("batch_file_status.file_id"), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(128), comment="worker id or command that made the change"),
    Column("detail", Text),
)

# A property is two rows (migration 0011): its content, and its last sighting. A record seen again with the same
# content moves only its narrow sighting row; the wide content row is rewritten only when the content changes.
property_records = Table(
    "property_records",
    metadata,
    Column("property_id", Text, primary_key=True, comment="the API's id; integer ids as decimal text"),
    Column("apn", Text),
    Column("address", Text, comment="address.address, one line"),
    Column("street", Text),
    Column("city", Text),
    Column("state", String(2)),
    Column("zip", String(5)),
    Column("county", Text),
    Column("latitude", Float),
    Column("longitude", Float),
    Column("bedrooms", Integer),
    Column("bathrooms", Float),
    Column("square_feet", BigInteger),
    Column("lot_square_feet", BigInteger),
    Column("year_built", Integer),
    Column("property_type", Text),
    Column("estimated_value", BigInteger),
    Column("estimated_equity", BigInteger),
    Column("last_sale_date", Date),
    Column("last_sale_amount", BigInteger),
    Column("owner1_first_name", Text),
    Column("owner1_last_name", Text),
    Column("owner_occupied", Boolean),
    Column("absentee_owner", Boolean),
    Column("mail_address", Text),
    Column("mail_street", Text),
    Column("mail_city", Text),
    Column("mail_state", String(2)),
    Column("mail_zip", String(5)),
    Column("mail_county", Text),
    Column("raw", RawJson, nullable=False, comment="the whole record, as received"),
)

property_sightings = Table(
    "property_sightings",
    metadata,
    Column("property_id", Text, primary_key=True),
    Column(
        "content_hash",
        LargeBinary(16),
        comment="XXH3-128 of the content row (record bytes and typed values); empty: loaded before migration 0011",
    ),
    Column("source_file_id", Id, nullable=False, comment="newest file that delivered the property: its values"),
    Column("campaign_id", String(64), nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False, comment="capture time of that file: newest wins"),
    Column("first_seen_at", UTCDateTime, nullable=False, comment="capture time of the first file that delivered it"),
)

# The view over the two (migration 0011), with the columns the table had before: read it, write the two tables.
properties = Table(
    "properties",
    metadata,
    *(
        Column(
            column.name, column.type, primary_key=column.primary_key, nullable=column.nullable, comment=column.comment
        )
        for column in property_records.c
    ),
    Column("source_file_id", Id, nullable=False, comment="file the current values came from"),
    Column("campaign_id", String(64), nullable=False),
    Column("captured_at", UTCDateTime, nullable=False, comment="capture time of that file: newest wins"),
    Column("first_seen_at", UTCDateTime, nullable=False, comment="capture time of the first file that loaded it"),
    Column("last_seen_at", UTCDateTime, nullable=False, comment="capture time of the newest file that loaded it"),
    info={"is_view": True},
)

# No foreign key on file_id (migration 0005): only the loader writes link rows, in the file's transaction.
file_properties = Table(
    "file_properties",
    metadata,
    Column("file_id", Id, primary_key=True, comment="batch_file_status.file_id"),
    Column("property_id", Text, primary_key=True),
    sqlite_with_rowid=False,  # one B-tree on SQLite, not a rowid table plus its key's index (migration 0010)
)

quarantined_records = Table(
    "quarantined_records",
    metadata,
    Column("quarantine_id", Id, primary_key=True, autoincrement=True),
    Column("file_id", Id, ForeignKey("batch_file_status.file_id"), nullable=False, index=True),
    Column("record_index", Integer, nullable=False, comment="0-based position in the file's data list"),
    Column("property_id", Text),
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False, comment="the record's JSON text"),
    Column("quarantined_at", UTCDateTime, nullable=False),
)


capture_runs = Table(
    "capture_runs",
    metadata,
    Column("run_id", Id, primary_key=True, autoincrement=True),
    Column("campaign_id", String(64), nullable=False),
    Column("criteria", Text, nullable=False, comment="the search criteria as canonical JSON"),
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("next_result_index", Integer, nullable=False, server_default="0"),
    Column("result_count", Integer),
    Column("pages", Integer, nullable=False, server_default="0"),
    Column("records", Integer, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    CheckConstraint(CaptureRunState.sql_check("state"), name="state"),
    Index(None, "campaign_id", "state"),
)


alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", Id, primary_key=True, autoincrement=True),
    Column("alert_key", String(200), nullable=False, unique=True, comment="the cause; one alert per key, ever"),
    Column("kind", String(16), nullable=False),
    Column("file_id", Id),
    Column("month", String(7)),
    Column("message", Text, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    Column("delivery_attempts", Integer, nullable=False, server_default="0"),
)


# One row per month, state and property type (NULL when the properties had none): written by the
# `property_market_summary` asset, which replaces a month's rows in one transaction.
property_market_summary = Table(
    "property_market_summary",
    metadata,
    Column("summary_id", Id, primary_key=True, autoincrement=True),
    Column("month", String(7), nullable=False),
    Column("state", String(2)),
    Column("property_type", Text),
    Column("property_count", Integer, nullable=False, comment="properties the month's files delivered"),
    Column("valued_count", Integer, nullable=False, comment="of them, with an estimated value"),
    Column("value_p25", Float, comment="estimated_value, first quartile (linear interpolation)"),
    Column("value_median", Float),
    Column("value_p75", Float),
    Column("equity_median", Float),
    Column("absentee_owner_share", Float, comment="true / known (null flags left out)"),
    Column("owner_occupied_share", Float, comment="true / known (null flags left out)"),
    Column("value_median_change", Float, comment="value_median minus the previous month's stored one"),
    Column("equity_median_change", Float, comment="equity_median minus the previous month's stored one"),
    Column("computed_at", UTCDateTime, nullable=False),
    Index(None, "month", "state", "property_type"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)
