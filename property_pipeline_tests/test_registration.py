"""Registration finds unregistered files, is idempotent, and never loads the same content twice."""

from __future__ import annotations

import shutil

from sqlalchemy import Engine, select

from property_pipeline.db.schema import batch_file_status
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import make_page, make_record, write_pages


def test_registering_twice_registers_nothing_new(engine: Engine, root: PayloadRoot) -> None:
    stored = write_pages(root, files=3, per_file=4)
    first = register_unregistered(engine, root, "test")
    assert [r.file_path for r in first.registered] == [s.relative_path for s in stored]
    second = register_unregistered(engine, root, "test")
    assert second.registered == [] and second.already_registered == 0  # known files are not even re-hashed
    with engine.connect() as conn:
        rows = conn.execute(select(batch_file_status).order_by(batch_file_status.c.file_id)).all()
    assert [(r.status, r.properties_count, r.checksum_sha256) for r in rows] == [
        ("PENDING", 4, s.sha256) for s in stored
    ]
    assert rows[0].campaign_id == "camp-1" and rows[0].batch_number == 1 and rows[0].month == "2026-11"
    assert len(list(root.pending.glob("2026-11/*"))) == 3


def test_file_with_the_content_of_a_registered_file_is_a_recorded_duplicate(engine: Engine, root: PayloadRoot) -> None:
    original = write_pages(root, files=1, per_file=4)[0]
    register_unregistered(engine, root, "test")
    copy = original.path.parent / "other-system_batch1_20261105T000000Z.json"
    shutil.copyfile(original.path, copy)
    report = register_unregistered(engine, root, "test")
    assert report.registered == []
    assert [(d.file_path, d.duplicate_of) for d in report.duplicates] == [("2026-11/" + copy.name, 1)]
    processed = PayloadProcessor(engine, root).run()
    assert processed.completed == 1 and processed.records_loaded == 4  # only the original loads


def test_files_that_do_not_follow_the_convention_are_skipped_with_a_reason(
    engine: Engine, root: PayloadRoot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    month = root.payloads / "2026-11"
    month.mkdir(parents=True)
    (month / "notes.json").write_text("{}")
    (month / ".camp_batch1_20261101T000000Z.json.123.tmp").write_text("partial")
    outside = tmp_path / "secret.json"
    outside.write_bytes(make_page([make_record("s")]))
    (month / "camp_batch9_20261101T000000Z.json").symlink_to(outside)
    report = register_unregistered(engine, root, "test")
    reasons = dict(report.skipped)
    assert report.registered == []
    assert "does not follow" in reasons[str(month / "notes.json")]
    assert "symlink" in reasons[str(month / "camp_batch9_20261101T000000Z.json")]
    assert len(reasons) == 2  # the hidden temporary file of an unfinished write is not a payload


def test_register_can_be_limited_to_one_month(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=1, per_file=2)
    other = root.payloads / "2026-10"
    other.mkdir(parents=True)
    (other / "c_batch1_20261001T000000Z.json").write_bytes(make_page([make_record("o")]))
    report = register_unregistered(engine, root, "test", month="2026-10")
    assert [r.file_path for r in report.registered] == ["2026-10/c_batch1_20261001T000000Z.json"]


def test_a_duplicate_leaves_the_same_marker_whether_register_or_capture_found_it(
    engine: Engine, root: PayloadRoot
) -> None:
    """One way markers follow a status: a duplicate's `processed/` marker says COMPLETED and what it duplicates."""
    import json

    from property_pipeline.api.client import PropertySearchClient
    from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
    from property_pipeline.capture import Campaign, capture_campaign

    with SandboxServer(SandboxConfig(records=5)) as server, PropertySearchClient(server.base_url) as client:
        first = capture_campaign(engine, root, client, Campaign("dup", {"records": 5}))
        second = capture_campaign(engine, root, client, Campaign("dup", {"records": 5}))  # the same bytes again
    month = first.files[0].month  # the capture's (current) month; a name at its first second lies in the past
    copy = first.files[0].path.parent / f"dropin_batch1_{month.replace('-', '')}01T000000Z.json"
    shutil.copyfile(first.files[0].path, copy)
    register_unregistered(engine, root, "test")

    def marker(relative_path: str) -> dict[str, object]:
        return json.loads((root.processed / relative_path).read_text())

    by_capture = marker(second.files[0].relative_path)
    by_register = marker(f"{month}/{copy.name}")
    assert set(by_capture) == set(by_register) == {"status", "file_id", "duplicate_of"}
    assert by_capture["status"] == by_register["status"] == "COMPLETED"
    assert by_capture["duplicate_of"] == by_register["duplicate_of"] == 1


def test_registration_records_whether_a_page_is_plain_json_and_processing_reads_both_kinds(
    engine: Engine, root: PayloadRoot
) -> None:
    """A page with a number beyond the double range is not plain JSON (orjson refuses it): registration says so,
    and processing takes it whole, quarantining the record that holds the number; a plain page is cut."""
    plain = root.write_payload("c", 1, make_page([make_record("a")]), None)
    quirky_page = make_page([make_record("b"), make_record("c")]).replace(
        b'"estimatedValue":450000', b'"estimatedValue":1e400', 1
    )
    quirky = root.write_payload("c", 2, quirky_page, None)
    register_unregistered(engine, root, "test")
    with engine.connect() as conn:
        verdicts = dict(conn.execute(select(batch_file_status.c.file_path, batch_file_status.c.plain_json)).all())
    assert verdicts == {plain.relative_path: True, quirky.relative_path: False}
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.records_loaded, report.records_quarantined) == (2, 2, 1)
