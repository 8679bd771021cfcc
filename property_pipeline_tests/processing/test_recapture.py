"""The same properties captured again: an unchanged record moves only its narrow sighting row, a changed one
rewrites the content, newest wins in any load order, and a sighting another processor changed after it was
read is never overwritten unseen. On a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import itertools
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.schema import batch_file_status, file_properties, properties, property_sightings
from property_pipeline.digest import compute_digest
from property_pipeline.processing import loader
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import make_record, write_page

OCT = datetime(2026, 10, 5, 8, tzinfo=UTC)
NOV = datetime(2026, 11, 5, 8, tzinfo=UTC)
DEC = datetime(2026, 12, 1, 8, tzinfo=UTC)


def _load(engine: Engine, root: PayloadRoot, **scope: Any) -> None:
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run(**scope)
    assert report.failed == 0 and all(outcome.status == "COMPLETED" for outcome in report.outcomes)


def _rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.property_id: row for row in conn.execute(select(properties))}


def _file_ids(engine: Engine) -> dict[datetime, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(batch_file_status.c.captured_at, batch_file_status.c.file_id)).all()
    return {captured_at: file_id for captured_at, file_id in rows}


def _versions(engine: Engine) -> dict[str, tuple[str, str]]:
    """PostgreSQL: each property's content row and sighting row versions (xmin)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT r.property_id, r.xmin::text, s.xmin::text FROM property_records r "
                "JOIN property_sightings s USING (property_id)"
            )
        ).all()
    return {property_id: (content, sighting) for property_id, content, sighting in rows}


def test_a_record_seen_again_unchanged_moves_only_its_sighting(engine: Engine, root: PayloadRoot) -> None:
    write_page(root, [make_record("same"), make_record("changes")], batch=1, captured_at=OCT)
    _load(engine, root)
    before = _rows(engine)
    versions = _versions(engine) if engine.dialect.name == "postgresql" else {}

    write_page(root, [make_record("same"), make_record("changes", estimatedValue=999_000)], batch=1, captured_at=NOV)
    _load(engine, root)
    after, files = _rows(engine), _file_ids(engine)

    # Both properties were seen again: their lineage names the November file, first seen stays October.
    for property_id in ("same", "changes"):
        row = after[property_id]
        assert (row.source_file_id, row.last_seen_at, row.captured_at) == (files[NOV], NOV, NOV)
        assert row.first_seen_at == OCT
    assert after["same"].raw == before["same"].raw and after["same"].estimated_value == 450_000
    assert after["changes"].estimated_value == 999_000 and after["changes"].raw["estimatedValue"] == 999_000
    with engine.connect() as conn:
        links = sorted(conn.execute(select(file_properties.c.file_id, file_properties.c.property_id)).all())
    assert links == [(files[OCT], "changes"), (files[OCT], "same"), (files[NOV], "changes"), (files[NOV], "same")]
    if engine.dialect.name == "postgresql":
        now = _versions(engine)
        assert now["same"][0] == versions["same"][0], "the unchanged record's content row was not written"
        assert now["same"][1] != versions["same"][1], "its sighting row moved"
        assert now["changes"][0] != versions["changes"][0], "the changed record's content row was rewritten"


def _scenario(root: PayloadRoot) -> None:
    """One property with content A, A, B, A over four captures, another with A every time: runs of identical
    content (each page also holds a property of its own, so no page is a byte-for-byte duplicate of another)."""
    content = {OCT: 1, OCT + timedelta(days=10): 1, NOV: 2, DEC: 1}
    for batch, (captured_at, value) in enumerate(content.items(), start=1):
        records = [make_record("flips", estimatedValue=value), make_record("steady"), make_record(f"only-{batch}")]
        write_page(root, records, batch=batch, captured_at=captured_at)


def _fresh(tmp_path: Path, root: PayloadRoot, name: str) -> tuple[Engine, PayloadRoot]:
    copy = PayloadRoot(tmp_path / name / "logs")
    copy.ensure_folders()
    shutil.copytree(root.payloads, copy.payloads, dirs_exist_ok=True)
    engine = create_db_engine(f"sqlite:///{tmp_path / name / 'pipeline.db'}")
    upgrade(engine)
    return engine, copy


@pytest.mark.parametrize("order", list(itertools.permutations(range(4)))[::5])
def test_identical_content_in_any_load_order_gives_the_same_database(
    engine: Engine, root: PayloadRoot, tmp_path: Path, order: tuple[int, ...]
) -> None:
    _scenario(root)
    register_unregistered(engine, root, "test")
    with engine.connect() as conn:
        ids = [row[0] for row in conn.execute(select(batch_file_status.c.file_id).order_by("captured_at"))]
    for position in order:
        PayloadProcessor(engine, root).run(file_ids=[ids[position]])
    reference_engine, reference_root = _fresh(tmp_path, root, "in-order")
    try:
        _load(reference_engine, reference_root)
        assert compute_digest(engine) == compute_digest(reference_engine)
    finally:
        reference_engine.dispose()
    rows = _rows(engine)
    assert (rows["flips"].estimated_value, rows["flips"].last_seen_at, rows["flips"].first_seen_at) == (1, DEC, OCT)
    assert rows["steady"].source_file_id == ids[3]


@pytest.mark.parametrize("ours_is_newer", [True, False])
def test_a_sighting_changed_by_another_processor_after_it_was_read_is_never_overwritten(
    engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch, ours_is_newer: bool
) -> None:
    """Between this processor's read of the sightings and its write, another processor commits a capture of the
    same property: the write finds the row changed, the load starts over, and the newest capture wins."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: nothing can change between a transaction's read and its write")
    write_page(root, [make_record("p", estimatedValue=1)], batch=1, captured_at=OCT)
    _load(engine, root)
    ours, theirs = (DEC, NOV) if ours_is_newer else (NOV, DEC)
    write_page(root, [make_record("p", estimatedValue=2)], batch=2, captured_at=ours)
    write_page(root, [make_record("p", estimatedValue=3)], batch=3, captured_at=theirs)
    register_unregistered(engine, root, "test")
    files = _file_ids(engine)
    other = create_db_engine(str(engine.url.render_as_string(hide_password=False)))
    plans = 0
    real_plan = loader._plan

    def plan_then_race(*arguments: Any) -> Any:
        nonlocal plans
        plans += 1
        if plans == 1:  # after this processor read the sightings: another one loads the other capture and commits
            assert PayloadProcessor(other, root).run(file_ids=[files[theirs]]).completed == 1
        return real_plan(*arguments)

    monkeypatch.setattr(loader, "_plan", plan_then_race)
    try:
        assert PayloadProcessor(engine, root).run(file_ids=[files[ours]]).completed == 1
    finally:
        other.dispose()
    assert plans == 3  # ours read, the other's read, ours read again after its write found the row changed
    row = _rows(engine)["p"]
    newest = max(ours, theirs)
    assert (row.source_file_id, row.last_seen_at, row.first_seen_at) == (files[newest], newest, OCT)
    assert row.estimated_value == (2 if ours_is_newer else 3)
    with engine.connect() as conn:
        hashes = conn.execute(select(property_sightings.c.content_hash)).scalars().all()
    assert len(hashes) == 1 and hashes[0] is not None
