"""Which files retention removes: the settled files (COMPLETED or DISCARDED) of months older than the kept window,
and why others stay."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, Row, select

from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.registration import month_folders, payload_candidates
from property_pipeline.states import SETTLED, FileStatus
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.layout import PayloadPathError

NOT_COMPLETED_REASONS = {
    FileStatus.PENDING: "PENDING: not loaded yet; retention deletes only settled files "
    "(run `property-pipeline process`)",
    FileStatus.PROCESSING: "PROCESSING: being loaded right now; retention deletes only settled files",
    FileStatus.FAILED: "FAILED: retention deletes only settled files; fix the cause, then `property-pipeline retry`",
}
UNREGISTERED_REASON = "not registered: retention never deletes files the database does not know (run `register`)"
MISSING_REASON = (
    "COMPLETED but missing from disk and in no archive: nothing to delete; "
    "`property-pipeline verify` reports it, restore it from a backup"
)


@dataclass(frozen=True)
class RetentionFile:
    """A settled file (COMPLETED or DISCARDED) of an old month that retention removes from disk."""

    file_id: int
    file_path: str
    size_bytes: int
    checksum_sha256: str
    on_disk: bool
    archive_name: str | None = None  # already inside this archive (an earlier run, or restored since)
    deleted: bool = False  # `deleted_at` already set: an interrupted --no-archive run left it on disk


@dataclass(frozen=True)
class SkippedFile:
    """A file of an old month that retention leaves alone, and why."""

    file_path: str
    reason: str
    file_id: int | None = None


@dataclass
class MonthPlan:
    month: str
    files: list[RetentionFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes on disk that the plan frees."""
        return sum(f.size_bytes for f in self.files if f.on_disk)


@dataclass
class RetentionPlan:
    """What a cleanup would do: per old month, the files to remove and the files skipped."""

    keep_months: int
    oldest_kept_month: str
    months: list[MonthPlan]

    @property
    def files(self) -> int:
        return sum(len(m.files) for m in self.months)

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.months)

    @property
    def skipped(self) -> int:
        return sum(len(m.skipped) for m in self.months)

    def to_dict(self) -> dict[str, Any]:
        months = [{**asdict(m), "bytes": m.bytes} for m in self.months]
        return {**asdict(self), "months": months, "files": self.files, "bytes": self.bytes, "skipped": self.skipped}


# A row of `batch_file_status` with the ROW_COLUMNS below.
StatusRow = Row[*tuple[Any, ...]]
ROW_COLUMNS = (
    files.c.file_id,
    files.c.file_path,
    files.c.month,
    files.c.status,
    files.c.checksum_sha256,
    files.c.file_size_bytes,
    files.c.archive_name,
    files.c.deleted_at,
)


def oldest_kept_month(today: date, keep_months: int) -> str:
    """The oldest month retention keeps: keep_months=2 on 2026-12-05 keeps 2026-11 and 2026-12."""
    if keep_months < 1:
        raise ValueError(f"keep_months must be at least 1 (the current month), not {keep_months}")
    index = today.year * 12 + today.month - 1 - (keep_months - 1)
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def plan_retention(
    engine: Engine, store: PayloadStore, *, keep_months: int, today: date | None = None
) -> RetentionPlan:
    """Which files of the months older than the kept window would be removed, and which are skipped and why."""
    oldest = oldest_kept_month(today or datetime.now(UTC).date(), keep_months)
    return RetentionPlan(keep_months, oldest, plan_months(engine, store, oldest))


def plan_months(engine: Engine, store: PayloadStore, oldest_kept: str, only: str | None = None) -> list[MonthPlan]:
    query = select(*ROW_COLUMNS).where(files.c.month < oldest_kept).order_by(files.c.file_id)
    if only is not None:
        query = query.where(files.c.month == only)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    months: dict[str, MonthPlan] = {}
    listed = _listed(store, oldest_kept, only)
    for row in rows:
        entry = _classify(store, listed, row)
        if isinstance(entry, RetentionFile):
            months.setdefault(row.month, MonthPlan(row.month)).files.append(entry)
        elif entry is not None:
            months.setdefault(row.month, MonthPlan(row.month)).skipped.append(entry)
    known = {row.file_path for row in rows}
    for month, paths in (listed if listed is not None else _folder_listing(store, oldest_kept, only)).items():
        for path in sorted(paths - known):
            months.setdefault(month, MonthPlan(month)).skipped.append(SkippedFile(path, UNREGISTERED_REASON))
    return [months[month] for month in sorted(months)]


def _listed(store: PayloadStore, oldest_kept: str, only: str | None) -> dict[str, set[str]] | None:
    """On object storage, the payloads of the months in scope, one listing each (no request per file);
    None for a folder, where each file is looked at in place."""
    if store.folder is not None:
        return None
    return {
        month: {found.relative_path for found in store.list_payloads(month)}
        for month in store.list_months()
        if month < oldest_kept and (only is None or month == only)
    }


def _folder_listing(store: PayloadStore, oldest_kept: str, only: str | None) -> dict[str, set[str]]:
    root = store.folder
    if root is None:
        return {}
    return {
        folder.name: {f"{folder.name}/{candidate.name}" for candidate in payload_candidates(folder)}
        for folder in month_folders(root)
        if folder.name < oldest_kept and (only is None or folder.name == only)
    }


def _classify(
    store: PayloadStore, listed: dict[str, set[str]] | None, row: StatusRow
) -> RetentionFile | SkippedFile | None:
    """A file to remove, a file to skip (with the reason), or None when retention is done with it."""
    if row.status not in SETTLED:
        return SkippedFile(row.file_path, NOT_COMPLETED_REASONS.get(row.status, row.status), row.file_id)
    try:
        if listed is None:
            on_disk = store.payload_size(row.file_path) is not None
        else:
            store.location(row.file_path)  # the key is checked to be a payload's
            on_disk = row.file_path in listed.get(row.month, set())
    except PayloadPathError as error:
        return SkippedFile(row.file_path, f"unsafe path, left alone: {error}", row.file_id)
    if not on_disk and row.deleted_at is not None:
        return None
    if not on_disk and row.archive_name is None:
        return SkippedFile(row.file_path, MISSING_REASON, row.file_id)
    return RetentionFile(
        row.file_id,
        row.file_path,
        row.file_size_bytes,
        row.checksum_sha256,
        on_disk,
        row.archive_name,
        row.deleted_at is not None,
    )


@dataclass(frozen=True)
class Failure:
    file_path: str | None  # None: the whole month
    reason: str
