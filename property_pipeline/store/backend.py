"""The payload store interface: what capture, registration, processing, verify and retention ask of the place
that holds payload files and archives. Two backends implement it: a local folder (store/folder.py, the default)
and S3-compatible object storage (store/s3.py), chosen by `PROPERTY_PIPELINE_PAYLOADS_URL`.

Both give the same guarantees: a payload is written once under its final name and never overwritten
(PayloadExists otherwise), with the SHA-256 taken while it was captured; it is read only after its size
was checked against the payload bound; listing a month finds every payload in it, whenever it arrived.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from property_pipeline.errors import PayloadError

if TYPE_CHECKING:
    from property_pipeline.store.folder import PayloadRoot
    from property_pipeline.store.writer import StoredPayload


class PayloadExists(PayloadError, FileExistsError):
    """A create-only write found its name taken by different bytes: nothing was overwritten."""


class PayloadMissing(PayloadError, FileNotFoundError):
    """A registered payload (or an archive) is not in the store."""


class PayloadTooLarge(PayloadError):
    """A payload is above the size bound: it was not read."""

    def __init__(self, relative_path: str, size: int, limit: int) -> None:
        super().__init__(f"payload file {relative_path} is {size:,} bytes, above the limit of {limit:,}")
        self.size = size
        self.limit = limit


class PayloadStoreUnavailable(PayloadError, OSError):
    """The store did not answer, or refused, after its retries (a server error, a lost connection)."""


@dataclass(frozen=True)
class StoredObject:
    """One payload as a listing shows it: `YYYY-MM/<name>.json`, its size and when it was last written."""

    relative_path: str
    size_bytes: int
    modified_at: datetime

    @property
    def month(self) -> str:
        return self.relative_path.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.relative_path.rsplit("/", 1)[-1]


class PayloadStore(Protocol):
    """Where payload files and retention archives live; every payload path is `YYYY-MM/<payload name>`."""

    @property
    def folder(self) -> PayloadRoot | None:
        """The local folder behind the store, for what only a POSIX folder has (marker folders, inode times,
        permissions, symbolic links); None on object storage, where the database alone holds file states."""
        ...

    def describe(self) -> str:
        """Where the payloads are, for messages: a folder path or `s3://bucket/prefix/property_payloads`."""
        ...

    def location(self, relative_path: str) -> str:
        """Where one payload is, for messages."""
        ...

    def write_payload(
        self, campaign_id: str, batch_number: int, body: bytes, captured_at: datetime | None = None
    ) -> StoredPayload:
        """Store one captured page under its final name, create-only and checksummed."""
        ...

    def put_payload(self, relative_path: str, stream: BinaryIO, size: int, sha256: str) -> None:
        """Put back a payload's bytes (restore): create-only, refused unless they hash to `sha256`."""
        ...

    def payload_size(self, relative_path: str) -> int | None:
        """The stored size of a payload, or None when it is not there."""
        ...

    def open_payload(self, relative_path: str, max_bytes: int) -> AbstractContextManager[BinaryIO]:
        """A handle on a payload's bytes, opened only after its size was checked: PayloadTooLarge above
        `max_bytes`, PayloadMissing when absent; never more than `max_bytes` held in memory."""
        ...

    def hash_payload(self, relative_path: str) -> tuple[str, int] | None:
        """SHA-256 and size of a payload's bytes as they are now (read in chunks), or None when it is gone."""
        ...

    def list_months(self) -> list[str]:
        """The months (YYYY-MM) that hold payloads, oldest first."""
        ...

    def list_payloads(self, month: str) -> Iterator[StoredObject]:
        """Every entry of a month that could be a payload (hidden and temporary ones left out)."""
        ...

    def delete_payload(self, relative_path: str) -> None:
        """Delete one original (retention only, after its archive verified); a missing one is not an error."""
        ...

    def follow(self, relative_path: str, status: str, **summary: object) -> None:
        """Mirror a file's new state where people look (marker folders); nothing on object storage."""
        ...

    def clear_markers(self, relative_path: str) -> None:
        """Drop a deleted file's state mirror."""
        ...

    def archive_location(self, archive_name: str) -> str:
        """Where an archive is, for messages."""
        ...

    def writing_archive(self, archive_name: str) -> AbstractContextManager[BinaryIO]:
        """Write a new archive through the yielded handle; stored create-only when the block ends without error."""
        ...

    def reading_archive(self, archive_name: str) -> AbstractContextManager[Path]:
        """A local file with the archive's bytes as stored (fetched from object storage): what verify reads."""
        ...

    def delete_archive(self, archive_name: str) -> None:
        """Remove an archive the database never recorded (one that failed its read-back)."""
        ...
