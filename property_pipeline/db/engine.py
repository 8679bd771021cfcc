"""Connecting to the database and bringing its schema to the newest migration.

Alembic is imported only to migrate: a command on a database already at `HEAD_REVISION` reads the
stamped revision with one query and goes on (a test keeps `HEAD_REVISION` equal to Alembic's head).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text

from property_pipeline.errors import ConfigurationError, NothingThere

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration in MIGRATIONS_DIR/versions. A database stamped with it is current: no Alembic needed.
HEAD_REVISION = "0011_content_and_sightings"
VERSION_TABLE = "alembic_version"
PG_MIGRATION_LOCK = 7_220_001  # advisory lock key: one migrator at a time
# Execution option for long reads on SQLite (exports, DataFrames): begin DEFERRED instead of IMMEDIATE.
# In WAL mode such a transaction reads one snapshot without holding the write lock processing needs.
SQLITE_DEFERRED = "property_pipeline_sqlite_deferred"


class SchemaOutOfDate(ConfigurationError):
    """The database has tables from an older version of the pipeline."""


def normalise_url(url: str) -> str:
    """Plain `postgresql://` URLs go through psycopg 3, the driver the loader is written for."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, *, create_folder: bool = True) -> Engine:
    """An Engine with the settings the pipeline relies on (SQLite: WAL, busy timeout, BEGIN IMMEDIATE)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        parsed = make_url(url)
        if create_folder and parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigurationError(
                    f"PROPERTY_PIPELINE_DB_URL: the folder of the SQLite file {parsed.database} cannot be created "
                    f"({error.strerror}); point the variable at a writable place"
                ) from None
        engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint the WAL every ~80 MB instead of every 4 MB: a bulk load (a file is ~1 MB)
            # then pays one fsync'd checkpoint per ~80 files, not per 4.
            cursor.execute("PRAGMA wal_autocheckpoint=20000")
            cursor.execute("PRAGMA busy_timeout=60000")
            # A file's transaction writes a few MB of pages: a 64 MB page cache (the default is 2 MB) holds them
            # until the commit writes each once, instead of spilling some to the WAL and writing them again.
            cursor.execute("PRAGMA cache_size=-65536")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        # Take the write lock when the transaction starts, so two processors never both read
        # a PENDING row and then race to upgrade their read lock. Long reads that ask for it do not.
        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(connection: Connection) -> None:
            deferred = connection.get_execution_options().get(SQLITE_DEFERRED)
            connection.exec_driver_sql("BEGIN DEFERRED" if deferred else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The head of the migrations folder, as Alembic reads it (it imports every migration)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database's `alembic_version` (None for a database without pipeline tables),
    read as Alembic reads it, without Alembic."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        stamped = list(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    if len(stamped) > 1:  # the migrations are one line of revisions: two heads means someone else's stamps
        raise SchemaOutOfDate(f"the database has more than one schema revision stamped ({', '.join(stamped)})")
    return stamped[0] if stamped else None


def is_current(revision: str | None) -> bool:
    """True when `revision` is the newest schema: the constant first, Alembic's own reading when they differ."""
    return revision == HEAD_REVISION or (revision is not None and revision == head_revision())


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Only one process migrates at a time (several processors may start on a fresh database)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_MIGRATION_LOCK})
                connection.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(f"{engine.url.database}.migrate.lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for the whole migration run.

    SQLite rebuilds a table to change a constraint, and a table that other tables' foreign keys point
    at cannot be dropped and recreated while those keys are enforced: SQLite's own procedure is to
    switch them off for the transaction and to run `PRAGMA foreign_key_check` before committing.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        # On the driver's connection: outside any transaction, where the pragma takes effect.
        driver = connection.connection.driver_connection if sqlite else None
        if driver is not None:
            driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"a migration left rows that break a foreign key: {broken[:5]}")
        finally:
            if driver is not None:
                driver.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to `revision`; returns (revision before, revision after)."""
    with _migration_lock(engine):
        before = current_revision(engine)
        from alembic import command

        with _migration_transaction(engine) as connection:
            command.upgrade(_alembic_config(connection), revision)
        after = current_revision(engine)
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "empty", after)
    return before, after or ""


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Undo migrations down to `revision` (rolling back a release); returns (revision before, revision after)."""
    with _migration_lock(engine):
        before = current_revision(engine)
        from alembic import command

        with _migration_transaction(engine) as connection:
            command.downgrade(_alembic_config(connection), revision)
        after = current_revision(engine)
    log.info("database schema downgraded from %s to %s", before, after or "empty")
    return before, after


def open_existing_database(url: str) -> Engine:
    """The database of a read-only command: never created, never migrated.

    NothingThere when no pipeline database is at `url` (a typo in PROPERTY_PIPELINE_DB_URL must not
    leave an empty database behind); SchemaOutOfDate when it needs `db upgrade`.
    """
    parsed = make_url(normalise_url(url))
    where = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise NothingThere(
                f"no pipeline database at {parsed.database} (PROPERTY_PIPELINE_DB_URL): nothing was captured or "
                "registered there. Check the variable"
            )
    engine = create_db_engine(url, create_folder=False)
    try:
        revision = current_revision(engine)
        if revision is None:
            raise NothingThere(
                f"the database at {where} has no pipeline tables (PROPERTY_PIPELINE_DB_URL): nothing is there yet. "
                "Check the variable, or create them with `property-pipeline db upgrade`"
            )
        if not is_current(revision):
            raise SchemaOutOfDate(
                f"the database schema is at revision {revision}, this version needs {head_revision()}: "
                "run `property-pipeline db upgrade` first"
            )
    except BaseException:
        engine.dispose()
        raise
    return engine


def ensure_schema(engine: Engine) -> None:
    """Create the schema on an empty database; refuse to run on an older schema without `db upgrade`."""
    revision = current_revision(engine)
    if is_current(revision):
        return
    if revision is None:
        existing = set(inspect(engine).get_table_names()) - {"alembic_version"}
        if existing & {"batch_file_status", "properties"}:
            raise SchemaOutOfDate(
                "the database has pipeline tables but no migration record; "
                "it was not created by property-pipeline. Point PROPERTY_PIPELINE_DB_URL elsewhere."
            )
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {revision}, this version needs {head_revision()}: "
        "run `property-pipeline db upgrade` first"
    )
