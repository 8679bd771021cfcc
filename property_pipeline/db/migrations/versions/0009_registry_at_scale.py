"""A registry of millions of files: `file_totals` kept by the database, and indexes for the claim and the report.

`file_totals` holds, per month and campaign, what `status`, the status report and the Dagster
metadata count: files by state, duplicates, records loaded and quarantined, files archived and
deleted by retention, records and bytes still on disk. Counting them from `batch_file_status` reads
every registered file (about a second at a million files); the totals are one row per month and
campaign. Triggers on `batch_file_status` keep them, in the transaction of the change, whoever
writes the row: the status transitions of `db/status.py`, a rebuild's copies, a migration. Each
changed row adds what it counts now and takes away what it counted before, so the totals always
equal a count of the table. PostgreSQL: one statement-level trigger per kind of change, which
folds the whole statement's rows into one upsert per month and campaign (a statement whose rows
count the same, such as a lease extension, touches no total), taken in month and campaign order;
TRUNCATE empties the totals. SQLite: row triggers (SQLite has no other kind).

SQLite rebuilds a table to change one of its constraints (`batch_alter_table`, as 0008 does), and
the rebuild drops its triggers: a later migration that rebuilds `batch_file_status` must call
`create_triggers` again.

Indexes: the PENDING files in id order (the next claim is the first entry, however many files are
COMPLETED before it), and the COMPLETED originals by processing time (the report's slowest files).

Revision ID: 0009_registry_at_scale
Revises: 0008_replay
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_registry_at_scale"
down_revision = "0008_replay"
branch_labels = None
depends_on = None

TABLE = "file_totals"
PENDING_INDEX = "ix_batch_file_status_pending_file_id"
SLOWEST_INDEX = "ix_batch_file_status_completed_processing_time"
COMPLETED_ORIGINALS = "status = 'COMPLETED' AND duplicate_of_file_id IS NULL"

# What one row of batch_file_status adds to its month and campaign, per column of file_totals ({r}: the row).
COUNTS = {
    "files": "1",
    "pending": "CASE WHEN {r}.status = 'PENDING' THEN 1 ELSE 0 END",
    "processing": "CASE WHEN {r}.status = 'PROCESSING' THEN 1 ELSE 0 END",
    "completed": "CASE WHEN {r}.status = 'COMPLETED' THEN 1 ELSE 0 END",
    "failed": "CASE WHEN {r}.status = 'FAILED' THEN 1 ELSE 0 END",
    "discarded": "CASE WHEN {r}.status = 'DISCARDED' THEN 1 ELSE 0 END",
    "discarded_deleted": "CASE WHEN {r}.status = 'DISCARDED' AND {r}.deleted_at IS NOT NULL THEN 1 ELSE 0 END",
    "duplicates": "CASE WHEN {r}.duplicate_of_file_id IS NOT NULL THEN 1 ELSE 0 END",
    "records_loaded": "CASE WHEN {r}.status = 'COMPLETED' THEN coalesce({r}.success_count, 0) ELSE 0 END",
    "records_quarantined": "CASE WHEN {r}.status = 'COMPLETED' THEN coalesce({r}.error_count, 0) ELSE 0 END",
    "archived": "CASE WHEN {r}.archived_at IS NOT NULL THEN 1 ELSE 0 END",
    "deleted": "CASE WHEN {r}.deleted_at IS NOT NULL THEN 1 ELSE 0 END",
    "records_on_disk": "CASE WHEN {r}.deleted_at IS NULL THEN coalesce({r}.properties_count, 0) ELSE 0 END",
    "bytes_on_disk": "CASE WHEN {r}.deleted_at IS NULL THEN {r}.file_size_bytes ELSE 0 END",
    "original_rows_loaded": (
        "CASE WHEN {r}.status = 'COMPLETED' AND {r}.duplicate_of_file_id IS NULL "
        "THEN coalesce({r}.success_count, 0) ELSE 0 END"
    ),
    "original_processing_ms": (
        "CASE WHEN {r}.status = 'COMPLETED' AND {r}.duplicate_of_file_id IS NULL "
        "THEN coalesce({r}.processing_time_ms, 0) ELSE 0 END"
    ),
}
# The columns those counts read: an UPDATE of none of them (a lease, a lock) cannot change a total.
COUNTED_COLUMNS = (
    "month",
    "campaign_id",
    "status",
    "deleted_at",
    "archived_at",
    "duplicate_of_file_id",
    "success_count",
    "error_count",
    "properties_count",
    "file_size_bytes",
    "processing_time_ms",
)
KINDS = ("insert", "update", "delete")


def _fill_statement() -> str:
    """The totals of the rows already there: one count of the table, as the triggers keep it from then on."""
    columns = ", ".join(COUNTS)
    sums = ", ".join(f"sum({expression.format(r='f')})" for expression in COUNTS.values())
    return (
        f"INSERT INTO {TABLE} (month, campaign_id, {columns}) "
        f"SELECT f.month, f.campaign_id, {sums} FROM batch_file_status AS f GROUP BY f.month, f.campaign_id"
    )


def _postgresql_upsert(parts: list[tuple[str, int]]) -> str:
    """One upsert of the signed sums of the transition tables `parts` ((table, +1 or -1)), skipping groups whose
    sums are all zero, in month and campaign order (concurrent statements take the total rows in one order)."""
    selects = " UNION ALL ".join(
        "SELECT r.month, r.campaign_id, "
        + ", ".join(f"{sign} * ({expression.format(r='r')}) AS {name}" for name, expression in COUNTS.items())
        + f" FROM {table} AS r"
        for table, sign in parts
    )
    columns = ", ".join(COUNTS)
    sums = ", ".join(f"sum(d.{name})" for name in COUNTS)
    changed = " OR ".join(f"sum(d.{name}) <> 0" for name in COUNTS)
    added = ", ".join(f"{name} = t.{name} + excluded.{name}" for name in COUNTS)
    return (
        f"INSERT INTO {TABLE} AS t (month, campaign_id, {columns}) "
        f"SELECT d.month, d.campaign_id, {sums} FROM ({selects}) AS d "
        f"GROUP BY d.month, d.campaign_id HAVING {changed} ORDER BY d.month, d.campaign_id "
        f"ON CONFLICT (month, campaign_id) DO UPDATE SET {added}"
    )


def _postgresql_triggers() -> tuple[str, ...]:
    transitions = {
        "insert": ("REFERENCING NEW TABLE AS new_rows", [("new_rows", 1)]),
        "update": ("REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows", [("new_rows", 1), ("old_rows", -1)]),
        "delete": ("REFERENCING OLD TABLE AS old_rows", [("old_rows", -1)]),
    }
    statements = []
    for kind, (referencing, parts) in transitions.items():
        statements += [
            f"CREATE FUNCTION {TABLE}_after_{kind}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n  {_postgresql_upsert(parts)};\n  RETURN NULL;\nEND\n$$",
            f"CREATE TRIGGER {TABLE}_after_{kind} AFTER {kind.upper()} ON batch_file_status {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_after_{kind}()",
        ]
    return (
        *statements,
        f"CREATE FUNCTION {TABLE}_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n  DELETE FROM {TABLE};\n  RETURN NULL;\nEND\n$$",
        f"CREATE TRIGGER {TABLE}_after_truncate AFTER TRUNCATE ON batch_file_status "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_after_truncate()",
    )


def _sqlite_change(row: str, sign: str) -> str:
    """The UPDATE that adds (`+`) or takes away (`-`) what `row` (NEW or OLD) counts."""
    changes = ", ".join(f"{name} = {name} {sign} ({expression.format(r=row)})" for name, expression in COUNTS.items())
    return f"UPDATE {TABLE} SET {changes} WHERE month = {row}.month AND campaign_id = {row}.campaign_id;"


def _sqlite_group(row: str) -> str:
    return f"INSERT OR IGNORE INTO {TABLE} (month, campaign_id) VALUES ({row}.month, {row}.campaign_id);"


def _sqlite_triggers() -> tuple[str, ...]:
    bodies = {
        "insert": ("INSERT", [_sqlite_group("NEW"), _sqlite_change("NEW", "+")]),
        "update": (
            f"UPDATE OF {', '.join(COUNTED_COLUMNS)}",
            [_sqlite_change("OLD", "-"), _sqlite_group("NEW"), _sqlite_change("NEW", "+")],
        ),
        "delete": ("DELETE", [_sqlite_change("OLD", "-")]),
    }
    return tuple(
        f"CREATE TRIGGER {TABLE}_after_{kind} AFTER {event} ON batch_file_status BEGIN\n  "
        + "\n  ".join(statements)
        + "\nEND"
        for kind, (event, statements) in bodies.items()
    )


# Every statement is built here, once, from the constants above (nothing of a caller goes into SQL text).
FILL_TOTALS = _fill_statement()
CREATE_TRIGGERS = {"postgresql": _postgresql_triggers(), "sqlite": _sqlite_triggers()}
DROP_TRIGGERS = {
    "postgresql": (
        *(f"DROP TRIGGER IF EXISTS {TABLE}_after_{kind} ON batch_file_status" for kind in (*KINDS, "truncate")),
        *(f"DROP FUNCTION IF EXISTS {TABLE}_after_{kind}()" for kind in (*KINDS, "truncate")),
    ),
    "sqlite": tuple(f"DROP TRIGGER IF EXISTS {TABLE}_after_{kind}" for kind in KINDS),
}


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in COUNTS),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # no file changes between the count below and the triggers
        op.execute("LOCK TABLE batch_file_status IN SHARE ROW EXCLUSIVE MODE")
    op.execute(FILL_TOTALS)
    create_triggers(bind.dialect.name)
    op.create_index(
        PENDING_INDEX,
        "batch_file_status",
        ["file_id"],
        postgresql_where=sa.text("status = 'PENDING'"),
        sqlite_where=sa.text("status = 'PENDING'"),
    )
    op.create_index(
        SLOWEST_INDEX,
        "batch_file_status",
        [sa.text("processing_time_ms DESC"), "file_id"],
        postgresql_where=sa.text(COMPLETED_ORIGINALS),
        sqlite_where=sa.text(COMPLETED_ORIGINALS),
    )


def downgrade() -> None:
    op.drop_index(SLOWEST_INDEX, table_name="batch_file_status")
    op.drop_index(PENDING_INDEX, table_name="batch_file_status")
    drop_triggers(op.get_bind().dialect.name)
    op.drop_table(TABLE)


def _statements_of(statements: dict[str, tuple[str, ...]], dialect: str) -> tuple[str, ...]:
    if dialect not in statements:
        raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")
    return statements[dialect]


def create_triggers(dialect: str) -> None:
    """The triggers that keep `file_totals` equal to a count of `batch_file_status`."""
    for statement in _statements_of(CREATE_TRIGGERS, dialect):
        op.execute(statement)


def drop_triggers(dialect: str) -> None:
    for statement in _statements_of(DROP_TRIGGERS, dialect):
        op.execute(statement)
