"""The local-folder payload store (the default): the data root `PROPERTY_PIPELINE_LOGS_DIR` with
`property_payloads/YYYY-MM/`, the marker folders and `archive/`; every path is checked to stay inside it."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from property_pipeline.store import markers
from property_pipeline.store.backend import PayloadMissing, PayloadTooLarge, StoredObject
from property_pipeline.store.layout import (
    ARCHIVE_DIR,
    MONTH_RE,
    PAYLOADS_DIR,
    PENDING_DIR,
    PROCESSED_DIR,
    PROCESSING_DIR,
    PayloadPathError,
    parse_payload_name,
    validate_month,
)
from property_pipeline.store.publish import publishing, sha256_file
from property_pipeline.store.writer import StoredPayload, write_payload

OWNER_WRITABLE = stat.S_IRUSR | stat.S_IWUSR


def remove_original(path: Path) -> None:
    """Delete one original payload (read-only 0444: made writable first, for filesystems that care)."""
    os.chmod(path, OWNER_WRITABLE)
    os.unlink(path)


class PayloadRoot:
    """The data root (`PROPERTY_PIPELINE_LOGS_DIR`) and its sub-folders; refuses paths that leave it.

    The local-folder backend of the payload store (store/backend.py): files are published crash-safely and
    read-only (store/publish.py), their states mirrored as markers (store/markers.py).
    """

    def __init__(self, logs_dir: Path | str) -> None:
        self.logs_dir = Path(logs_dir).absolute()
        self.payloads = self.logs_dir / PAYLOADS_DIR
        self.pending = self.logs_dir / PENDING_DIR
        self.processing = self.logs_dir / PROCESSING_DIR
        self.processed = self.logs_dir / PROCESSED_DIR
        self.archive = self.logs_dir / ARCHIVE_DIR

    def ensure_folders(self) -> None:
        """Create the data root's folders (idempotent)."""
        for folder in (self.payloads, self.pending, self.processing, self.processed, self.archive):
            folder.mkdir(parents=True, exist_ok=True)

    def month_dir(self, month: str) -> Path:
        return self.payloads / validate_month(month)

    def relative_path(self, month: str, file_name: str) -> str:
        """The `file_path` stored in the database: `YYYY-MM/name.json`, relative to the payload folder."""
        validate_month(month)
        parse_payload_name(file_name)
        return f"{month}/{file_name}"

    def resolve(self, relative_path: str) -> Path:
        """The absolute path of a registered file; refuses anything that is not `YYYY-MM/<payload name>`.

        Symlinks are resolved and must stay inside the payload folder.
        """
        parts = relative_path.split("/")
        if len(parts) != 2:
            raise PayloadPathError(f"payload path {relative_path!r} is not of the form YYYY-MM/<name>.json")
        month, name = parts
        validate_month(month)
        parse_payload_name(name)
        path = self.payloads / month / name
        self.check_inside(path)
        return path

    def check_not_linked(self, path: Path) -> None:
        """Raise PayloadPathError when the file or its month folder is a symbolic link.

        A payload is deleted or written back only at its own place: through a link, `2026-08/x.json`
        could be another month's file.
        """
        for part in (path.parent, path):
            if part.is_symlink():
                raise PayloadPathError(
                    f"{part} is a symbolic link (to {os.readlink(part)}); payloads are never "
                    "deleted or written through a link"
                )

    def check_inside(self, path: Path) -> None:
        """Raise PayloadPathError when `path` (after resolving symlinks) lies outside the data root."""
        real_root = self.logs_dir.resolve()
        real = path.resolve()
        if real != real_root and real_root not in real.parents:
            raise PayloadPathError(f"{path} resolves to {real}, outside the data root {real_root}")

    # The payload store interface (store/backend.py).

    @property
    def folder(self) -> PayloadRoot:
        return self

    def describe(self) -> str:
        return str(self.payloads)

    def location(self, relative_path: str) -> str:
        return str(self.payloads / relative_path)

    def write_payload(
        self, campaign_id: str, batch_number: int, body: bytes, captured_at: datetime | None = None
    ) -> StoredPayload:
        return write_payload(self, campaign_id, batch_number, body, captured_at)

    def put_payload(self, relative_path: str, stream: BinaryIO, size: int, sha256: str) -> None:
        target = self.resolve(relative_path)
        self.check_not_linked(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with publishing(target, expected_sha256=sha256) as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)

    def payload_size(self, relative_path: str) -> int | None:
        path = self.resolve(relative_path)
        return path.stat().st_size if path.is_file() else None

    @contextmanager
    def open_payload(self, relative_path: str, max_bytes: int) -> Iterator[BinaryIO]:
        path = self.resolve(relative_path)
        if not path.is_file():
            raise PayloadMissing(f"payload file {relative_path} is missing from {self.payloads}")
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise PayloadTooLarge(relative_path, size, max_bytes)
            yield handle

    def hash_payload(self, relative_path: str) -> tuple[str, int] | None:
        path = self.resolve(relative_path)
        return sha256_file(path) if path.is_file() else None

    def list_months(self) -> list[str]:
        if not self.payloads.is_dir():
            return []
        return sorted(
            entry.name for entry in self.payloads.iterdir() if MONTH_RE.fullmatch(entry.name) and entry.is_dir()
        )

    def list_payloads(self, month: str) -> Iterator[StoredObject]:
        folder = self.month_dir(month)
        if not folder.is_dir():
            return
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue
                try:
                    facts = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while listing
                    continue
                modified = datetime.fromtimestamp(facts.st_mtime, UTC)
                yield StoredObject(f"{month}/{entry.name}", facts.st_size, modified)

    def delete_payload(self, relative_path: str) -> None:
        path = self.resolve(relative_path)
        self.check_not_linked(path)
        with contextlib.suppress(FileNotFoundError):
            remove_original(path)

    def follow(self, relative_path: str, status: str, **summary: object) -> None:
        markers.follow(self, relative_path, status, **summary)

    def clear_markers(self, relative_path: str) -> None:
        markers.clear_markers(self, relative_path)

    def archive_location(self, archive_name: str) -> str:
        return str(self.archive / archive_name)

    @contextmanager
    def writing_archive(self, archive_name: str) -> Iterator[BinaryIO]:
        self.archive.mkdir(parents=True, exist_ok=True)
        with publishing(self.archive / archive_name) as handle:
            yield handle

    @contextmanager
    def reading_archive(self, archive_name: str) -> Iterator[Path]:
        yield self.archive / archive_name

    def delete_archive(self, archive_name: str) -> None:
        path = self.archive / archive_name
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, OWNER_WRITABLE)
            path.unlink()
