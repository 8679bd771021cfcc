"""Payload files: names, atomic writes, checksums, markers. The only code that writes payload files."""

from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import (
    PayloadName,
    PayloadPathError,
    format_timestamp,
    month_of,
    parse_payload_name,
    validate_campaign_id,
    validate_month,
)
from property_pipeline.store.publish import publishing, sha256_file
from property_pipeline.store.writer import StoredPayload, write_payload

__all__ = [
    "PayloadName",
    "PayloadPathError",
    "PayloadRoot",
    "StoredPayload",
    "format_timestamp",
    "month_of",
    "parse_payload_name",
    "publishing",
    "sha256_file",
    "validate_campaign_id",
    "validate_month",
    "write_payload",
]
