"""Putting a month's archived files back, byte-identical and verified, under the month lock."""

from __future__ import annotations

import logging
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, select

from property_pipeline.db import status
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.retention.archive import ArchiveError, ManifestEntry, stored_archive, verify_archive
from property_pipeline.retention.months import month_lock, remove_leftovers
from property_pipeline.retention.plan import ROW_COLUMNS, Failure, StatusRow
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.layout import PayloadPathError, validate_month
from property_pipeline.store.publish import PublishedBytesDiffer

log = logging.getLogger(__name__)


@dataclass
class RestoreReport:
    month: str
    archives: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def restore_month(
    engine: Engine, store: PayloadStore, month: str, on_wait: Callable[[str], None] | None = None
) -> RestoreReport:
    """Put a month's archived files back on disk, byte-identical, read-only; clear `deleted_at`; mark processed.

    Under the month lock: a cleanup of the same month waits for the restore (and the other way round).
    """
    validate_month(month)
    with month_lock(engine, month, None if on_wait is None else partial(on_wait, month)):
        return _restore_month(engine, store, month)


def _restore_month(engine: Engine, store: PayloadStore, month: str) -> RestoreReport:
    report = RestoreReport(month)
    with engine.connect() as conn:
        rows = conn.execute(
            select(*ROW_COLUMNS)
            .where(files.c.month == month, (files.c.archive_name.is_not(None)) | (files.c.deleted_at.is_not(None)))
            .order_by(files.c.file_id)
        ).all()
    if not rows:
        report.failures.append(Failure(None, f"no file of {month} was archived or deleted: nothing to restore"))
    by_archive: dict[str, list[StatusRow]] = defaultdict(list)
    for row in rows:
        if row.archive_name is None:
            reason = "deleted without an archive (cleanup --no-archive): restore it from a backup"
            report.failures.append(Failure(row.file_path, reason))
        else:
            by_archive[row.archive_name].append(row)
    for name, group in by_archive.items():
        report.archives.append(name)
        _restore_from_archive(store, name, group, report)
    back = set(report.restored) | set(report.already_present)
    done = [row for row in rows if row.file_path in back]
    status.record_restored(engine, [row.file_id for row in done])
    for row in done:
        store.follow(row.file_path, row.status, file_id=row.file_id, restored_from=row.archive_name)
    return report


def _restore_from_archive(store: PayloadStore, name: str, rows: list[StatusRow], report: RestoreReport) -> None:
    needed: dict[str, StatusRow] = {}
    for row in rows:
        try:
            if (root := store.folder) is not None:
                target = root.resolve(row.file_path)
                root.check_not_linked(target)
                remove_leftovers(target.parent, target.name)  # left by a restore that was killed
            present = store.hash_payload(row.file_path)
        except PayloadPathError as error:
            report.failures.append(
                Failure(row.file_path, f"not restored: {error}; remove the link, then rerun restore")
            )
            continue
        if present is None:
            needed[row.file_path] = row
        elif present[0] == row.checksum_sha256:
            report.already_present.append(row.file_path)
        else:
            where = store.location(row.file_path)
            reason = f"{where} exists and differs from the archived bytes; move it aside, then rerun restore"
            report.failures.append(Failure(row.file_path, reason))
    if not needed:
        return
    try:
        with stored_archive(store, name) as path:
            verify_archive(path, [_registered_row(row) for row in needed.values()])
            _extract(store, path, needed, report)
    except ArchiveError as error:
        report.failures += [Failure(p, f"not restored: {error}") for p in needed if p not in report.restored]


def _extract(store: PayloadStore, path: Path, needed: dict[str, StatusRow], report: RestoreReport) -> None:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                row = needed.get(member.name)
                stream = tar.extractfile(member) if row is not None else None
                if row is None or stream is None:
                    continue
                try:
                    _publish(store, stream, row)
                    report.restored.append(row.file_path)
                except (OSError, ArchiveError) as error:
                    report.failures.append(Failure(row.file_path, f"not restored: {error}"))
    except (OSError, EOFError, zlib.error, tarfile.TarError) as error:
        raise ArchiveError(f"archive {path.name} cannot be read ({type(error).__name__}: {error})") from error


def _publish(store: PayloadStore, stream: IO[bytes], row: StatusRow) -> None:
    """Write a restored file create-only, checked against its SHA-256 first; never overwrite."""
    try:
        store.put_payload(row.file_path, stream, row.file_size_bytes, row.checksum_sha256)  # type: ignore[arg-type]
    except PublishedBytesDiffer as error:
        raise ArchiveError(f"{error}, the SHA-256 the database holds") from None
    except FileExistsError:
        raise FileExistsError(f"{store.location(row.file_path)} appeared while restoring; left as it is") from None


def _registered_row(row: StatusRow) -> ManifestEntry:
    return ManifestEntry.registered(row.file_id, row.file_path, row.file_size_bytes, row.checksum_sha256)
