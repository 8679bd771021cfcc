"""Retention: archive old months' COMPLETED payload files, verify the archive, then delete the originals.

Policy: the current month and the `keep_months - 1` months before it stay on disk. In older
months only COMPLETED files are removed; PENDING, PROCESSING and FAILED files, and files the
database does not know, are reported and never touched.

Crash safety with archiving on: archive written (temporary file, fsync, rename, fsync folder)
and read back → `archived_at` + `archive_name` committed → original unlinked → `deleted_at`
committed. At every moment a file is on disk or inside a verified archive the database names;
a file that is gone but has no `deleted_at` yet gets it on the next run, once its archive verifies.
With archiving off there is nothing to check a missing file against, so `deleted_at` is
committed first and the file unlinked after: an interrupted run leaves files that the next run
removes, never a missing file the database still expects.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Engine, Row, select

from property_pipeline.db import locks, status
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import utcnow
from property_pipeline.errors import PipelineError
from property_pipeline.registration import month_folders, payload_candidates
from property_pipeline.states import FileStatus
from property_pipeline.store import markers
from property_pipeline.store.layout import PayloadPathError, PayloadRoot, format_timestamp, validate_month
from property_pipeline.store.publish import (
    HASH_CHUNK,
    PublishedBytesDiffer,
    fsync_folder,
    publishing,
    remove_stale_temporaries,
    sha256_file,
)

log = logging.getLogger(__name__)

ARCHIVE_PREFIX = "property_payloads_"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "property_pipeline.archive/1"
ARCHIVE_NAME_RE = re.compile(r"property_payloads_\d{4}-\d{2}_\d{8}T\d{12}Z\.tar\.gz")
OWNER_WRITABLE = stat.S_IRUSR | stat.S_IWUSR
NOT_COMPLETED_REASONS = {
    FileStatus.PENDING: "PENDING: not loaded yet; retention deletes only COMPLETED files "
    "(run `property-pipeline process`)",
    FileStatus.PROCESSING: "PROCESSING: being loaded right now; retention deletes only COMPLETED files",
    FileStatus.FAILED: "FAILED: retention deletes only COMPLETED files; fix the cause, then `property-pipeline retry`",
}
UNREGISTERED_REASON = "not registered: retention never deletes files the database does not know (run `register`)"
MISSING_REASON = (
    "COMPLETED but missing from disk and in no archive: nothing to delete; "
    "`property-pipeline verify` reports it, restore it from a backup"
)


class ArchiveError(PipelineError):
    """An archive could not be written or read, or does not match its manifest and the database."""


# ── plan ────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RetentionFile:
    """A COMPLETED file of an old month that retention removes from disk."""

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


_ROW_COLUMNS = (
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


def plan_retention(engine: Engine, root: PayloadRoot, *, keep_months: int, today: date | None = None) -> RetentionPlan:
    """Which files of the months older than the kept window would be removed, and which are skipped and why."""
    oldest = oldest_kept_month(today or datetime.now(UTC).date(), keep_months)
    return RetentionPlan(keep_months, oldest, _plan_months(engine, root, oldest))


def _plan_months(engine: Engine, root: PayloadRoot, oldest_kept: str, only: str | None = None) -> list[MonthPlan]:
    query = select(*_ROW_COLUMNS).where(files.c.month < oldest_kept).order_by(files.c.file_id)
    if only is not None:
        query = query.where(files.c.month == only)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    months: dict[str, MonthPlan] = {}
    for row in rows:
        entry = _classify(root, row)
        if isinstance(entry, RetentionFile):
            months.setdefault(row.month, MonthPlan(row.month)).files.append(entry)
        elif entry is not None:
            months.setdefault(row.month, MonthPlan(row.month)).skipped.append(entry)
    known = {row.file_path for row in rows}
    for folder in month_folders(root):
        if folder.name >= oldest_kept or (only is not None and folder.name != only):
            continue
        for entry in payload_candidates(folder):
            path = f"{folder.name}/{entry.name}"
            if path not in known:
                months.setdefault(folder.name, MonthPlan(folder.name)).skipped.append(
                    SkippedFile(path, UNREGISTERED_REASON)
                )
    return [months[month] for month in sorted(months)]


def _classify(root: PayloadRoot, row: Row[Any]) -> RetentionFile | SkippedFile | None:
    """A file to remove, a file to skip (with the reason), or None when retention is done with it."""
    if row.status != FileStatus.COMPLETED:
        return SkippedFile(row.file_path, NOT_COMPLETED_REASONS.get(row.status, row.status), row.file_id)
    try:
        on_disk = root.resolve(row.file_path).is_file()
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


# ── archive format ──────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ManifestEntry:
    """One payload file inside an archive: its registered identity and the bytes archived."""

    file_id: int
    path: str  # YYYY-MM/<name>.json, the member name and the database's file_path
    name: str
    size: int
    sha256: str

    @classmethod
    def registered(cls, file_id: int, file_path: str, size: int, sha256: str) -> ManifestEntry:
        return cls(file_id, file_path, file_path.rsplit("/", 1)[-1], size, sha256)


class _HashingReader:
    """Hands a file's bytes to tarfile and hashes them on the way, so each original is read once."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.digest.update(chunk)
        return chunk


def archive_name_for(month: str, moment: datetime) -> str:
    return f"{ARCHIVE_PREFIX}{validate_month(month)}_{format_timestamp(moment)}.tar.gz"


def archive_path(root: PayloadRoot, archive_name: str) -> Path:
    """The path of a recorded archive; refuses names retention does not write (no path tricks from the database)."""
    if not ARCHIVE_NAME_RE.fullmatch(archive_name):
        raise ArchiveError(f"archive name {archive_name!r} is not one retention writes; it was not read")
    return root.archive / archive_name


def write_archive(root: PayloadRoot, month: str, payloads: Sequence[RetentionFile]) -> Path:
    """Write one tar.gz of `payloads` plus manifest.json under logs/archive/ atomically; return its path."""
    root.archive.mkdir(parents=True, exist_ok=True)
    final = root.archive / archive_name_for(month, utcnow())
    try:
        with publishing(final) as handle:
            _write_tar(handle, root, month, payloads)
    except OSError as error:
        raise ArchiveError(f"could not write archive {final}: {error}") from error
    return final


def _write_tar(handle: BinaryIO, root: PayloadRoot, month: str, payloads: Sequence[RetentionFile]) -> None:
    with tarfile.open(fileobj=handle, mode="w:gz", compresslevel=6) as tar:
        entries = [asdict(_add_payload(tar, root, payload)) for payload in payloads]
        manifest = {"format": MANIFEST_FORMAT, "month": month, "created_at": utcnow().isoformat(), "files": entries}
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode, info.mtime = len(body), 0o444, int(utcnow().timestamp())
        tar.addfile(info, io.BytesIO(body))


def _add_payload(tar: tarfile.TarFile, root: PayloadRoot, payload: RetentionFile) -> ManifestEntry:
    path = root.resolve(payload.file_path)
    with open(path, "rb") as source:
        facts = os.fstat(source.fileno())
        info = tarfile.TarInfo(payload.file_path)
        info.size, info.mode, info.mtime = facts.st_size, 0o444, int(facts.st_mtime)
        reader = _HashingReader(source)
        tar.addfile(info, reader)  # type: ignore[arg-type]
    entry = ManifestEntry.registered(payload.file_id, payload.file_path, info.size, reader.digest.hexdigest())
    if (entry.sha256, entry.size) != (payload.checksum_sha256, payload.size_bytes):
        raise ArchiveError(
            f"{payload.file_path} (file {payload.file_id}) no longer matches its registered SHA-256 "
            f"{payload.checksum_sha256[:12]}… ({payload.size_bytes} bytes): now {entry.sha256[:12]}… "
            f"({entry.size} bytes). Run `property-pipeline verify` and put the original bytes back before cleanup"
        )
    return entry


def verify_archive(path: Path, expected: Sequence[ManifestEntry]) -> list[ManifestEntry]:
    """Read the whole archive back: members match the manifest, and the manifest matches `expected` (the database)."""
    try:
        members, manifest = _read_archive(path)
    except (OSError, EOFError, zlib.error, tarfile.TarError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ArchiveError(f"archive {path.name} cannot be read back ({type(error).__name__}: {error})") from error
    problems = _manifest_problems(members, manifest) + _database_problems(manifest, expected)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArchiveError(f"archive {path.name} does not verify: {shown}")
    return manifest


def _read_archive(path: Path) -> tuple[dict[str, tuple[str, int]], list[ManifestEntry]]:
    """({member: (sha256, size)}, manifest entries) from a full read of the archive."""
    members: dict[str, tuple[str, int]] = {}
    manifest: bytes | None = None
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            stream = tar.extractfile(member) if member.isfile() else None
            if stream is None or member.name in members or (member.name == MANIFEST_NAME and manifest is not None):
                raise ValueError(f"member {member.name!r} is not a single regular file")
            if member.name == MANIFEST_NAME:
                manifest = stream.read()
            else:
                members[member.name] = _hash_stream(stream)
    if manifest is None:
        raise ValueError(f"no {MANIFEST_NAME} inside")
    document = json.loads(manifest)
    if document.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"manifest format {document.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return members, [ManifestEntry(**item) for item in document["files"]]


def _hash_stream(stream: BinaryIO) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _manifest_problems(members: dict[str, tuple[str, int]], manifest: list[ManifestEntry]) -> list[str]:
    listed = {entry.path for entry in manifest}
    problems = [f"{name} is in the archive but not in its manifest" for name in sorted(set(members) - listed)]
    for entry in manifest:
        actual = members.get(entry.path)
        if actual is None:
            problems.append(f"{entry.path} is in the manifest but not in the archive")
        elif actual != (entry.sha256, entry.size):
            problems.append(
                f"{entry.path}: archived bytes ({actual[0][:12]}…, {actual[1]} bytes) differ from the manifest "
                f"({entry.sha256[:12]}…, {entry.size} bytes)"
            )
    return problems


def _database_problems(manifest: list[ManifestEntry], expected: Sequence[ManifestEntry]) -> list[str]:
    listed = {entry.path: entry for entry in manifest}
    problems = []
    for want in expected:
        got = listed.get(want.path)
        if got is None:
            problems.append(f"{want.path} (file {want.file_id}) is not in the archive")
        elif got != want:
            problems.append(
                f"{want.path}: the manifest says file {got.file_id}, {got.sha256[:12]}…, {got.size} bytes; "
                f"the database says file {want.file_id}, {want.sha256[:12]}…, {want.size} bytes"
            )
    return problems


# ── apply ───────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Failure:
    file_path: str | None  # None: the whole month
    reason: str


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


def month_lock(engine: Engine, month: str, on_wait: Callable[[], None] | None = None) -> ContextManager[None]:
    """One command at a time changes a month's files on disk (cleanup, restore), on every node."""
    return locks.exclusive(engine, f"payload-month:{month}", on_wait=on_wait)


def apply_retention(
    engine: Engine,
    root: PayloadRoot,
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
            _remove_leftovers(root.archive, f"{ARCHIVE_PREFIX}{month}_*")
            for month_plan in _plan_months(engine, root, plan.oldest_kept_month, only=month):
                todo = [payload for payload in month_plan.files if payload.file_id in planned]
                if todo:
                    report.months.append(_apply_month(engine, root, month, todo, archive))
    return report


def _apply_month(
    engine: Engine, root: PayloadRoot, month: str, todo: list[RetentionFile], archive: bool
) -> MonthResult:
    result = MonthResult(month)
    covered, unarchived = _check_recorded_archives(root, todo, result)
    if not archive:
        for payload in unarchived:
            _delete_unarchived(engine, root, payload, result)
    elif unarchived:
        covered += _archive_or_report(engine, root, month, unarchived, result)
    for payload in covered:
        _delete_archived(engine, root, payload, result)
    _tidy_month_folder(root.month_dir(month))
    return result


def _check_recorded_archives(
    root: PayloadRoot, todo: list[RetentionFile], result: MonthResult
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
            verify_archive(archive_path(root, name), [_registered(p) for p in group])
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
    engine: Engine, root: PayloadRoot, month: str, payloads: list[RetentionFile], result: MonthResult
) -> list[RetentionFile]:
    """Archive, verify and record `payloads`; on failure report it and return no file to delete."""
    try:
        name = _archive_month(engine, root, month, payloads)
    except ArchiveError as error:
        result.failures.append(Failure(None, f"{month}: {error}. Nothing of this month was deleted"))
        return []
    result.archive_name, result.archived = name, len(payloads)
    return [replace(payload, archive_name=name) for payload in payloads]


def _archive_month(engine: Engine, root: PayloadRoot, month: str, payloads: list[RetentionFile]) -> str:
    """Write and read back one archive, then record it on the rows in one transaction; ArchiveError otherwise."""
    path = write_archive(root, month, payloads)
    try:
        verify_archive(path, [_registered(p) for p in payloads])
        with engine.begin() as conn:
            marked = status.record_archived(conn, [p.file_id for p in payloads], path.name)
            if marked != len(payloads):
                raise ArchiveError(f"only {marked} of {len(payloads)} files are still COMPLETED; rerun cleanup")
    except BaseException:
        _discard(path)  # never referenced by the database: removing it loses nothing
        raise
    return path.name


def _delete_archived(engine: Engine, root: PayloadRoot, payload: RetentionFile, result: MonthResult) -> None:
    """Original → gone, then `deleted_at` (the archive verified and is recorded already)."""
    if payload.on_disk:
        path = _deletable(root, payload, result)
        if path is None or not _remove_or_report(path, payload, result):
            return
    status.record_deleted(engine, payload.file_id)
    markers.clear_markers(root, payload.file_path)
    _count_deleted(payload, result)


def _delete_unarchived(engine: Engine, root: PayloadRoot, payload: RetentionFile, result: MonthResult) -> None:
    """`deleted_at` first, then the original (no archive to check a missing file against)."""
    path = _deletable(root, payload, result)
    if path is None:
        return
    status.record_deleted(engine, payload.file_id)
    if _remove_or_report(path, payload, result):
        markers.clear_markers(root, payload.file_path)
        _count_deleted(payload, result)


def _deletable(root: PayloadRoot, payload: RetentionFile, result: MonthResult) -> Path | None:
    """The file's own path, or None (with the failure recorded) when it is reached through a link."""
    try:
        path = root.resolve(payload.file_path)
        root.check_not_linked(path)
    except PayloadPathError as error:
        result.failures.append(Failure(payload.file_path, f"not deleted: {error}; put the file back in its own folder"))
        return None
    return path


def _count_deleted(payload: RetentionFile, result: MonthResult) -> None:
    if payload.on_disk:
        result.deleted.append(payload.file_path)
        result.bytes_deleted += payload.size_bytes
    else:
        result.healed.append(payload.file_path)


def _remove_or_report(path: Path, payload: RetentionFile, result: MonthResult) -> bool:
    try:
        _remove_original(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        result.failures.append(
            Failure(payload.file_path, f"could not delete: {error}; it stays on disk, fix it and rerun cleanup")
        )
        return False
    return True


def _remove_original(path: Path) -> None:
    """Delete one original payload (read-only 0444: made writable first, for filesystems that care)."""
    os.chmod(path, OWNER_WRITABLE)
    os.unlink(path)


def _discard(path: Path) -> None:
    try:
        os.chmod(path, OWNER_WRITABLE)
        path.unlink()
    except FileNotFoundError:
        pass


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


# ── restore ─────────────────────────────────────────────────────────────────────────────────


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
    engine: Engine, root: PayloadRoot, month: str, on_wait: Callable[[str], None] | None = None
) -> RestoreReport:
    """Put a month's archived files back on disk, byte-identical, read-only; clear `deleted_at`; mark processed.

    Under the month lock: a cleanup of the same month waits for the restore (and the other way round).
    """
    validate_month(month)
    with month_lock(engine, month, None if on_wait is None else partial(on_wait, month)):
        return _restore_month(engine, root, month)


def _restore_month(engine: Engine, root: PayloadRoot, month: str) -> RestoreReport:
    report = RestoreReport(month)
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_ROW_COLUMNS)
            .where(files.c.month == month, (files.c.archive_name.is_not(None)) | (files.c.deleted_at.is_not(None)))
            .order_by(files.c.file_id)
        ).all()
    if not rows:
        report.failures.append(Failure(None, f"no file of {month} was archived or deleted: nothing to restore"))
    by_archive: dict[str, list[Row[Any]]] = defaultdict(list)
    for row in rows:
        if row.archive_name is None:
            reason = "deleted without an archive (cleanup --no-archive): restore it from a backup"
            report.failures.append(Failure(row.file_path, reason))
        else:
            by_archive[row.archive_name].append(row)
    for name, group in by_archive.items():
        report.archives.append(name)
        _restore_from_archive(root, name, group, report)
    back = set(report.restored) | set(report.already_present)
    done = [row for row in rows if row.file_path in back]
    status.record_restored(engine, [row.file_id for row in done])
    for row in done:
        markers.mark_processed(
            root, row.file_path, {"file_id": row.file_id, "status": row.status, "restored_from": row.archive_name}
        )
    return report


def _restore_from_archive(root: PayloadRoot, name: str, rows: list[Row[Any]], report: RestoreReport) -> None:
    needed: dict[str, Row[Any]] = {}
    for row in rows:
        try:
            target = root.resolve(row.file_path)
            root.check_not_linked(target)
        except PayloadPathError as error:
            report.failures.append(
                Failure(row.file_path, f"not restored: {error}; remove the link, then rerun restore")
            )
            continue
        _remove_leftovers(target.parent, target.name)  # left by a restore that was killed
        if not target.exists():
            needed[row.file_path] = row
        elif sha256_file(target)[0] == row.checksum_sha256:
            report.already_present.append(row.file_path)
        else:
            reason = f"{target} exists and differs from the archived bytes; move it aside, then rerun restore"
            report.failures.append(Failure(row.file_path, reason))
    if not needed:
        return
    try:
        path = archive_path(root, name)
        verify_archive(path, [_registered_row(row) for row in needed.values()])
        _extract(root, path, needed, report)
    except ArchiveError as error:
        report.failures += [Failure(p, f"not restored: {error}") for p in needed if p not in report.restored]


def _extract(root: PayloadRoot, path: Path, needed: dict[str, Row[Any]], report: RestoreReport) -> None:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                row = needed.get(member.name)
                stream = tar.extractfile(member) if row is not None else None
                if row is None or stream is None:
                    continue
                try:
                    _publish(stream, root.resolve(row.file_path), row.checksum_sha256)
                    report.restored.append(row.file_path)
                except (OSError, ArchiveError) as error:
                    report.failures.append(Failure(row.file_path, f"not restored: {error}"))
    except (OSError, EOFError, zlib.error, tarfile.TarError) as error:
        raise ArchiveError(f"archive {path.name} cannot be read ({type(error).__name__}: {error})") from error


def _publish(stream: BinaryIO, target: Path, checksum: str) -> None:
    """Write a restored file crash-safely, read back and checked against its SHA-256 first; never overwrite."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with publishing(target, expected_sha256=checksum) as out:
            shutil.copyfileobj(stream, out, HASH_CHUNK)
    except PublishedBytesDiffer as error:
        raise ArchiveError(f"{error}, the SHA-256 the database holds") from None
    except FileExistsError:
        raise FileExistsError(f"{target} appeared while restoring; left as it is") from None


def _remove_leftovers(folder: Path, final_name_pattern: str) -> None:
    """Delete the temporaries a killed cleanup or restore left (called under the month lock that owns them)."""
    for leftover in remove_stale_temporaries(folder, final_name_pattern):
        log.warning("removed %s, left by an interrupted command", leftover)


def _registered_row(row: Row[Any]) -> ManifestEntry:
    return ManifestEntry.registered(row.file_id, row.file_path, row.file_size_bytes, row.checksum_sha256)
