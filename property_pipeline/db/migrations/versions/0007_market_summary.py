"""`property_market_summary`: per month, state and property type, the statistics of the market summary asset.

Written only by the `property_market_summary` asset (a month's rows are replaced in one transaction);
nothing else reads or writes it, so adding or dropping it touches no other table.

Revision ID: 0007_market_summary
Revises: 0006_one_original_per_content
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_market_summary"
down_revision = "0006_one_original_per_content"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "property_market_summary",
        sa.Column("summary_id", Id, primary_key=True, autoincrement=True),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("state", sa.String(2)),
        sa.Column("property_type", sa.Text),
        sa.Column("property_count", sa.Integer, nullable=False),
        sa.Column("valued_count", sa.Integer, nullable=False),
        sa.Column("value_p25", sa.Float),
        sa.Column("value_median", sa.Float),
        sa.Column("value_p75", sa.Float),
        sa.Column("equity_median", sa.Float),
        sa.Column("absentee_owner_share", sa.Float),
        sa.Column("owner_occupied_share", sa.Float),
        sa.Column("value_median_change", sa.Float),
        sa.Column("equity_median_change", sa.Float),
        sa.Column("computed_at", Timestamp, nullable=False),
    )
    op.create_index(
        "ix_property_market_summary_month_state_property_type",
        "property_market_summary",
        ["month", "state", "property_type"],
    )


def downgrade() -> None:
    op.drop_index("ix_property_market_summary_month_state_property_type", table_name="property_market_summary")
    op.drop_table("property_market_summary")
