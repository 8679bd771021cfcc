"""Atomic, checksummed writes of payload files (temporary file, fsync, rename, read-only)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from property_pipeline.store.layout import PayloadName, PayloadRoot, month_of, validate_campaign_id

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredPayload:
    """A payload file that is completely on disk: where, how big, and its SHA-256."""

    path: Path
    relative_path: str
    month: str
    name: PayloadName
    size_bytes: int
    sha256: str


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_payload(
    root: PayloadRoot,
    campaign_id: str,
    batch_number: int,
    body: bytes,
    captured_at: datetime | None = None,
) -> StoredPayload:
    """Write one API page byte for byte, atomically, and return its checksum.

    The bytes go to a hidden temporary file in the month folder, are fsynced, then renamed to
    the final name, so a crash leaves either the whole file or no file under the final name.
    """
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
    temporary = folder / f".{name.file_name}.{os.getpid()}.tmp"
    digest = hashlib.sha256(body).hexdigest()
    try:
        with open(temporary, "xb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, READ_ONLY)
        if final.exists():
            raise FileExistsError(f"{final} already exists; payload files are never overwritten")
        os.rename(temporary, final)
        _fsync_dir(folder)
    except BaseException as error:
        with contextlib.suppress(OSError):  # a full or read-only disk may refuse the clean-up too: keep the cause
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            # Name the payload file (not the hidden temporary) so the message says what could not be written.
            raise OSError(error.errno, f"{error.strerror} while writing payload file", str(final)) from error
        raise
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
    folder = root.month_dir(month)
    if not folder.is_dir():
        return []
    stale = [path for path in folder.glob(f".{validate_campaign_id(campaign_id)}_batch*.tmp") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
