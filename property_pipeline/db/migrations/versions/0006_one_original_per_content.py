"""One original per content: a unique index on the SHA-256 of originals, and files never deduplicated.

Registration used to read which checksums were registered, then insert: two registrars at once
(two `register` commands, or `register` beside the sensor) could each record the same content as
an original, and both loaded. The unique partial index makes "one original per content" the
database's rule: a registrar that loses the race gets a conflict and records its file as a
duplicate of the winner.

`content_unreadable` marks files that were empty or not a payload page when registered: identical
broken bytes (two files caught at zero bytes) say nothing about the data, so such a file is always
its own original (and fails on its own when processed). The index leaves those files out.

Existing databases: if the race already happened, the later originals of each content become
duplicates of the first (recorded in `file_status_events`); their link and quarantine rows are
removed, since the first original delivered the same records. The properties themselves are
untouched (the same bytes give the same values).

Revision ID: 0006_one_original_per_content
Revises: 0005_links_without_fk
Create Date: 2026-12-01
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006_one_original_per_content"
down_revision = "0005_links_without_fk"
branch_labels = None
depends_on = None

INDEX = "uq_batch_file_status_original_content"
ORIGINALS_ONLY = "duplicate_of_file_id IS NULL AND NOT content_unreadable"


def upgrade() -> None:
    # A plain ADD COLUMN (no table rebuild on SQLite: other tables' foreign keys point at this one).
    op.add_column(
        "batch_file_status",
        sa.Column(
            "content_unreadable",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="empty or not a page when registered: never recorded as a duplicate",
        ),
    )
    _record_earlier_double_originals_as_duplicates()
    op.create_index(
        INDEX,
        "batch_file_status",
        ["checksum_sha256"],
        unique=True,
        postgresql_where=sa.text(ORIGINALS_ONLY),
        sqlite_where=sa.text(ORIGINALS_ONLY),
    )


def _record_earlier_double_originals_as_duplicates() -> None:
    bind = op.get_bind()
    doubles = bind.execute(
        sa.text(
            "SELECT later.file_id AS file_id, later.status AS status, "
            "(SELECT MIN(first.file_id) FROM batch_file_status first "
            " WHERE first.checksum_sha256 = later.checksum_sha256 AND first.duplicate_of_file_id IS NULL) AS original "
            "FROM batch_file_status later WHERE later.duplicate_of_file_id IS NULL AND later.file_id > ("
            " SELECT MIN(first.file_id) FROM batch_file_status first "
            " WHERE first.checksum_sha256 = later.checksum_sha256 AND first.duplicate_of_file_id IS NULL)"
        )
    ).all()
    now = datetime.now(UTC)
    for file_id, from_status, original in doubles:
        parameters = {"file_id": file_id, "original": original}
        bind.execute(sa.text("DELETE FROM file_properties WHERE file_id = :file_id"), parameters)
        bind.execute(sa.text("DELETE FROM quarantined_records WHERE file_id = :file_id"), parameters)
        bind.execute(
            sa.text(
                "UPDATE batch_file_status SET duplicate_of_file_id = :original, status = 'COMPLETED', "
                "success_count = 0, error_count = 0, error_details = NULL, locked_by = NULL, locked_until = NULL "
                "WHERE file_id = :file_id"
            ),
            parameters,
        )
        bind.execute(
            sa.text(
                "INSERT INTO file_status_events (file_id, at, from_status, to_status, actor, detail) "
                "VALUES (:file_id, :at, :from_status, 'COMPLETED', 'migration 0006', :detail)"
            ),
            {
                "file_id": file_id,
                "at": now if bind.dialect.name == "postgresql" else now.replace(tzinfo=None).isoformat(sep=" "),
                "from_status": from_status,
                "detail": f"same SHA-256 as file {original}, registered twice by a race: now its duplicate",
            },
        )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="batch_file_status")
    op.drop_column("batch_file_status", "content_unreadable")  # SQLite 3.35+ drops a column in place
