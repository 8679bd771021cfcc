"""What payload files are called and where in the store they go: `property_payloads/YYYY-MM/<name>.json`
(the same layout on a folder and on object storage); the checks every name and month passes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from property_pipeline.errors import PayloadError

PAYLOADS_DIR = "property_payloads"
PENDING_DIR = "pending"
PROCESSING_DIR = "processing"
PROCESSED_DIR = "processed"
ARCHIVE_DIR = "archive"

CAMPAIGN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# re.ASCII: \d would also match other scripts' digits (e.g. "٢٠٢٦-11"), which int() and strptime accept.
MONTH_RE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])", re.ASCII)
PAYLOAD_NAME_RE = re.compile(
    r"(?P<campaign>[A-Za-z0-9_-]{1,64})_batch(?P<batch>\d{1,9})_"
    r"(?P<ts>\d{8}T\d{6}(?:\d{6})?Z)\.json",
    re.ASCII,
)


class PayloadPathError(PayloadError, ValueError):
    """A campaign id, month, file name or path is not allowed (bad characters, or it leaves the data root)."""


def validate_campaign_id(campaign_id: str) -> str:
    """Return the id if it is 1-64 letters, digits, '-' or '_'; raise PayloadPathError otherwise."""
    if not isinstance(campaign_id, str) or not CAMPAIGN_ID_RE.fullmatch(campaign_id):
        raise PayloadPathError(f"campaign id {campaign_id!r} is not allowed: use 1 to 64 letters, digits, '-' or '_'")
    return campaign_id


def validate_month(month: str) -> str:
    """Return the month if it reads YYYY-MM; raise PayloadPathError otherwise."""
    if not isinstance(month, str) or not MONTH_RE.fullmatch(month):
        raise PayloadPathError(f"month {month!r} is not of the form YYYY-MM (for example 2026-11)")
    return month


def month_of(moment: datetime) -> str:
    """The YYYY-MM month folder a UTC moment belongs to."""
    return moment.astimezone(UTC).strftime("%Y-%m")


def format_timestamp(moment: datetime, *, microseconds: bool = True) -> str:
    """UTC timestamp for a payload name: YYYYMMDDTHHMMSSffffffZ (or without the microseconds)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y%m%dT%H%M%S%fZ" if microseconds else "%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class PayloadName:
    """The parts of `{campaignId}_batch{n}_{timestamp}.json`."""

    campaign_id: str
    batch_number: int
    captured_at: datetime

    @property
    def file_name(self) -> str:
        return f"{self.campaign_id}_batch{self.batch_number}_{format_timestamp(self.captured_at)}.json"


def parse_payload_name(file_name: str) -> PayloadName:
    """Parse a payload file name; raise PayloadPathError when it does not follow the convention."""
    match = PAYLOAD_NAME_RE.fullmatch(file_name)
    if not match:
        raise PayloadPathError(
            f"file name {file_name!r} does not follow {{campaignId}}_batch{{n}}_{{YYYYMMDDTHHMMSSZ}}.json"
        )
    raw_ts = match["ts"]
    fmt = "%Y%m%dT%H%M%S%fZ" if len(raw_ts) == 22 else "%Y%m%dT%H%M%SZ"
    try:
        captured_at = datetime.strptime(raw_ts, fmt).replace(tzinfo=UTC)
    except ValueError:
        raise PayloadPathError(f"file name {file_name!r} has an impossible timestamp {raw_ts!r}") from None
    return PayloadName(match["campaign"], int(match["batch"]), captured_at)
