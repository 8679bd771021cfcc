"""The payload store writes atomically, checksums while writing, and never leaves the data root."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime

import pytest

from property_pipeline.store import markers
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import PayloadPathError, parse_payload_name, validate_campaign_id
from property_pipeline.store.publish import sha256_file
from property_pipeline.store.writer import write_payload


def test_payload_is_stored_byte_for_byte_with_its_checksum(root: PayloadRoot) -> None:
    body = b'{"statusCode":200, "data":[{"id":"\xc3\xa9"}] }\n'
    moment = datetime(2026, 11, 3, 4, 5, 6, 789012, tzinfo=UTC)
    stored = write_payload(root, "spring-2026", 7, body, moment)
    assert stored.path == root.payloads / "2026-11" / "spring-2026_batch7_20261103T040506789012Z.json"
    assert stored.path.read_bytes() == body
    assert stored.sha256 == hashlib.sha256(body).hexdigest() == sha256_file(stored.path)[0]
    assert stored.relative_path == "2026-11/spring-2026_batch7_20261103T040506789012Z.json"
    assert stored.size_bytes == len(body)


def test_stored_payload_is_read_only_and_never_overwritten(root: PayloadRoot) -> None:
    moment = datetime(2026, 11, 3, tzinfo=UTC)
    stored = write_payload(root, "c1", 1, b"{}", moment)
    assert not os.stat(stored.path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    with pytest.raises(FileExistsError):
        write_payload(root, "c1", 1, b'{"other": 1}', moment)
    assert stored.path.read_bytes() == b"{}"
    assert [p.name for p in stored.path.parent.iterdir()] == [stored.path.name]  # no temporary left behind


def test_failed_write_leaves_no_file_behind(root: PayloadRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_payload(root, "c1", 1, b"{}", datetime(2026, 11, 3, tzinfo=UTC))
    assert list((root.payloads / "2026-11").iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "", "x" * 65, "camp id", "..", "caf\u00e9", "c1\x00"])
def test_unsafe_campaign_ids_are_refused_before_touching_a_path(root: PayloadRoot, bad: str) -> None:
    with pytest.raises(PayloadPathError):
        validate_campaign_id(bad)
    with pytest.raises(PayloadPathError):
        write_payload(root, bad, 1, b"{}")
    assert not any(root.logs_dir.parent.glob("etc*"))


def test_both_timestamp_forms_parse() -> None:
    plain = parse_payload_name("c_1_batch12_20261103T040506Z.json")
    assert (plain.campaign_id, plain.batch_number) == ("c_1", 12)
    assert plain.captured_at == datetime(2026, 11, 3, 4, 5, 6, tzinfo=UTC)
    micro = parse_payload_name("c-1_batch3_20261103T040506123456Z.json")
    assert micro.captured_at.microsecond == 123456


@pytest.mark.parametrize(
    "name",
    [
        "c1_batch1_20261303T040506Z.json",
        "c1_batch_20261103T040506Z.json",
        "c1_batch1_2026.json",
        "../c1_batch1_20261103T040506Z.json",
    ],
)
def test_malformed_names_are_refused(name: str) -> None:
    with pytest.raises(PayloadPathError):
        parse_payload_name(name)


@pytest.mark.parametrize(
    "relative",
    [
        "../2026-11/c1_batch1_20261103T040506Z.json",
        "2026-11/../../x",
        "/etc/passwd",
        "2026-11/sub/c1_batch1_20261103T040506Z.json",
    ],
)
def test_resolve_refuses_paths_outside_the_payload_folder(root: PayloadRoot, relative: str) -> None:
    with pytest.raises(PayloadPathError):
        root.resolve(relative)


def test_resolve_refuses_a_symlink_that_escapes_the_data_root(root: PayloadRoot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    month = root.payloads / "2026-11"
    month.mkdir(parents=True)
    (month / "c1_batch1_20261103T040506Z.json").symlink_to(outside)
    with pytest.raises(PayloadPathError, match="outside the data root"):
        root.resolve("2026-11/c1_batch1_20261103T040506Z.json")


def test_the_processing_name_of_a_payload_is_a_hard_link_to_its_bytes(root: PayloadRoot) -> None:
    stored = write_payload(root, "c1", 1, b'{"data": []}', datetime(2026, 11, 3, tzinfo=UTC))
    in_processing = markers.processing_copy(root, 1, stored.path)
    assert in_processing.parent == root.processing
    assert in_processing.read_bytes() == stored.path.read_bytes()
    # The same inode: no byte was copied, and the original is untouched.
    assert os.stat(in_processing).st_ino == os.stat(stored.path).st_ino
    assert os.stat(stored.path).st_nlink == 2
    markers.drop_processing_copy(in_processing)
    assert os.stat(stored.path).st_nlink == 1
    assert stored.path.read_bytes() == b'{"data": []}'
