"""The sandbox API: deterministic realistic records, the contract's responses, and injectable faults."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, SandboxServer, generate_record

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_KEY = "sandbox-key-7Hq2-never-logged"
CONTRACT_FIELDS = (
    "id",
    "apn",
    "address",
    "latitude",
    "longitude",
    "bedrooms",
    "bathrooms",
    "squareFeet",
    "lotSquareFeet",
    "yearBuilt",
    "propertyType",
    "estimatedValue",
    "estimatedEquity",
    "lastSaleDate",
    "lastSaleAmount",
    "owner1FirstName",
    "owner1LastName",
    "ownerOccupied",
    "absenteeOwner",
    "mailAddress",
)
ADDRESS_FIELDS = {"address", "street", "city", "state", "zip", "county"}


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return [generate_record(index, 42) for index in range(3000)]


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(records=1000)) as running:
        yield running


def search(server: SandboxServer, criteria: Any, headers: dict[str, str] | None = None) -> requests.Response:
    body = criteria if isinstance(criteria, bytes) else orjson.dumps(criteria)
    return requests.post(f"{server.base_url}/v2/PropertySearch", data=body, headers=headers, timeout=10)


def is_contract_violation(index: int) -> bool:
    return index % 97 == 96


# --- records ---------------------------------------------------------------------------------


def test_generate_record_is_deterministic_across_processes() -> None:
    assert generate_record(123, 42) == generate_record(123, 42)
    assert generate_record(123, 42) != generate_record(123, 43)
    assert generate_record(123, 42) != generate_record(124, 42)
    script = "import sys, orjson; from property_pipeline.api.sandbox import generate_record; "
    script += "sys.stdout.buffer.write(orjson.dumps([generate_record(i, 42) for i in range(50)]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    other_process = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, check=True, timeout=30
    ).stdout
    assert other_process == orjson.dumps([generate_record(i, 42) for i in range(50)])


def test_records_use_the_contract_field_names(records: list[dict[str, Any]]) -> None:
    for index, record in enumerate(records[:500]):
        if is_contract_violation(index):
            continue
        assert set(CONTRACT_FIELDS) <= record.keys()
        assert set(record["address"]) == ADDRESS_FIELDS
        assert set(record["mailAddress"]) == ADDRESS_FIELDS
        assert re.fullmatch(r"[A-Z]{2}", record["address"]["state"])
        assert re.fullmatch(r"\d{5}", record["address"]["zip"])
        assert record["address"]["address"].startswith(record["address"]["street"])


def test_every_seventh_record_has_an_integer_id_and_the_rest_unique_string_ids(records: list[dict[str, Any]]) -> None:
    ids = [record.get("id") for record in records]
    for index, value in enumerate(ids):
        if value is None:
            assert is_contract_violation(index)
        elif index % 7 == 6:
            assert type(value) is int
        else:
            assert re.fullmatch(r"P-\d{6}-[0-9a-f]{4}", value)
    present = [str(value) for value in ids if value is not None]
    assert len(set(present)) == len(present)


def test_records_carry_unicode_owner_names_and_nulls(records: list[dict[str, Any]]) -> None:
    names = {record["owner1FirstName"] for record in records} | {record["owner1LastName"] for record in records}
    assert {"José", "Núñez", "Zoë", "Ångström", "王", "Søren", "Kierkegård"} <= names
    assert any(record["owner1FirstName"] is None for record in records)  # company owners
    for optional in ("apn", "lastSaleDate", "bedrooms", "lotSquareFeet", "yearBuilt"):
        assert any(record[optional] is None for record in records), optional
    assert any(record["absenteeOwner"] and record["mailAddress"] != record["address"] for record in records)


def test_bathrooms_have_halves_and_sale_dates_are_iso_dates(records: list[dict[str, Any]]) -> None:
    assert any(record["bathrooms"] == 2.5 for record in records)
    for index, record in enumerate(records):
        if record["lastSaleDate"] is not None and not is_contract_violation(index):
            assert date.fromisoformat(record["lastSaleDate"]).isoformat() == record["lastSaleDate"]


def test_records_carry_nested_extras_beyond_the_contract(records: list[dict[str, Any]]) -> None:
    assert any(record["mortgages"] and isinstance(record["mortgages"][0], dict) for record in records)
    assert all(isinstance(record["taxInfo"], dict) and isinstance(record["neighborhood"], dict) for record in records)
    assert any(record["flags"] for record in records)


def test_records_average_about_two_kilobytes(records: list[dict[str, Any]]) -> None:
    average = statistics.mean(len(orjson.dumps(record)) for record in records)
    assert 1700 <= average <= 2500


def test_records_spread_over_several_states(records: list[dict[str, Any]]) -> None:
    states = {record["address"]["state"] for record in records}
    assert {"CA", "TX", "FL", "NY", "WA", "IL", "AZ", "CO"} <= states


def test_every_97th_record_breaks_the_contract_in_rotation(records: list[dict[str, Any]]) -> None:
    broken = [records[index] for index in range(96, 3000, 97)]
    assert "id" not in broken[0]
    assert broken[1]["bedrooms"] in {"one", "two", "three", "four", "five", "six"}
    assert broken[2]["lastSaleDate"] == "2021-13-45"
    assert isinstance(broken[3]["yearBuilt"], float) and not broken[3]["yearBuilt"].is_integer()
    assert len(broken[4]["address"]["state"]) > 2 and broken[4]["address"]["state"].isalpha()
    assert "id" not in broken[5]  # the rotation starts again
    for index, record in enumerate(records):
        if not is_contract_violation(index):
            assert "id" in record
            assert record["bedrooms"] is None or type(record["bedrooms"]) is int
            assert record["yearBuilt"] is None or type(record["yearBuilt"]) is int


# --- the HTTP contract -----------------------------------------------------------------------


def test_search_answers_a_contract_page_as_json(server: SandboxServer) -> None:
    response = search(server, {"size": 10, "resultIndex": 20})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content.startswith(b'{"statusCode":200,"resultCount":1000,"resultIndex":20,"recordCount":10,')
    page = response.json()
    assert page["data"] == [generate_record(index, 42) for index in range(20, 30)]
    assert response.content == server.page_body({}, 20, 10)


def test_size_and_result_index_default_to_400_and_0(server: SandboxServer) -> None:
    page = search(server, {}).json()
    assert (page["resultIndex"], page["recordCount"]) == (0, 400)


def test_same_request_gets_the_same_bytes_from_any_server_with_the_same_config(server: SandboxServer) -> None:
    criteria = {"state": "TX", "size": 50, "resultIndex": 50}
    first = search(server, criteria).content
    assert search(server, criteria).content == first
    with SandboxServer(SandboxConfig(records=1000)) as other:
        assert search(other, criteria).content == first


def test_records_criterion_overrides_the_dataset_size(server: SandboxServer) -> None:
    page = search(server, {"records": 1001, "resultIndex": 1000}).json()
    assert (page["resultCount"], page["recordCount"]) == (1001, 1)
    assert page["data"] == [generate_record(1000, 42)]


def test_state_criterion_keeps_only_that_states_records(server: SandboxServer) -> None:
    page = search(server, {"state": "CO", "size": 1000}).json()
    assert 0 < page["resultCount"] < 1000
    assert page["recordCount"] == page["resultCount"]
    assert {record["address"]["state"] for record in page["data"]} <= {"CO", "Colorado"}


def test_result_index_past_the_end_answers_an_empty_page(server: SandboxServer) -> None:
    page = search(server, {"resultIndex": 5000}).json()
    assert (page["resultCount"], page["resultIndex"], page["recordCount"], page["data"]) == (1000, 5000, 0, [])


@pytest.mark.parametrize(
    ("criteria", "message_part"),
    [
        ({"size": 1001}, "size must be an integer from 1 to 1000"),
        ({"size": 0}, "size must be"),
        ({"resultIndex": -1}, "resultIndex must be a non-negative integer"),
        ({"state": "California"}, "state must be a two-letter code"),
        ({"records": -5}, "records must be"),
        (b"this is not json", "JSON object"),
        (b"[1, 2]", "JSON object"),
    ],
)
def test_bad_requests_get_400_with_a_message(server: SandboxServer, criteria: Any, message_part: str) -> None:
    response = search(server, criteria)
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 400
    assert message_part in body["message"]


def test_unknown_paths_get_404_json_and_get_is_not_allowed(server: SandboxServer) -> None:
    response = requests.post(f"{server.base_url}/v1/Nothing", json={}, timeout=10)
    assert response.status_code == 404
    assert response.json()["statusCode"] == 404
    assert requests.get(f"{server.base_url}/v2/PropertySearch", timeout=10).status_code == 405


def test_api_key_is_required_when_configured_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SandboxServer(SandboxConfig(records=10, api_key=SANDBOX_KEY)) as server:
        missing = search(server, {})
        wrong = search(server, {}, {"x-api-key": "not-the-key"})
        right = search(server, {}, {"x-api-key": SANDBOX_KEY})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == {"statusCode": 401, "message": "Missing or invalid x-api-key header"}
    assert right.status_code == 200
    assert SANDBOX_KEY not in caplog.text


# --- faults ----------------------------------------------------------------------------------


def test_fail_first_cycles_429_503_and_truncated_bodies_for_each_result_index() -> None:
    with SandboxServer(SandboxConfig(records=1000, faults=FaultConfig(fail_first=4))) as server:
        good = server.page_body({}, 0, 400)
        responses = [search(server, {"resultIndex": 0}) for _ in range(5)]
        other_index = search(server, {"resultIndex": 400})

    assert [response.status_code for response in responses] == [429, 503, 200, 429, 200]
    assert responses[0].headers["Retry-After"] == "1"
    truncated = responses[2]
    assert truncated.content == good[: len(good) // 2]
    assert int(truncated.headers["Content-Length"]) == len(truncated.content)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(truncated.content)
    assert responses[4].content == good
    assert other_index.status_code == 429  # each resultIndex has its own count


def test_random_faults_produce_their_kind_of_failure() -> None:
    with SandboxServer(SandboxConfig(records=10, faults=FaultConfig(rate_limit=1.0))) as server:
        limited = [search(server, {}) for _ in range(6)]
    assert {response.status_code for response in limited} == {429}
    assert {response.headers["Retry-After"] for response in limited} <= {"0", "1"}

    with SandboxServer(SandboxConfig(records=10, faults=FaultConfig(server_error=1.0))) as server:
        errors = [search(server, {}) for _ in range(12)]
    assert {response.status_code for response in errors} <= {500, 502, 503, 504}
    assert all(response.json()["statusCode"] == response.status_code for response in errors)

    with SandboxServer(SandboxConfig(records=10, faults=FaultConfig(truncate=1.0))) as server:
        truncated = search(server, {})
    assert truncated.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(truncated.content)


def test_random_faults_are_reproducible_from_their_seed() -> None:
    faults = FaultConfig(rate_limit=0.3, server_error=0.3, seed=7)

    def statuses() -> list[int]:
        with SandboxServer(SandboxConfig(records=10, faults=faults)) as server:
            return [search(server, {}).status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert {200, 429} <= set(first) and set(first) - {200, 429}


def test_requests_served_counts_every_request_including_faults_and_errors() -> None:
    with SandboxServer(SandboxConfig(records=10, faults=FaultConfig(fail_first=2))) as server:
        search(server, {})
        search(server, {})
        search(server, {})
        search(server, {"size": 5000})
        requests.post(f"{server.base_url}/nowhere", json={}, timeout=10)
        assert server.requests_served == 5


def test_fault_and_sandbox_configs_reject_impossible_values() -> None:
    with pytest.raises(ValueError):
        FaultConfig(rate_limit=0.6, server_error=0.6)
    with pytest.raises(ValueError):
        FaultConfig(slow=-0.1)
    with pytest.raises(ValueError):
        SandboxConfig(records=-1)


# --- lifecycle -------------------------------------------------------------------------------


def test_server_binds_loopback_and_stop_closes_the_port() -> None:
    server = SandboxServer(SandboxConfig(records=1))
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    assert server.base_url.startswith("http://127.0.0.1:")
    port = int(server.base_url.rsplit(":", 1)[1])
    server.stop()
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_serve_forever_prints_the_url_and_stops_cleanly_on_ctrl_c() -> None:
    script = (
        "from property_pipeline.api.sandbox import SandboxConfig, serve_forever; "
        "serve_forever(SandboxConfig(records=5), port=0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v2/PropertySearch", line)
        assert match, line
        response = requests.post(f"{match.group(1)}/v2/PropertySearch", json={}, timeout=10)
        assert response.json()["resultCount"] == 5
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
