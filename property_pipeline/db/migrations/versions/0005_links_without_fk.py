"""`file_properties` without its foreign key to `batch_file_status`: a bulk load checks no key per link row.

The database checked the key for every link row (400 per file), about a tenth of a file's load on
PostgreSQL. Link rows are written only by the loader, in the file's own transaction, after it has
locked that file's status row; status rows are never deleted (retention records `deleted_at`), so
a link row cannot point at a missing file. The row-count check (success_count = link rows) stays
the check on them. The downgrade puts the key back (checking the existing rows).

Revision ID: 0005_links_without_fk
Revises: 0004_raw_json_lz4
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005_links_without_fk"
down_revision = "0004_raw_json_lz4"
branch_labels = None
depends_on = None

FOREIGN_KEY = "fk_file_properties_file_id_batch_file_status"


def upgrade() -> None:
    with op.batch_alter_table("file_properties") as table:  # SQLite rebuilds the table; PostgreSQL alters it
        table.drop_constraint(FOREIGN_KEY, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("file_properties") as table:
        table.create_foreign_key(FOREIGN_KEY, "batch_file_status", ["file_id"], ["file_id"])
