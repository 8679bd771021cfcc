"""Capture runs: where each campaign capture is, so an interrupted one can resume from the next page.

Revision ID: 0002_capture_runs
Revises: 0001_initial
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_capture_runs"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "capture_runs",
        sa.Column("run_id", Id, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("criteria", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp),
        sa.Column("next_result_index", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result_count", sa.Integer),
        sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("records", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.CheckConstraint("state IN ('RUNNING', 'COMPLETED', 'INTERRUPTED')", name="ck_capture_runs_state"),
    )
    op.create_index("ix_capture_runs_campaign_id_state", "capture_runs", ["campaign_id", "state"])


def downgrade() -> None:
    op.drop_table("capture_runs")
