"""Replay: the DISCARDED state, and when a file last started waiting.

DISCARDED is a terminal state an operator gives a FAILED file that can never load (a truncated page
the API will not serve again), with the reason; `retry` takes it back. The status CHECK constraint
admits it. SQLite cannot alter a constraint: the table is rebuilt with the new one (see db/engine.py,
the migration transaction, for the foreign keys that point at it), and its indexes are rebuilt too.

`pending_since`: when a finished file last went back to PENDING (a retry or a reprocess; empty for a
file waiting since its registration, and kept when a claim is given back). The backlog's age is
measured from it, else from `created_at`: a month reprocessed today is not a backlog that has waited
since its files were first registered.

Revision ID: 0008_replay
Revises: 0007_market_summary
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_replay"
down_revision = "0007_market_summary"
branch_labels = None
depends_on = None

STATES = ("PENDING", "PROCESSING", "COMPLETED", "FAILED")
NAME = "ck_batch_file_status_status"


def _existing_status_check() -> str:
    """The name the status CHECK constraint has in this database (the first migration doubled its prefix)."""
    for check in sa.inspect(op.get_bind()).get_check_constraints("batch_file_status"):
        if "status" in check["sqltext"] and "PENDING" in check["sqltext"]:
            return str(check["name"])
    raise RuntimeError("batch_file_status has no status CHECK constraint to replace")


def _status_check(states: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(state) for state in states)})"


def upgrade() -> None:
    existing = _existing_status_check()
    with op.batch_alter_table("batch_file_status") as table:  # SQLite: one rebuild; PostgreSQL: ALTERs
        table.drop_constraint(op.f(existing), type_="check")
        table.create_check_constraint(op.f(NAME), _status_check((*STATES, "DISCARDED")))
        table.add_column(sa.Column("pending_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.execute("UPDATE batch_file_status SET status = 'FAILED' WHERE status = 'DISCARDED'")
    existing = _existing_status_check()
    with op.batch_alter_table("batch_file_status") as table:
        table.drop_column("pending_since")
        table.drop_constraint(op.f(existing), type_="check")
        table.create_check_constraint(op.f(NAME), _status_check(STATES))
