"""Alerts: one row per alert ever raised (stuck file, failed file, old backlog), with its delivery.

Revision ID: 0003_alerts
Revises: 0002_capture_runs
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_alerts"
down_revision = "0002_capture_runs"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", Id, primary_key=True, autoincrement=True),
        sa.Column("alert_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("file_id", Id),
        sa.Column("month", sa.String(7)),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("raised_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp),
        sa.Column("delivery_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("alert_key", name="uq_alerts_alert_key"),
    )


def downgrade() -> None:
    op.drop_table("alerts")
