"""The payload store's guarantees, the same on both backends (the data root folder and S3 on a moto server)."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime

import pytest

from property_pipeline.settings import Settings, SettingsError
from property_pipeline.store.backend import PayloadMissing, PayloadStore, PayloadTooLarge
from property_pipeline.store.choose import open_payload_store
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import PayloadPathError
from property_pipeline.store.publish import PublishedBytesDiffer
from property_pipeline.store.s3 import S3Store

MOMENT = datetime(2026, 11, 3, 4, 5, 6, 789012, tzinfo=UTC)


def read(store: PayloadStore, relative_path: str, bound: int = 1 << 20) -> bytes:
    with store.open_payload(relative_path, bound) as handle:
        return handle.read()


def test_a_page_is_stored_byte_for_byte_under_the_folder_layout(store: PayloadStore) -> None:
    body = b'{"statusCode":200, "data":[{"id":"\xc3\xa9"}] }\n'
    stored = store.write_payload("spring-2026", 7, body, MOMENT)
    assert stored.relative_path == "2026-11/spring-2026_batch7_20261103T040506789012Z.json"
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and stored.size_bytes == len(body)
    assert read(store, stored.relative_path) == body
    assert store.hash_payload(stored.relative_path) == (stored.sha256, len(body))
    assert store.payload_size(stored.relative_path) == len(body)
    assert store.location(stored.relative_path).endswith("property_payloads/" + stored.relative_path)


def test_an_existing_name_is_never_overwritten(store: PayloadStore) -> None:
    stored = store.write_payload("c1", 1, b'{"data": []}', MOMENT)
    with pytest.raises(FileExistsError):
        store.write_payload("c1", 1, b'{"other": 1}', MOMENT)
    assert read(store, stored.relative_path) == b'{"data": []}'
    assert [found.relative_path for found in store.list_payloads("2026-11")] == [stored.relative_path]


def test_a_restored_payload_must_hash_to_its_registered_sha256_and_never_overwrites(store: PayloadStore) -> None:
    path = "2026-09/c1_batch1_20260901T000000Z.json"
    body = b'{"data": [1]}'
    with pytest.raises(PublishedBytesDiffer):
        store.put_payload(path, io.BytesIO(body), len(body), hashlib.sha256(b"other").hexdigest())
    assert store.payload_size(path) is None
    store.put_payload(path, io.BytesIO(body), len(body), hashlib.sha256(body).hexdigest())
    assert read(store, path) == body
    with pytest.raises(FileExistsError):
        store.put_payload(path, io.BytesIO(b"{}"), 2, hashlib.sha256(b"{}").hexdigest())
    assert read(store, path) == body


def test_a_payload_above_the_bound_is_refused_unread_and_a_missing_one_is_said_to_be_missing(
    store: PayloadStore,
) -> None:
    stored = store.write_payload("c1", 1, b"x" * 1000, MOMENT)
    with pytest.raises(PayloadTooLarge) as refused:
        read(store, stored.relative_path, bound=999)
    assert refused.value.size == 1000
    assert read(store, stored.relative_path, bound=1000) == b"x" * 1000
    gone = "2026-11/c1_batch2_20261103T040506789012Z.json"
    with pytest.raises(PayloadMissing):
        read(store, gone)
    assert store.hash_payload(gone) is None and store.payload_size(gone) is None


@pytest.mark.parametrize("bad", ["../x/c1_batch1_20261103T000000Z.json", "2026-11/../../etc", "2026-13/a.json", ""])
def test_paths_outside_the_layout_are_refused(store: PayloadStore, bad: str) -> None:
    with pytest.raises(PayloadPathError):
        store.payload_size(bad)
    with pytest.raises(PayloadPathError):
        store.delete_payload(bad)


def test_listing_finds_every_month_and_every_payload_whatever_order_names_arrive_in(store: PayloadStore) -> None:
    newer = store.write_payload("zeta", 9, b"{}", datetime(2026, 11, 20, tzinfo=UTC))
    older = store.write_payload("alpha", 1, b"{}", datetime(2026, 11, 2, tzinfo=UTC))  # arrives late, sorts first
    october = store.write_payload("c1", 1, b"{}", datetime(2026, 10, 5, tzinfo=UTC))
    assert store.list_months() == ["2026-10", "2026-11"]
    assert sorted(found.relative_path for found in store.list_payloads("2026-11")) == sorted(
        [newer.relative_path, older.relative_path]
    )
    [only] = store.list_payloads("2026-10")
    assert (only.relative_path, only.size_bytes, only.month) == (october.relative_path, 2, "2026-10")
    assert list(store.list_payloads("2026-01")) == []


def test_delete_removes_one_original_and_a_missing_one_is_not_an_error(store: PayloadStore) -> None:
    keep = store.write_payload("c1", 1, b"{}", MOMENT)
    drop = store.write_payload("c1", 2, b"{}", MOMENT)
    store.delete_payload(drop.relative_path)
    store.delete_payload(drop.relative_path)
    assert [found.relative_path for found in store.list_payloads("2026-11")] == [keep.relative_path]


def test_archives_are_written_once_and_read_back_as_stored(store: PayloadStore) -> None:
    name = "property_payloads_2026-09_20261201T000000000000Z.tar.gz"
    with store.writing_archive(name) as handle:
        handle.write(b"archive bytes")
    with store.reading_archive(name) as path:
        assert path.read_bytes() == b"archive bytes"
    with pytest.raises(FileExistsError), store.writing_archive(name) as handle:
        handle.write(b"other bytes")
    with store.reading_archive(name) as path:
        assert path.read_bytes() == b"archive bytes"
    store.delete_archive(name)
    with pytest.raises(FileNotFoundError), store.reading_archive(name) as path:
        path.read_bytes()


def test_a_failed_archive_write_stores_nothing(store: PayloadStore) -> None:
    name = "property_payloads_2026-09_20261201T000000000001Z.tar.gz"
    with pytest.raises(RuntimeError), store.writing_archive(name) as handle:
        handle.write(b"half an archive")
        raise RuntimeError("the writer died")
    with pytest.raises(FileNotFoundError), store.reading_archive(name) as path:
        path.read_bytes()


def test_the_setting_chooses_the_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    default = open_payload_store(None, tmp_path)
    assert isinstance(default, PayloadRoot) and default.logs_dir == tmp_path and default.folder is default
    folder = open_payload_store(str(tmp_path / "elsewhere"), tmp_path)
    assert isinstance(folder, PayloadRoot) and folder.logs_dir == tmp_path / "elsewhere"
    s3 = open_payload_store("s3://my-bucket/landing/zone", tmp_path)
    assert isinstance(s3, S3Store) and s3.folder is None
    assert s3.describe() == "s3://my-bucket/landing/zone/property_payloads/"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", None), ("s3://my-bucket", "s3://my-bucket"), ("s3://my-bucket/landing/zone", "s3://my-bucket/landing/zone")],
)
def test_the_payloads_url_setting_is_read_and_checked(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: str | None
) -> None:
    monkeypatch.setenv("PROPERTY_PIPELINE_PAYLOADS_URL", raw)
    assert Settings.from_env().payloads_url == expected


@pytest.mark.parametrize("raw", ["s3://", "s3://Bad_Bucket/x", "https://example.com/bucket", "gs://bucket"])
def test_a_payloads_url_that_is_neither_a_folder_nor_s3_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("PROPERTY_PIPELINE_PAYLOADS_URL", raw)
    with pytest.raises(SettingsError, match="PROPERTY_PIPELINE_PAYLOADS_URL"):
        Settings.from_env()
