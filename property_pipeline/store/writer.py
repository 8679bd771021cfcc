"""Payload files written as received: checksummed, published crash-safely (store/publish.py), read-only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from property_pipeline.store.layout import PayloadName, month_of, validate_campaign_id
from property_pipeline.store.publish import publishing
from property_pipeline.store.publish import remove_stale_temporaries as remove_temporaries_of

if TYPE_CHECKING:
    from property_pipeline.store.folder import PayloadRoot


@dataclass(frozen=True)
class StoredPayload:
    """A payload file that is completely on disk: where, how big, and its SHA-256."""

    path: Path
    relative_path: str
    month: str
    name: PayloadName
    size_bytes: int
    sha256: str


def write_payload(
    root: PayloadRoot,
    campaign_id: str,
    batch_number: int,
    body: bytes,
    captured_at: datetime | None = None,
) -> StoredPayload:
    """Write one API page byte for byte, published crash-safely and read-only (never over an existing file),
    and return its checksum: a crash leaves either the whole file or no file under the final name."""
    validate_campaign_id(campaign_id)
    if batch_number < 1:
        raise ValueError(f"batch number must be at least 1, not {batch_number}")
    captured_at = (captured_at or datetime.now(UTC)).astimezone(UTC)
    name = PayloadName(campaign_id, batch_number, captured_at)
    month = month_of(captured_at)
    folder = root.month_dir(month)
    folder.mkdir(parents=True, exist_ok=True)
    root.check_inside(folder)
    final = folder / name.file_name
    digest = hashlib.sha256(body).hexdigest()
    try:
        with publishing(final) as handle:
            handle.write(body)
    except FileExistsError:
        raise FileExistsError(f"{final} already exists; payload files are never overwritten") from None
    except OSError as error:
        if error.errno is None:
            raise
        # Name the payload file (not the hidden temporary) so the message says what could not be written.
        raise OSError(error.errno, f"{error.strerror} while writing payload file", str(final)) from error
    return StoredPayload(
        path=final,
        relative_path=f"{month}/{final.name}",
        month=month,
        name=name,
        size_bytes=len(body),
        sha256=digest,
    )


def remove_stale_temporaries(root: PayloadRoot, month: str, campaign_id: str) -> list[Path]:
    """Delete half-written temporaries a crashed capture of this campaign left in a month folder.

    Only safe while holding the campaign's capture lock: then no live writer owns them.
    """
    return remove_temporaries_of(root.month_dir(month), f"{validate_campaign_id(campaign_id)}_batch*")
