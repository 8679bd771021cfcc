"""SQLite keeps `file_properties` as one B-tree on its primary key (WITHOUT ROWID); PostgreSQL is unchanged.

A SQLite table with a composite primary key is two B-trees: the rows by a hidden rowid, and an index
on (file_id, property_id). Every link row was written twice. A WITHOUT ROWID table is the index
itself, which is what a table of two short keys wants (SQLite's own advice: rows well under a
twentieth of a page). The rows are copied as they are.

Revision ID: 0010_links_without_rowid
Revises: 0009_registry_at_scale
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010_links_without_rowid"
down_revision = "0009_registry_at_scale"
branch_labels = None
depends_on = None


COLUMNS = "file_id INTEGER NOT NULL, property_id TEXT NOT NULL"
KEY = "CONSTRAINT pk_file_properties PRIMARY KEY (file_id, property_id)"
CREATE = {
    False: f"CREATE TABLE file_properties_new ({COLUMNS}, {KEY}) WITHOUT ROWID",
    True: f"CREATE TABLE file_properties_new ({COLUMNS}, {KEY})",
}
COPY_ROWS = "INSERT INTO file_properties_new SELECT file_id, property_id FROM file_properties"
DROP_OLD = "DROP TABLE file_properties"
RENAME_NEW = "ALTER TABLE file_properties_new RENAME TO file_properties"


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(CREATE[with_rowid])
    op.execute(COPY_ROWS)
    op.execute(DROP_OLD)
    op.execute(RENAME_NEW)


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
