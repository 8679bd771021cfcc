"""Initial schema: file status, status events, properties, file-to-property links, quarantine.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batch_file_status",
        sa.Column("file_id", Id, primary_key=True, autoincrement=True),
        sa.Column("file_path", sa.String(512), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("batch_number", sa.Integer, nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("checksum_sha256", sa.String(64), nullable=False),
        sa.Column("file_size_bytes", sa.BigInteger, nullable=False),
        sa.Column("captured_at", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("processed_at", Timestamp),
        sa.Column("error_details", sa.Text),
        sa.Column("properties_count", sa.Integer),
        sa.Column("success_count", sa.Integer),
        sa.Column("error_count", sa.Integer),
        sa.Column("processing_time_ms", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_by", sa.String(128)),
        sa.Column("locked_until", Timestamp),
        sa.Column(
            "duplicate_of_file_id",
            Id,
            sa.ForeignKey(
                "batch_file_status.file_id", name="fk_batch_file_status_duplicate_of_file_id_batch_file_status"
            ),
        ),
        sa.Column("archived_at", Timestamp),
        sa.Column("deleted_at", Timestamp),
        sa.Column("archive_name", sa.String(255)),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')", name="ck_batch_file_status_status"
        ),
        sa.UniqueConstraint("file_path", name="uq_batch_file_status_file_path"),
    )
    op.create_index("ix_batch_file_status_status_month_file_id", "batch_file_status", ["status", "month", "file_id"])
    op.create_index("ix_batch_file_status_checksum_sha256", "batch_file_status", ["checksum_sha256"])
    op.create_index(
        "ix_batch_file_status_campaign_id_batch_number", "batch_file_status", ["campaign_id", "batch_number"]
    )

    op.create_table(
        "file_status_events",
        sa.Column("event_id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "file_id",
            Id,
            sa.ForeignKey("batch_file_status.file_id", name="fk_file_status_events_file_id_batch_file_status"),
            nullable=False,
        ),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128)),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_file_status_events_file_id", "file_status_events", ["file_id"])

    op.create_table(
        "properties",
        sa.Column("property_id", sa.Text, primary_key=True),
        sa.Column("apn", sa.Text),
        sa.Column("address", sa.Text),
        sa.Column("street", sa.Text),
        sa.Column("city", sa.Text),
        sa.Column("state", sa.String(2)),
        sa.Column("zip", sa.String(5)),
        sa.Column("county", sa.Text),
        sa.Column("latitude", sa.Float),
        sa.Column("longitude", sa.Float),
        sa.Column("bedrooms", sa.Integer),
        sa.Column("bathrooms", sa.Float),
        sa.Column("square_feet", sa.BigInteger),
        sa.Column("lot_square_feet", sa.BigInteger),
        sa.Column("year_built", sa.Integer),
        sa.Column("property_type", sa.Text),
        sa.Column("estimated_value", sa.BigInteger),
        sa.Column("estimated_equity", sa.BigInteger),
        sa.Column("last_sale_date", sa.Date),
        sa.Column("last_sale_amount", sa.BigInteger),
        sa.Column("owner1_first_name", sa.Text),
        sa.Column("owner1_last_name", sa.Text),
        sa.Column("owner_occupied", sa.Boolean),
        sa.Column("absentee_owner", sa.Boolean),
        sa.Column("mail_address", sa.Text),
        sa.Column("mail_street", sa.Text),
        sa.Column("mail_city", sa.Text),
        sa.Column("mail_state", sa.String(2)),
        sa.Column("mail_zip", sa.String(5)),
        sa.Column("mail_county", sa.Text),
        sa.Column("raw", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("source_file_id", Id, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("captured_at", Timestamp, nullable=False),
        sa.Column("first_seen_at", Timestamp, nullable=False),
        sa.Column("last_seen_at", Timestamp, nullable=False),
    )

    op.create_table(
        "file_properties",
        sa.Column(
            "file_id",
            Id,
            sa.ForeignKey("batch_file_status.file_id", name="fk_file_properties_file_id_batch_file_status"),
            primary_key=True,
        ),
        sa.Column("property_id", sa.Text, primary_key=True),
    )

    op.create_table(
        "quarantined_records",
        sa.Column("quarantine_id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "file_id",
            Id,
            sa.ForeignKey("batch_file_status.file_id", name="fk_quarantined_records_file_id_batch_file_status"),
            nullable=False,
        ),
        sa.Column("record_index", sa.Integer, nullable=False),
        sa.Column("property_id", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("quarantined_at", Timestamp, nullable=False),
    )
    op.create_index("ix_quarantined_records_file_id", "quarantined_records", ["file_id"])


def downgrade() -> None:
    op.drop_table("quarantined_records")
    op.drop_table("file_properties")
    op.drop_table("properties")
    op.drop_table("file_status_events")
    op.drop_table("batch_file_status")
