"""Small builders of realistic payload pages for the core tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import StoredPayload

BASE_TIME = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def make_record(property_id: Any, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": property_id,
        "apn": f"APN-{property_id}",
        "address": {
            "address": f"{property_id} Main St, Austin, TX 78701",
            "street": f"{property_id} Main St",
            "city": "Austin",
            "state": "TX",
            "zip": "78701",
            "county": "Travis",
        },
        "latitude": 30.27,
        "longitude": -97.74,
        "bedrooms": 3,
        "bathrooms": 2.5,
        "squareFeet": 1850,
        "lotSquareFeet": 6000,
        "yearBuilt": 1998,
        "propertyType": "SFR",
        "estimatedValue": 450000,
        "estimatedEquity": 120000,
        "lastSaleDate": "2019-06-14",
        "lastSaleAmount": 330000,
        "owner1FirstName": "José",
        "owner1LastName": "Núñez",
        "ownerOccupied": True,
        "absenteeOwner": False,
        "mailAddress": {"address": "PO Box 1, Austin, TX 78701", "city": "Austin", "state": "TX", "zip": "78701"},
        "extras": {"mortgages": [{"lender": "Bank", "amount": 200000}]},
    }
    record.update(overrides)
    return record


def make_page(records: list[dict[str, Any]], result_index: int = 0, result_count: int | None = None) -> bytes:
    return orjson.dumps(
        {
            "statusCode": 200,
            "resultCount": result_count if result_count is not None else result_index + len(records),
            "resultIndex": result_index,
            "recordCount": len(records),
            "data": records,
        }
    )


def write_page(
    root: PayloadRoot,
    records: list[dict[str, Any]],
    *,
    campaign: str = "camp-1",
    batch: int = 1,
    captured_at: datetime | None = None,
) -> StoredPayload:
    return root.write_payload(campaign, batch, make_page(records), captured_at or BASE_TIME + timedelta(minutes=batch))


def write_pages(root: PayloadRoot, files: int, per_file: int = 20, campaign: str = "camp-1") -> list[StoredPayload]:
    """`files` pages with distinct ids, captured a minute apart."""
    return [
        write_page(root, [make_record(f"{campaign}-{b}-{i}") for i in range(per_file)], campaign=campaign, batch=b)
        for b in range(1, files + 1)
    ]
