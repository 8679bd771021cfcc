"""`properties.raw` on PostgreSQL: `json` (the record's text, kept as it is) compressed with lz4.

Loading `jsonb` means parsing every record into jsonb's binary form, and the default pglz
compression is slow: together they were most of the database's work per row in a bulk load. `json`
keeps the record's text as it was loaded (the json operators `->`, `->>` and `#>` work on it, and
`raw::jsonb` gives jsonb where one is wanted); lz4 compresses it several times faster than pglz.

The type change rewrites the table under an exclusive lock (plan a quiet moment on a big database);
the rewritten rows are compressed with lz4 too. Servers without lz4 (built without it, or before
PostgreSQL 14) keep their default compression. SQLite stores JSON as text already: nothing to do.

Revision ID: 0004_raw_json_lz4
Revises: 0003_alerts
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_raw_json_lz4"
down_revision = "0003_alerts"
branch_labels = None
depends_on = None


def _server_has_lz4() -> bool:
    # No such setting before PostgreSQL 14 (no per-column compression); no 'lz4' value without --with-lz4.
    values = (
        op.get_bind()
        .execute(sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"))
        .scalar_one_or_none()
    )
    return values is not None and "lz4" in values


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    lz4 = _server_has_lz4()
    if lz4:
        op.execute("SET LOCAL default_toast_compression = lz4")  # the rewrite below compresses with it
    op.execute("ALTER TABLE properties ALTER COLUMN raw TYPE json USING raw::json")
    if lz4:
        op.execute("ALTER TABLE properties ALTER COLUMN raw SET COMPRESSION lz4")
        op.execute("SET LOCAL default_toast_compression TO DEFAULT")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Back to jsonb with the server's default compression (a type change resets the column's method).
    op.execute("ALTER TABLE properties ALTER COLUMN raw TYPE jsonb USING raw::jsonb")
