"""Carrying out a retention plan, month by month under its lock: archive, verify, record, then delete."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from property_pipeline.db import status
from property_pipeline.retention.archive import (
    ARCHIVE_PREFIX,
    ArchiveError,
    ManifestEntry,
    verify_stored_archive,
    write_archive,
)
from property_pipeline.retention.months import month_lock, remove_leftovers
from property_pipeline.retention.plan import Failure, RetentionFile, RetentionPlan, plan_months
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.folder import remove_original as _remove_original
from property_pipeline.store.layout import PayloadPathError
from property_pipeline.store.publish import (
    fsync_folder,
)

log = logging.getLogger(__name__)


@dataclass
class MonthResult:
    month: str
    archive_name: str | None = None
    archived: int = 0
    deleted: list[str] = field(default_factory=list)
    healed: list[str] = field(default_factory=list)  # already gone (interrupted run): deletion recorded now
    bytes_deleted: int = 0
    failures: list[Failure] = field(default_factory=list)


@dataclass
class RetentionReport:
    archive: bool
    months: list[MonthResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(m.failures for m in self.months)

    @property
    def deleted(self) -> int:
        return sum(len(m.deleted) + len(m.healed) for m in self.months)

    @property
    def bytes_deleted(self) -> int:
        return sum(m.bytes_deleted for m in self.months)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "deleted": self.deleted, "bytes_deleted": self.bytes_deleted}


def apply_retention(
    engine: Engine,
    store: PayloadStore,
    plan: RetentionPlan,
    *,
    archive: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> RetentionReport:
    """Carry out `plan`, re-checked against the current state: never more than the plan lists; safe to rerun.

    Each month is done under its month lock and planned again once the lock is held, so a second
    cleanup at the same time waits, then finds the work done (and says so: nothing counted twice).
    """
    planned = {payload.file_id for month in plan.months for payload in month.files}
    report = RetentionReport(archive=archive)
    for month in [month_plan.month for month_plan in plan.months if month_plan.files]:
        waiting = None if on_wait is None else partial(on_wait, month)
        with month_lock(engine, month, waiting):
            if store.folder is not None:
                remove_leftovers(store.folder.archive, f"{ARCHIVE_PREFIX}{month}_*")
            for month_plan in plan_months(engine, store, plan.oldest_kept_month, only=month):
                todo = [payload for payload in month_plan.files if payload.file_id in planned]
                if todo:
                    report.months.append(_apply_month(engine, store, month, todo, archive))
    return report


def _apply_month(
    engine: Engine, store: PayloadStore, month: str, todo: list[RetentionFile], archive: bool
) -> MonthResult:
    result = MonthResult(month)
    covered, unarchived = _check_recorded_archives(store, todo, result)
    if not archive:
        for payload in unarchived:
            _delete_unarchived(engine, store, payload, result)
    elif unarchived:
        covered += _archive_or_report(engine, store, month, unarchived, result)
    for payload in covered:
        _delete_archived(engine, store, payload, result)
    if store.folder is not None:
        _tidy_month_folder(store.folder.month_dir(month))
    return result


def _check_recorded_archives(
    store: PayloadStore, todo: list[RetentionFile], result: MonthResult
) -> tuple[list[RetentionFile], list[RetentionFile]]:
    """(files inside an archive that verifies now, files that still need one)."""
    covered: list[RetentionFile] = []
    unarchived = [payload for payload in todo if payload.archive_name is None]
    by_archive: dict[str, list[RetentionFile]] = defaultdict(list)
    for payload in todo:
        if payload.archive_name is not None:
            by_archive[payload.archive_name].append(payload)
    for name, group in by_archive.items():
        try:
            verify_stored_archive(store, name, [_registered(p) for p in group])
            covered += group
        except ArchiveError as error:
            log.warning("%s; files still on disk are archived again", error)
            unarchived += [p for p in group if p.on_disk]
            result.failures += [
                Failure(
                    p.file_path, f"gone from disk and its archive does not verify: {error}; restore it from a backup"
                )
                for p in group
                if not p.on_disk
            ]
    return covered, unarchived


def _archive_or_report(
    engine: Engine, store: PayloadStore, month: str, payloads: list[RetentionFile], result: MonthResult
) -> list[RetentionFile]:
    """Archive, verify and record `payloads`; on failure report it and return no file to delete."""
    try:
        name = _archive_month(engine, store, month, payloads)
    except ArchiveError as error:
        result.failures.append(Failure(None, f"{month}: {error}. Nothing of this month was deleted"))
        return []
    result.archive_name, result.archived = name, len(payloads)
    return [replace(payload, archive_name=name) for payload in payloads]


def _archive_month(engine: Engine, store: PayloadStore, month: str, payloads: list[RetentionFile]) -> str:
    """Write the archive, read it back from the store and verify it, then record it on the rows in one
    transaction; ArchiveError otherwise."""
    name = write_archive(store, month, payloads)
    try:
        verify_stored_archive(store, name, [_registered(p) for p in payloads])
        with engine.begin() as conn:
            marked = status.record_archived(conn, [p.file_id for p in payloads], name)
            if marked != len(payloads):
                raise ArchiveError(f"only {marked} of {len(payloads)} files are still settled; rerun cleanup")
    except BaseException:
        store.delete_archive(name)  # never referenced by the database: removing it loses nothing
        raise
    return name


def _delete_archived(engine: Engine, store: PayloadStore, payload: RetentionFile, result: MonthResult) -> None:
    """Original → gone, then `deleted_at` (the archive verified and is recorded already)."""
    if payload.on_disk:
        if not _deletable(store, payload, result) or not _remove_or_report(store, payload, result):
            return
    status.record_deleted(engine, payload.file_id)
    store.clear_markers(payload.file_path)
    _count_deleted(payload, result)


def _delete_unarchived(engine: Engine, store: PayloadStore, payload: RetentionFile, result: MonthResult) -> None:
    """`deleted_at` first, then the original (no archive to check a missing file against)."""
    if not _deletable(store, payload, result):
        return
    status.record_deleted(engine, payload.file_id)
    if _remove_or_report(store, payload, result):
        store.clear_markers(payload.file_path)
        _count_deleted(payload, result)


def _deletable(store: PayloadStore, payload: RetentionFile, result: MonthResult) -> bool:
    """True for a file at its own place; False (with the failure recorded) when it is reached through a link."""
    try:
        if (root := store.folder) is not None:
            root.check_not_linked(root.resolve(payload.file_path))
        else:
            store.location(payload.file_path)  # the key is checked to be a payload's
    except PayloadPathError as error:
        result.failures.append(Failure(payload.file_path, f"not deleted: {error}; put the file back in its own folder"))
        return False
    return True


def _count_deleted(payload: RetentionFile, result: MonthResult) -> None:
    if payload.on_disk:
        result.deleted.append(payload.file_path)
        result.bytes_deleted += payload.size_bytes
    else:
        result.healed.append(payload.file_path)


def _remove_or_report(store: PayloadStore, payload: RetentionFile, result: MonthResult) -> bool:
    try:
        if (root := store.folder) is not None:
            _remove_original(root.resolve(payload.file_path))  # checked not to be reached through a link
        else:
            store.delete_payload(payload.file_path)
    except FileNotFoundError:
        pass
    except (OSError, PayloadPathError) as error:
        result.failures.append(
            Failure(payload.file_path, f"could not delete: {error}; it stays on disk, fix it and rerun cleanup")
        )
        return False
    return True


def _tidy_month_folder(folder: Path) -> None:
    """Make the deletions durable, and drop the month folder when nothing is left in it."""
    if not folder.is_dir():
        return
    fsync_folder(folder)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: files that stay (skipped, unregistered)


def _registered(payload: RetentionFile) -> ManifestEntry:
    return ManifestEntry.registered(payload.file_id, payload.file_path, payload.size_bytes, payload.checksum_sha256)
