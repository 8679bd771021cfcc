"""Migrations 0004 (raw record as lz4-compressed `json` on PostgreSQL) and 0005 (link rows without a
foreign key) carry an existing database along.

A database at 0003 with properties loaded as jsonb and link rows is upgraded: every row, raw record
and link stays, rewritten rows are lz4-compressed, the pipeline then loads and upserts into it;
downgrading gives jsonb and the foreign key back with the data, and upgrading again works.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import Engine, create_engine, inspect, select, text

from property_pipeline.db.engine import create_db_engine, current_revision, downgrade, head_revision, upgrade
from property_pipeline.db.queries import row_count_mismatches
from property_pipeline.db.schema import properties
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.conftest import PG_ADMIN_URL
from property_pipeline_tests.factories import BASE_TIME, make_record, write_page

BEFORE = "0003_alerts"
LINK_KEY = "fk_file_properties_file_id_batch_file_status"
LONG_TEXT = "LOT 12 BLK 4 " * 300  # a raw record big enough to be compressed


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """A database of its own (this test migrates down and up), on the server the session's tests use."""
    name = f"pp_test_migration_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_db_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _raw_column(engine: Engine) -> tuple[str, str]:
    """Type and compression of `raw` in the table that holds it: `properties` until migration 0011, then
    `property_records` (`properties` is a view over it)."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod), attcompression FROM pg_attribute "
                "WHERE attrelid = COALESCE(to_regclass('property_records'), 'properties'::regclass) "
                "AND attname = 'raw'"
            )
        ).one()
    return row[0], row[1]


def _server_has_lz4(engine: Engine) -> bool:
    with engine.connect() as conn:
        values = conn.execute(
            text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
    return values is not None and "lz4" in values


def _load_as_before(engine: Engine, records: list[dict]) -> None:  # type: ignore[type-arg]
    """Rows as the loader of revision 0003 wrote them: raw as jsonb, and a link row each to their file."""
    with engine.begin() as conn:
        file_id = conn.execute(
            text(
                "INSERT INTO batch_file_status (file_path, campaign_id, batch_number, month, status, "
                "checksum_sha256, file_size_bytes, captured_at, created_at, success_count) VALUES ("
                "'2026-11/old_batch1_20261102T080000Z.json', 'old', 1, '2026-11', 'COMPLETED', 'x', 1, :at, :at, :n) "
                "RETURNING file_id"
            ),
            {"at": BASE_TIME, "n": len(records)},
        ).scalar_one()
        for record in records:
            conn.execute(
                text(
                    "INSERT INTO properties (property_id, city, raw, source_file_id, campaign_id, captured_at, "
                    "first_seen_at, last_seen_at) VALUES (:id, 'Austin', CAST(:raw AS jsonb), :file, 'old', :at, "
                    ":at, :at)"
                ),
                {"id": str(record["id"]), "raw": orjson.dumps(record).decode(), "file": file_id, "at": BASE_TIME},
            )
            conn.execute(
                text("INSERT INTO file_properties (file_id, property_id) VALUES (:file, :id)"),
                {"file": file_id, "id": str(record["id"])},
            )


def _link_foreign_keys(engine: Engine) -> list[str]:
    return [key["name"] for key in inspect(engine).get_foreign_keys("file_properties")]


def test_migrations_keep_existing_properties_and_links_and_the_pipeline_loads_into_the_result(
    pg_engine: Engine, root: PayloadRoot
) -> None:
    upgrade(pg_engine, BEFORE)
    assert _raw_column(pg_engine)[0] == "jsonb"
    assert _link_foreign_keys(pg_engine) == [LINK_KEY]
    old = [make_record(f"old-{i}", legalDescription=LONG_TEXT) for i in range(3)]
    _load_as_before(pg_engine, old)

    upgrade(pg_engine)
    assert current_revision(pg_engine) == head_revision()
    assert _link_foreign_keys(pg_engine) == []
    raw_type, compression = _raw_column(pg_engine)
    assert raw_type == "json"
    lz4 = _server_has_lz4(pg_engine)
    assert compression == ("l" if lz4 else "")
    with pg_engine.connect() as conn:
        stored = {row.property_id: row.raw for row in conn.execute(select(properties.c.property_id, properties.c.raw))}
        methods = set(conn.execute(text("SELECT pg_column_compression(raw) FROM properties")).scalars())
        cities = set(conn.execute(text("SELECT raw -> 'address' ->> 'city' FROM properties")).scalars())
    assert stored == {f"old-{i}": record for i, record in enumerate(old)}
    assert cities == {"Austin"}  # the json operators work on the migrated column
    if lz4:
        assert methods == {"lz4"}  # the rewrite compressed the existing rows with lz4 too

    # The pipeline loads into the migrated table: a newer capture of old-1 replaces it, new ones are added.
    newer = make_record("old-1", legalDescription=LONG_TEXT, address={"city": "Houston", "state": "TX", "zip": "77002"})
    write_page(root, [newer, make_record("new-1")], batch=1, captured_at=BASE_TIME + timedelta(days=1))
    register_unregistered(pg_engine, root, "test")
    assert PayloadProcessor(pg_engine, root).run().completed == 1
    with pg_engine.connect() as conn:
        rows = {row.property_id: row for row in conn.execute(select(properties))}
        new_methods = set(
            conn.execute(
                text("SELECT pg_column_compression(raw) FROM properties WHERE property_id = 'old-1'")
            ).scalars()
        )
    assert set(rows) == {"old-0", "old-1", "old-2", "new-1"}
    assert row_count_mismatches(pg_engine) == (5, 5, [])  # the old file's 3 links kept, the new file's 2
    assert rows["old-1"].city == "Houston" and rows["old-1"].raw["address"]["city"] == "Houston"
    assert rows["old-0"].raw == old[0]
    if lz4:
        assert new_methods == {"lz4"}

    assert downgrade(pg_engine, BEFORE) == (head_revision(), BEFORE)  # back to jsonb, nothing lost
    assert _raw_column(pg_engine)[0] == "jsonb"
    assert _link_foreign_keys(pg_engine) == [LINK_KEY]
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM properties")).scalar() == 4
        assert conn.execute(text("SELECT raw ->> 'id' FROM properties WHERE property_id = 'new-1'")).scalar() == "new-1"
    upgrade(pg_engine)
    assert _raw_column(pg_engine)[0] == "json"


def test_migrations_keep_properties_and_links_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_db_engine(f"sqlite:///{tmp_path / 'pipeline.db'}")
    try:
        upgrade(engine, BEFORE)
        record = make_record("a")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO batch_file_status (file_id, file_path, campaign_id, batch_number, month, status, "
                    "checksum_sha256, file_size_bytes, captured_at, created_at, success_count) VALUES (1, "
                    "'2026-11/c_batch1_20261102T080000Z.json', 'c', 1, '2026-11', 'COMPLETED', 'x', 1, "
                    "'2026-11-02 08:00:00', '2026-11-02 08:00:00', 1)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO properties (property_id, raw, source_file_id, campaign_id, captured_at, "
                    "first_seen_at, last_seen_at) VALUES ('a', :raw, 1, 'c', '2026-11-02 08:00:00', "
                    "'2026-11-02 08:00:00', '2026-11-02 08:00:00')"
                ),
                {"raw": orjson.dumps(record).decode()},
            )
            conn.execute(text("INSERT INTO file_properties (file_id, property_id) VALUES (1, 'a')"))
        upgrade(engine)  # 0005 rebuilds file_properties on SQLite
        assert _link_foreign_keys(engine) == []
        with engine.connect() as conn:
            assert conn.execute(select(properties.c.raw)).scalar() == record
        assert row_count_mismatches(engine) == (1, 1, [])
        downgrade(engine, BEFORE)
        assert _link_foreign_keys(engine) == [LINK_KEY]
        assert row_count_mismatches(engine) == (1, 1, [])
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migration_0006_records_contents_registered_twice_by_a_race_as_duplicates(
    backend: str, request: pytest.FixtureRequest, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Two originals of the same bytes (the registration race before 0006) become an original and its duplicate."""
    if backend == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'pipeline.db'}")
    else:
        engine = request.getfixturevalue("pg_engine")
    try:
        upgrade(engine, "0005_links_without_fk")
        with engine.begin() as conn:
            for file_id, month in ((1, "2026-10"), (2, "2026-11"), (3, "2026-11")):
                conn.execute(
                    text(
                        "INSERT INTO batch_file_status (file_id, file_path, campaign_id, batch_number, month, status, "
                        "checksum_sha256, file_size_bytes, captured_at, created_at, success_count, error_count) "
                        "VALUES (:id, :path, 'c', :id, :month, 'COMPLETED', :sum, 10, :at, :at, 1, 1)"
                    ),
                    {
                        "id": file_id,
                        "path": f"{month}/c_batch{file_id}_{month.replace('-', '')}02T080000Z.json",
                        "month": month,
                        "sum": "same" if file_id < 3 else "other",
                        "at": BASE_TIME,
                    },
                )
                conn.execute(text("INSERT INTO file_properties VALUES (:id, 'p-1')"), {"id": file_id})
                conn.execute(
                    text(
                        "INSERT INTO quarantined_records (file_id, record_index, reason, raw, quarantined_at) "
                        "VALUES (:id, 1, 'bad', '{}', :at)"
                    ),
                    {"id": file_id, "at": BASE_TIME},
                )
        upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT file_id, status, duplicate_of_file_id, success_count FROM batch_file_status ORDER BY 1")
            ).all()
            links = conn.execute(text("SELECT file_id FROM file_properties ORDER BY 1")).scalars().all()
            held = conn.execute(text("SELECT file_id FROM quarantined_records ORDER BY 1")).scalars().all()
            events = conn.execute(text("SELECT file_id, actor FROM file_status_events")).all()
        assert [tuple(row) for row in rows] == [
            (1, "COMPLETED", None, 1),
            (2, "COMPLETED", 1, 0),
            (3, "COMPLETED", None, 1),
        ]
        assert links == [1, 3] and held == [1, 3]
        assert [tuple(event) for event in events] == [(2, "migration 0006")]
        assert row_count_mismatches(engine) == (2, 2, [])
        downgrade(engine, "0005_links_without_fk")
        upgrade(engine)
    finally:
        engine.dispose()
