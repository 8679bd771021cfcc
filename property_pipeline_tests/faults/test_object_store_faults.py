"""Object storage misbehaving: server errors and connections closed mid-PUT are retried and never leave a half
object under a payload name; a lost response is recognised as our own write; a conflicting writer is refused;
every PUT is create-only and carries the capture-time SHA-256; a listing that changes between pages loses
nothing. A fault-injecting proxy (a real HTTP server) sits between the pipeline and moto's S3 server."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
from property_pipeline.capture import Campaign, capture_campaign
from property_pipeline.db.schema import batch_file_status
from property_pipeline.registration import register_unregistered
from property_pipeline.store.backend import PayloadExists, PayloadMissing, PayloadStoreUnavailable, PayloadTooLarge
from property_pipeline.store.s3 import S3Store
from property_pipeline_tests.factories import make_page, make_record
from property_pipeline_tests.s3server import FaultyProxy, MotoServer, client_for

pytestmark = pytest.mark.faults
MOMENT = datetime(2026, 11, 3, 4, 5, 6, tzinfo=UTC)
BODY = make_page([make_record(f"p-{i}") for i in range(50)])


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[FaultyProxy]:
    server = FaultyProxy(s3_server.url)
    yield server
    server.stop()


def store_behind(proxy: FaultyProxy, s3_server: MotoServer, *, max_attempts: int = 5, page: int = 1000) -> S3Store:
    bucket = f"pp-{uuid.uuid4().hex[:16]}"
    client_for(s3_server.url).create_bucket(Bucket=bucket)
    return S3Store(bucket, "landing", client=client_for(proxy.url, max_attempts=max_attempts), list_page_size=page)


def direct(store: S3Store, s3_server: MotoServer) -> S3Store:
    """The same bucket, reached without the proxy: what is really stored."""
    return S3Store(store.bucket, store.prefix, client=client_for(s3_server.url))


def stored(store: S3Store, relative_path: str) -> bytes:
    with store.open_payload(relative_path, 1 << 24) as handle:
        return handle.read()


def test_server_errors_are_retried_and_the_page_lands_whole(proxy: FaultyProxy, s3_server: MotoServer) -> None:
    store = store_behind(proxy, s3_server)
    proxy.faults.errors = [("PUT", 503), ("PUT", 500)]
    written = store.write_payload("c1", 1, BODY, MOMENT)
    assert len(proxy.puts()) == 3
    assert stored(direct(store, s3_server), written.relative_path) == BODY


def test_a_connection_closed_mid_put_is_retried_and_never_leaves_half_an_object(
    proxy: FaultyProxy, s3_server: MotoServer
) -> None:
    store = store_behind(proxy, s3_server)
    proxy.faults.cut_puts = 2
    written = store.write_payload("c1", 1, BODY, MOMENT)
    real = direct(store, s3_server)
    assert stored(real, written.relative_path) == BODY
    assert [found.relative_path for found in real.list_payloads("2026-11")] == [written.relative_path]


def test_a_put_that_keeps_failing_is_an_error_and_stores_nothing(proxy: FaultyProxy, s3_server: MotoServer) -> None:
    store = store_behind(proxy, s3_server, max_attempts=2)
    proxy.faults.cut_puts = 2
    with pytest.raises(PayloadStoreUnavailable, match="could not write"):
        store.write_payload("c1", 1, BODY, MOMENT)
    assert list(direct(store, s3_server).list_payloads("2026-11")) == []


def test_a_lost_response_to_a_put_that_landed_is_our_own_write_not_a_conflict(
    proxy: FaultyProxy, s3_server: MotoServer
) -> None:
    store = store_behind(proxy, s3_server)
    proxy.faults.lost_put_responses = 1
    written = store.write_payload("c1", 1, BODY, MOMENT)  # the retry meets 412: the object holds our bytes
    assert len(proxy.puts()) == 2
    assert stored(direct(store, s3_server), written.relative_path) == BODY


def test_a_second_writer_of_the_same_name_is_refused_by_the_server(proxy: FaultyProxy, s3_server: MotoServer) -> None:
    store = store_behind(proxy, s3_server)
    first = store.write_payload("c1", 1, BODY, MOMENT)
    assert store.write_payload("c1", 1, BODY, MOMENT) == first  # the same bytes: the same write
    with pytest.raises(PayloadExists, match="never overwritten"):
        store.write_payload("c1", 1, BODY + b" ", MOMENT)
    assert stored(direct(store, s3_server), first.relative_path) == BODY
    assert all(seen.headers.get("if-none-match") == "*" for seen in proxy.puts())


def test_every_captured_page_is_one_create_only_put_with_its_capture_time_sha256(
    engine: Engine, proxy: FaultyProxy, s3_server: MotoServer
) -> None:
    store = store_behind(proxy, s3_server)
    with (
        SandboxServer(SandboxConfig(records=900, seed=3, api_key="k")) as sandbox,
        PropertySearchClient(sandbox.base_url, "k", sleep=lambda _s: None) as client,
    ):
        capture_campaign(engine, store, client, Campaign("spring-tx"))
    with engine.connect() as conn:
        query = select(batch_file_status.c.file_path, batch_file_status.c.checksum_sha256)
        registered = {row.file_path: row.checksum_sha256 for row in conn.execute(query)}
    puts = {seen.path.split("/property_payloads/", 1)[1]: seen for seen in proxy.puts()}
    assert sorted(puts) == sorted(registered) and len(puts) == 3
    for path, checksum in registered.items():
        seen = puts[path]
        assert seen.headers["if-none-match"] == "*"
        assert seen.headers["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(checksum)).decode()
        assert hashlib.sha256(seen.body).hexdigest() == checksum


def test_a_listing_that_changes_between_pages_loses_nothing(
    engine: Engine, proxy: FaultyProxy, s3_server: MotoServer
) -> None:
    store = store_behind(proxy, s3_server, page=2)
    real = direct(store, s3_server)
    written = [store.write_payload(f"c{n}", 1, BODY, MOMENT) for n in range(1, 7)]
    late: list[str] = []

    def change_behind_the_cursor() -> None:
        late.append(real.write_payload("a0", 1, BODY, MOMENT).relative_path)  # sorts before every listed name
        real.delete_payload(written[-1].relative_path)  # on a page not listed yet

    proxy.faults.after_list_page, proxy.faults.list_query_contains = change_behind_the_cursor, "2026-11"
    first = register_unregistered(engine, store, "test")
    assert sorted(r.file_path for r in first.registered + first.duplicates) == sorted(
        s.relative_path for s in written[:-1]
    )
    second = register_unregistered(engine, store, "test")
    assert [r.file_path for r in second.registered + second.duplicates] == late
    with engine.connect() as conn:
        paths = set(conn.execute(select(batch_file_status.c.file_path)).scalars())
    assert paths == {s.relative_path for s in written[:-1]} | set(late)


def test_a_payload_above_the_bound_is_measured_and_never_downloaded(proxy: FaultyProxy, s3_server: MotoServer) -> None:
    store = store_behind(proxy, s3_server)
    written = direct(store, s3_server).write_payload("c1", 1, BODY, MOMENT)
    with pytest.raises(PayloadTooLarge), store.open_payload(written.relative_path, len(BODY) - 1):
        pass
    assert [(seen.method, seen.query) for seen in proxy.seen] == [("HEAD", "")]


def test_an_object_replaced_between_its_size_check_and_its_read_is_not_read(
    proxy: FaultyProxy, s3_server: MotoServer
) -> None:
    store = store_behind(proxy, s3_server)
    real = direct(store, s3_server)
    written = real.write_payload("c1", 1, BODY, MOMENT)
    key = store.key(written.relative_path)

    def replace_behind_the_back() -> None:
        real.client.put_object(Bucket=store.bucket, Key=key, Body=b"x" * (10 * len(BODY)))

    proxy.faults.after_head = replace_behind_the_back
    with pytest.raises(PayloadMissing, match="replaced"), store.open_payload(written.relative_path, len(BODY)):
        pass
