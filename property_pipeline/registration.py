"""Find payload files on disk that the database does not know yet, and register them as PENDING."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy import Engine, select

from property_pipeline.db.schema import batch_file_status
from property_pipeline.db.status import NewPayloadFile, Registration, register_files
from property_pipeline.processing.memory import fewer_garbage_collections
from property_pipeline.settings import DEFAULT_MAX_PAYLOAD_BYTES
from property_pipeline.store import markers
from property_pipeline.store.layout import (
    MONTH_RE,
    PayloadPathError,
    PayloadRoot,
    parse_payload_name,
    validate_month,
)
from property_pipeline.store.writer import sha256_file

log = logging.getLogger(__name__)
REGISTER_CHUNK = 500


@dataclass
class RegistrationReport:
    registered: list[Registration] = field(default_factory=list)
    duplicates: list[Registration] = field(default_factory=list)
    already_registered: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def merge(self, other: RegistrationReport) -> None:
        self.registered += other.registered
        self.duplicates += other.duplicates
        self.already_registered += other.already_registered
        self.skipped += other.skipped


def month_folders(root: PayloadRoot, month: str | None = None) -> list[Path]:
    """The payload month folders to look in, oldest first."""
    if month is not None:
        folder = root.month_dir(validate_month(month))
        return [folder] if folder.is_dir() else []
    if not root.payloads.is_dir():
        return []
    return sorted(entry for entry in root.payloads.iterdir() if entry.is_dir() and MONTH_RE.fullmatch(entry.name))


def payload_candidates(folder: Path) -> Iterable[os.DirEntry[str]]:
    """Files in a month folder that could be payloads (temporary and hidden files excluded)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            yield entry


def registered_paths(engine: Engine, month: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(select(batch_file_status.c.file_path).where(batch_file_status.c.month == month)).scalars()
        )


def describe_file(
    root: PayloadRoot, path: Path, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> NewPayloadFile:
    """Checksum, size and record count of a file on disk; PayloadPathError when it may not be registered.

    A file above `max_payload_bytes` is hashed in chunks but never read whole (no record count).
    """
    month = path.parent.name
    validate_month(month)
    name = parse_payload_name(path.name)
    if path.is_symlink() or not path.is_file():
        raise PayloadPathError(f"{path} is a symlink or not a regular file; payloads must be plain files")
    root.check_inside(path)
    count = None  # unknown when the file is too big to read whole or is not a page: processing says why
    if path.stat().st_size > max_payload_bytes:
        checksum, size = sha256_file(path)
    else:
        body = path.read_bytes()  # read once: hashed and counted from the same bytes
        checksum, size = hashlib.sha256(body).hexdigest(), len(body)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None  # registered anyway: processing marks it FAILED with the reason
        data = document.get("data") if isinstance(document, dict) else None
        count = len(data) if isinstance(data, list) else None
    return NewPayloadFile(
        file_path=f"{month}/{path.name}",
        campaign_id=name.campaign_id,
        batch_number=name.batch_number,
        month=month,
        checksum_sha256=checksum,
        file_size_bytes=size,
        captured_at=name.captured_at,
        properties_count=count,
    )


def register_paths(
    engine: Engine,
    root: PayloadRoot,
    paths: Sequence[Path],
    actor: str,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> RegistrationReport:
    """Register the given files (unknown ones become PENDING); safe to call for files already registered."""
    report = RegistrationReport()
    described: list[NewPayloadFile] = []
    with fewer_garbage_collections():  # each file is parsed whole to count its records
        for path in paths:
            try:
                described.append(describe_file(root, path, max_payload_bytes=max_payload_bytes))
            except (PayloadPathError, OSError) as error:
                report.skipped.append((str(path), str(error)))
                log.warning("not registered: %s", error)
    for start in range(0, len(described), REGISTER_CHUNK):
        with engine.begin() as conn:
            results = register_files(conn, described[start : start + REGISTER_CHUNK], actor)
        for result in results:
            if not result.created:
                report.already_registered += 1
            elif result.duplicate_of is not None:
                report.duplicates.append(result)
                markers.mark_processed(
                    root,
                    result.file_path,
                    {"file_id": result.file_id, "status": result.status, "duplicate_of": result.duplicate_of},
                )
            else:
                report.registered.append(result)
                markers.mark_pending(root, result.file_path)
    return report


def register_unregistered(
    engine: Engine,
    root: PayloadRoot,
    actor: str,
    month: str | None = None,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> RegistrationReport:
    """Scan the payload folders (one month, or all) and register every file the database does not know."""
    report = RegistrationReport()
    for folder in month_folders(root, month):
        known = registered_paths(engine, folder.name)
        new = [Path(entry.path) for entry in payload_candidates(folder) if f"{folder.name}/{entry.name}" not in known]
        report.merge(register_paths(engine, root, sorted(new), actor, max_payload_bytes=max_payload_bytes))
    return report


@dataclass(frozen=True)
class NewFilesScan:
    """Unregistered payload files found since a watermark, and where the next scan starts."""

    paths: list[Path]  # to register now, oldest inode change first
    watermark_ns: int  # the next scan looks at files whose inode changed at or after this time
    more: bool  # True when `max_files` left settled files for the next scan
    folders_listed: int  # month folders listed; folders not modified since the watermark are skipped


def scan_new_files(
    engine: Engine, root: PayloadRoot, since_ns: int, *, max_files: int, settled_before_ns: int
) -> NewFilesScan:
    """Unregistered payload files whose inode changed at or after `since_ns`: created, copied or moved in.

    The inode change time (ctime) is set when a file is created or renamed into a folder, whatever
    modification time a copy preserves; a month folder's mtime moves whenever an entry is added, so
    folders not modified since `since_ns` are not listed at all. Files changed after
    `settled_before_ns` may still be being written and are left for a later scan. The watermark
    only moves past files that were handled, so nothing is skipped when a scan stops at `max_files`.
    """
    changed: list[tuple[int, str, Path]] = []  # (ctime_ns, file_path, path) of unregistered files
    newest = since_ns
    listed = 0
    for folder in month_folders(root):
        if folder.stat().st_mtime_ns < since_ns:
            continue
        listed += 1
        fresh: list[tuple[int, str, Path]] = []
        for entry in payload_candidates(folder):
            try:
                ctime_ns = entry.stat(follow_symlinks=False).st_ctime_ns
            except FileNotFoundError:  # removed while listing
                continue
            if ctime_ns >= since_ns:
                fresh.append((ctime_ns, f"{folder.name}/{entry.name}", Path(entry.path)))
        known = _registered_among(engine, [file_path for _, file_path, _ in fresh])
        newest = max([newest] + [ctime_ns for ctime_ns, _, _ in fresh])
        changed += [item for item in fresh if item[1] not in known]
    changed.sort()
    settled = [item for item in changed if item[0] <= settled_before_ns]
    if len(settled) > max_files:
        watermark, more = settled[max_files][0], True
    elif len(settled) < len(changed):
        watermark, more = changed[len(settled)][0], False  # the oldest file that may still be being written
    else:
        watermark, more = newest, False
    return NewFilesScan([path for _, _, path in settled[:max_files]], watermark, more, listed)


def _registered_among(engine: Engine, file_paths: Sequence[str]) -> set[str]:
    known: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(file_paths), REGISTER_CHUNK):
            chunk = file_paths[start : start + REGISTER_CHUNK]
            known.update(
                conn.execute(select(batch_file_status.c.file_path).where(batch_file_status.c.file_path.in_(chunk)))
                .scalars()
                .all()
            )
    return known
