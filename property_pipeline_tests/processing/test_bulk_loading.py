"""The bulk paths of processing keep every invariant: new properties are copied straight in, known ones are
upserted (newest wins), a property inserted concurrently sends the file to the upsert, a run stopped by
the database gives its file back, and the binary COPY's types are the table's types."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import OperationalError

from property_pipeline.db.queries import row_count_mismatches
from property_pipeline.db.schema import batch_file_status, file_properties, properties
from property_pipeline.processing import processor as processing_engine
from property_pipeline.processing.loader import (
    CONTENT_COLUMNS,
    PG_CONTENT_TYPES,
    _bytea_array,
    _text_array,
)
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import BASE_TIME, make_record, write_page


def _rows(engine: Engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        return {
            row.property_id: (row.source_file_id, row.city)
            for row in conn.execute(select(properties.c.property_id, properties.c.source_file_id, properties.c.city))
        }


def _statuses(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(batch_file_status.c.file_id, batch_file_status.c.status)).all())


def test_a_file_of_new_and_known_properties_inserts_the_new_and_keeps_the_newest_of_the_known(
    engine: Engine, root: PayloadRoot
) -> None:
    write_page(root, [make_record(f"p{i}") for i in range(4)], batch=1)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    # A later capture: two known properties changed, two new ones; one file, one transaction.
    later = [make_record(f"p{i}", address={"city": "Houston", "state": "TX", "zip": "77002"}) for i in (1, 3)]
    write_page(root, [*later, make_record("p9"), make_record("p8")], batch=2)
    # An older capture of p0 and p1 arrives last: it must not overwrite them.
    older = [make_record(f"p{i}", address={"city": "Dallas", "state": "TX", "zip": "75201"}) for i in (0, 1)]
    write_page(root, older, batch=3, captured_at=BASE_TIME - timedelta(days=1))
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.records_loaded) == (2, 6)
    rows = _rows(engine)
    assert rows == {
        "p0": (1, "Austin"),
        "p1": (2, "Houston"),
        "p2": (1, "Austin"),
        "p3": (2, "Houston"),
        "p8": (2, "Austin"),
        "p9": (2, "Austin"),
    }
    assert row_count_mismatches(engine) == (10, 10, [])


def test_a_property_inserted_by_another_processor_meanwhile_sends_the_file_to_the_upsert(
    engine: Engine, db_url: str, root: PayloadRoot
) -> None:
    """The file's new properties are copied straight in unless one appears meanwhile; then its COPY is undone."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: no other processor can insert during a transaction")
    write_page(root, [make_record("race-1"), make_record("race-2")], batch=1)
    register_unregistered(engine, root, "test")
    other = create_engine(engine.url).connect()
    transaction = other.begin()
    # Another processor's transaction inserted race-2, from an older capture, and has not committed yet.
    other.execute(
        text(
            "INSERT INTO property_records (property_id, raw, city) "
            "VALUES ('race-2', '{\"id\": \"race-2\"}', 'Elsewhere')"
        )
    )
    other.execute(
        text(
            "INSERT INTO property_sightings (property_id, source_file_id, campaign_id, last_seen_at, first_seen_at) "
            "VALUES ('race-2', 99, 'other', :at, :at)"
        ),
        {"at": BASE_TIME - timedelta(days=30)},
    )
    outcome: list[object] = []
    processor = threading.Thread(target=lambda: outcome.append(PayloadProcessor(engine, root).run()))
    processor.start()
    watcher = create_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        with watcher.connect() as conn:
            deadline = time.monotonic() + 30
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            while not conn.execute(waiting).scalar():
                assert time.monotonic() < deadline, "the processor never waited for the other transaction"
                time.sleep(0.05)
        transaction.commit()  # the COPY now fails on the primary key: the file goes to the upsert
    finally:
        if transaction.is_active:
            transaction.rollback()
        other.close()
        watcher.dispose()
        processor.join(timeout=60)
    assert outcome and outcome[0].completed == 1 and outcome[0].failed == 0  # type: ignore[attr-defined]
    assert _rows(engine) == {"race-1": (1, "Austin"), "race-2": (1, "Austin")}  # the newer capture won
    assert row_count_mismatches(engine) == (2, 2, [])


def test_a_run_stopped_by_the_database_gives_its_file_back_at_once(
    engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    for batch in (1, 2, 3):
        write_page(root, [make_record(f"r{batch}")], batch=batch)
    register_unregistered(engine, root, "test")

    def database_gone(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("bulk load", None, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(processing_engine, "load_records", database_gone)
    with pytest.raises(OperationalError):
        PayloadProcessor(engine, root).run()
    # File 1 was being loaded: back to PENDING at once, no lease to wait for; nothing else was claimed.
    assert _statuses(engine) == {1: "PENDING", 2: "PENDING", 3: "PENDING"}
    assert list(root.processing.iterdir()) == []
    monkeypatch.undo()
    assert PayloadProcessor(engine, root).run().completed == 3


def test_a_limited_run_claims_no_file_beyond_its_limit(engine: Engine, root: PayloadRoot) -> None:
    for batch in (1, 2, 3):
        write_page(root, [make_record(f"l{batch}")], batch=batch)
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run(limit=2)
    assert [outcome.file_id for outcome in report.outcomes] == [1, 2]
    assert _statuses(engine) == {1: "COMPLETED", 2: "COMPLETED", 3: "PENDING"}


def test_the_binary_copy_sends_each_column_as_its_type_in_the_migrated_schema(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("binary COPY is the PostgreSQL path")
    as_sent = {"text": "text", "int4": "integer", "int8": "bigint", "float8": "double precision"}
    as_sent |= {"bool": "boolean", "date": "date", "timestamptz": "timestamp with time zone", "bytea": "bytea"}
    with engine.connect() as conn:
        columns = dict(
            conn.execute(
                text(
                    "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                    "WHERE attrelid = 'property_records'::regclass AND attnum > 0 AND NOT attisdropped"
                )
            ).all()
        )
    assert set(CONTENT_COLUMNS) == set(columns), "every column is sent"
    for column, sent in zip(CONTENT_COLUMNS, PG_CONTENT_TYPES, strict=True):
        # json's binary form is its text: the record's bytes as received go as they are.
        expected = {"character varying": "text", "json": "bytea"}.get(columns[column], columns[column])
        assert as_sent[sent] == expected, f"{column}: sent as {sent}, the column is {columns[column]}"


def test_ids_with_quotes_backslashes_and_commas_survive_the_array_literal(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL text[] literal")
    ids = ["plain", 'quo"te', "back\\slash", "a,b", "{braces}", " spaced ", "NULL", "Ω-ünï", "x" * 256]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT CAST(:ids AS text[])"), {"ids": _text_array(ids)}).scalar() == ids


def test_hashes_survive_the_bytea_array_literal(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL bytea[] literal")
    hashes = [bytes(range(16)), b'\\"{},x' * 2, b"\xff" * 16]
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT CAST(:hashes AS bytea[])"), {"hashes": _bytea_array(hashes)}).scalar() == hashes
        )
        assert conn.execute(text("SELECT CAST(:hashes AS bytea[])"), {"hashes": _bytea_array([])}).scalar() == []


def test_link_rows_match_what_each_file_delivered(engine: Engine, root: PayloadRoot) -> None:
    write_page(root, [make_record("k1"), make_record("k2")], batch=1)
    write_page(root, [make_record("k2"), make_record("k3")], batch=2)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        links = sorted(conn.execute(select(file_properties.c.file_id, file_properties.c.property_id)).all())
    assert links == [(1, "k1"), (1, "k2"), (2, "k2"), (2, "k3")]


def test_a_file_expected_to_be_all_new_that_is_not_is_loaded_the_general_way(engine: Engine, root: PayloadRoot) -> None:
    """After a file of new properties a processor inserts the next one at once; when one of its properties exists
    after all, that insert is undone and the file is loaded as usual: newest wins, nothing twice."""
    write_page(root, [make_record("x1"), make_record("x2")], batch=1)
    write_page(
        root,
        [make_record("x2", address={"city": "Houston", "state": "TX", "zip": "77002"}), make_record("x3")],
        batch=2,
    )
    write_page(root, [make_record("x4")], batch=3)
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run()  # one processor: file 2 comes right after the all-new file 1
    assert (report.completed, report.records_loaded) == (3, 5)
    assert _rows(engine) == {"x1": (1, "Austin"), "x2": (2, "Houston"), "x3": (2, "Austin"), "x4": (3, "Austin")}
    assert row_count_mismatches(engine) == (5, 5, [])
