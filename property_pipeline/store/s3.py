"""The S3-compatible payload store: `s3://bucket/prefix`, with the folder's key layout under the prefix
(`property_payloads/YYYY-MM/<name>.json`, `archive/<archive name>`), through boto3.

- Create-only: every payload and archive is one PUT with `If-None-Match: *`; an existing key is never
  overwritten. A conflict whose bytes are ours (a retried PUT whose first attempt landed) is the same
  write; other bytes are PayloadExists.
- Integrity: the SHA-256 taken while capturing is sent as `x-amz-checksum-sha256`, so a server that
  checks it refuses a corrupted upload; readers re-check the bytes against the registered SHA-256.
- Bounded memory: a payload is read only after HEAD said its size is within the bound, with `If-Match`
  on the ETag HEAD saw (replaced in between: refused), and never more than the bound is read.
- No markers: the database is the only record of file states; nothing is written beside the payloads.

Endpoint, region and credentials come from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, roles). Server
errors (500, 503), throttling and lost connections are retried by botocore's standard retry mode.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from property_pipeline.errors import ConfigurationError
from property_pipeline.store.backend import (
    PayloadExists,
    PayloadMissing,
    PayloadStoreUnavailable,
    PayloadTooLarge,
    StoredObject,
)
from property_pipeline.store.layout import (
    ARCHIVE_DIR,
    MONTH_RE,
    PAYLOADS_DIR,
    PayloadName,
    PayloadPathError,
    month_of,
    parse_payload_name,
    validate_campaign_id,
    validate_month,
)
from property_pipeline.store.publish import HASH_CHUNK, PublishedBytesDiffer
from property_pipeline.store.writer import StoredPayload

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from property_pipeline.store.folder import PayloadRoot

MAX_ATTEMPTS = 5  # botocore standard mode: 500, 502, 503, 504, throttling and lost connections
LIST_PAGE_SIZE = 1000
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
CONFLICT = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def checksum_header(sha256_hex: str) -> str:
    """The `x-amz-checksum-sha256` value of a hex SHA-256: the digest's bytes in base64."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def s3_client(*, max_attempts: int = MAX_ATTEMPTS) -> S3Client:
    """A client configured from the standard AWS environment (AWS_ENDPOINT_URL for S3-compatible servers)."""
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        # Path-style URLs work with every S3-compatible server; AWS accepts them too.
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", config=config)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> str:
    return str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Store:
    """Payloads and archives in one bucket under one prefix; see the module docstring for the guarantees."""

    def __init__(
        self, bucket: str, prefix: str = "", *, client: S3Client | None = None, list_page_size: int = LIST_PAGE_SIZE
    ) -> None:
        if not bucket:
            raise ConfigurationError("an s3:// payload store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or s3_client()
        self.list_page_size = list_page_size

    def __reduce__(self) -> tuple[type[S3Store], tuple[str, str]]:
        """Sent to worker processes as bucket and prefix: each builds its own client (clients are not picklable)."""
        return (type(self), (self.bucket, self.prefix))

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """`s3://bucket` or `s3://bucket/prefix`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigurationError(f"{url!r} is not of the form s3://bucket/prefix")
        return cls(parts.netloc, parts.path)

    # Keys.

    @property
    def payloads_prefix(self) -> str:
        return f"{self.prefix}{PAYLOADS_DIR}/"

    def key(self, relative_path: str) -> str:
        """The key of `YYYY-MM/<payload name>`; anything else is refused (no key outside the layout)."""
        month, _, name = relative_path.partition("/")
        validate_month(month)
        parse_payload_name(name)
        return f"{self.payloads_prefix}{relative_path}"

    def archive_key(self, archive_name: str) -> str:
        if "/" in archive_name or archive_name.startswith("."):
            raise PayloadPathError(f"archive name {archive_name!r} is not allowed")
        return f"{self.prefix}{ARCHIVE_DIR}/{archive_name}"

    # The payload store interface (store/backend.py).

    @property
    def folder(self) -> PayloadRoot | None:
        return None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.payloads_prefix}"

    def location(self, relative_path: str) -> str:
        return f"s3://{self.bucket}/{self.key(relative_path)}"

    def write_payload(
        self, campaign_id: str, batch_number: int, body: bytes, captured_at: datetime | None = None
    ) -> StoredPayload:
        validate_campaign_id(campaign_id)
        if batch_number < 1:
            raise ValueError(f"batch number must be at least 1, not {batch_number}")
        captured_at = (captured_at or datetime.now(UTC)).astimezone(UTC)
        name = PayloadName(campaign_id, batch_number, captured_at)
        month = month_of(captured_at)
        relative_path = f"{month}/{name.file_name}"
        digest = hashlib.sha256(body).hexdigest()
        self._put_create_only(self.key(relative_path), body, digest)
        return StoredPayload(
            path=Path(relative_path),
            relative_path=relative_path,
            month=month,
            name=name,
            size_bytes=len(body),
            sha256=digest,
        )

    def put_payload(self, relative_path: str, stream: BinaryIO, size: int, sha256: str) -> None:
        body = stream.read(size + 1)
        actual = hashlib.sha256(body).hexdigest()
        if len(body) != size or actual != sha256:
            raise PublishedBytesDiffer(
                f"the bytes written for {relative_path} hash to {actual[:12]}…, not {sha256[:12]}…"
            )
        self._put_create_only(self.key(relative_path), body, sha256)

    def payload_size(self, relative_path: str) -> int | None:
        head = self._head(self.key(relative_path))
        return None if head is None else int(head["ContentLength"])

    @contextmanager
    def open_payload(self, relative_path: str, max_bytes: int) -> Iterator[BinaryIO]:
        key = self.key(relative_path)
        head = self._head(key)
        if head is None:
            raise PayloadMissing(f"payload file {relative_path} is missing from {self.describe()}")
        size = int(head["ContentLength"])
        if size > max_bytes:
            raise PayloadTooLarge(relative_path, size, max_bytes)
        try:
            # If-Match: the object HEAD measured, not one that replaced it since.
            response = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=head["ETag"])
            body = response["Body"].read(max_bytes + 1)
            response["Body"].close()
        except ClientError as error:
            if _code(error) in NOT_FOUND or _status(error) == "412":
                raise PayloadMissing(
                    f"payload file {relative_path} was deleted or replaced while it was read ({_code(error)})"
                ) from None
            raise self._unavailable("read", key, error) from error
        except BotoCoreError as error:
            raise self._unavailable("read", key, error) from error
        if len(body) > max_bytes:
            raise PayloadTooLarge(relative_path, len(body), max_bytes)
        yield io.BytesIO(body)

    def hash_payload(self, relative_path: str) -> tuple[str, int] | None:
        key = self.key(relative_path)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            digest, size = hashlib.sha256(), 0
            for chunk in response["Body"].iter_chunks(HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        except ClientError as error:
            if _code(error) in NOT_FOUND:
                return None
            raise self._unavailable("read", key, error) from error
        except BotoCoreError as error:
            raise self._unavailable("read", key, error) from error
        return digest.hexdigest(), size

    def list_months(self) -> list[str]:
        months = []
        for page in self._pages(self.payloads_prefix):
            for common in page.get("CommonPrefixes", []):
                month = common.get("Prefix", "")[len(self.payloads_prefix) :].rstrip("/")
                if MONTH_RE.fullmatch(month):
                    months.append(month)
        return sorted(months)

    def list_payloads(self, month: str) -> Iterator[StoredObject]:
        prefix = f"{self.payloads_prefix}{validate_month(month)}/"
        for page in self._pages(prefix):
            for item in page.get("Contents", []):
                name = item.get("Key", "")[len(prefix) :]
                if name.startswith(".") or not name.endswith(".json"):
                    continue
                yield StoredObject(f"{month}/{name}", int(item.get("Size", 0)), item["LastModified"].astimezone(UTC))

    def delete_payload(self, relative_path: str) -> None:
        self._delete(self.key(relative_path))

    def follow(self, relative_path: str, status: str, **summary: object) -> None:
        """Nothing: on object storage the database is the only record of file states."""

    def clear_markers(self, relative_path: str) -> None:
        """Nothing: there are no markers on object storage."""

    def archive_location(self, archive_name: str) -> str:
        return f"s3://{self.bucket}/{self.archive_key(archive_name)}"

    @contextmanager
    def writing_archive(self, archive_name: str) -> Iterator[BinaryIO]:
        """The archive is written to a local temporary file (hashed), then PUT create-only with its SHA-256."""
        key = self.archive_key(archive_name)
        with tempfile.TemporaryFile(prefix=".archive-") as handle:
            yield handle
            handle.flush()
            handle.seek(0)
            digest = hashlib.sha256()
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
            handle.seek(0)
            self._put_create_only(key, handle, digest.hexdigest())

    @contextmanager
    def reading_archive(self, archive_name: str) -> Iterator[Path]:
        """The archive downloaded as stored into a local temporary file, removed afterwards."""
        key = self.archive_key(archive_name)
        with tempfile.TemporaryDirectory(prefix="property-pipeline-archive-") as scratch:
            target = Path(scratch) / archive_name
            try:
                self.client.download_file(self.bucket, key, str(target))
            except ClientError as error:
                if _code(error) in NOT_FOUND:
                    raise PayloadMissing(
                        f"archive {self.archive_location(archive_name)} is not in the bucket"
                    ) from None
                raise self._unavailable("read", key, error) from error
            except BotoCoreError as error:
                raise self._unavailable("read", key, error) from error
            yield target

    def delete_archive(self, archive_name: str) -> None:
        self._delete(self.archive_key(archive_name))

    # Requests.

    def _put_create_only(self, key: str, body: bytes | BinaryIO, sha256: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", ChecksumSHA256=checksum_header(sha256)
            )
        except ClientError as error:
            if _code(error) in CONFLICT or _status(error) in {"412", "409"}:
                if self._holds(key, sha256):
                    return  # our own earlier attempt landed (its response was lost): the same write
                raise PayloadExists(
                    f"s3://{self.bucket}/{key} already exists with other bytes; objects are never overwritten"
                ) from None
            raise self._unavailable("write", key, error) from error
        except BotoCoreError as error:
            raise self._unavailable("write", key, error) from error

    def _holds(self, key: str, sha256: str) -> bool:
        """True when the object at `key` has exactly the bytes hashing to `sha256`."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(HASH_CHUNK):
                digest.update(chunk)
        except ClientError as error:
            if _code(error) in NOT_FOUND:
                return False
            raise self._unavailable("read", key, error) from error
        return digest.hexdigest() == sha256

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as error:
            if _code(error) in NOT_FOUND or _status(error) == "404":
                return None
            raise self._unavailable("read", key, error) from error
        except BotoCoreError as error:
            raise self._unavailable("read", key, error) from error

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) not in NOT_FOUND:
                raise self._unavailable("delete", key, error) from error
        except BotoCoreError as error:
            raise self._unavailable("delete", key, error) from error

    def _pages(self, prefix: str) -> Iterator[Any]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                Delimiter="/",
                PaginationConfig={"PageSize": self.list_page_size},
            )
        except ClientError as error:
            raise self._unavailable("list", prefix, error) from error
        except BotoCoreError as error:
            raise self._unavailable("list", prefix, error) from error

    def _unavailable(self, action: str, key: str, error: Exception) -> PayloadStoreUnavailable:
        return PayloadStoreUnavailable(
            f"could not {action} s3://{self.bucket}/{key} (retried): {error}; "
            "check the bucket, AWS_ENDPOINT_URL and the credentials, then rerun"
        )
