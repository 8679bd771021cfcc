"""Find payload files on disk that the database does not know yet, and register them as PENDING."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy import Engine, select

from property_pipeline.db.schema import batch_file_status
from property_pipeline.db.status import NewPayloadFile, Registration, register_files
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


def describe_file(root: PayloadRoot, path: Path) -> NewPayloadFile:
    """Checksum, size and record count of a file on disk; PayloadPathError when it may not be registered."""
    month = path.parent.name
    validate_month(month)
    name = parse_payload_name(path.name)
    if path.is_symlink() or not path.is_file():
        raise PayloadPathError(f"{path} is a symlink or not a regular file; payloads must be plain files")
    root.check_inside(path)
    checksum, size = sha256_file(path)
    try:
        document = orjson.loads(path.read_bytes())
        data = document.get("data") if isinstance(document, dict) else None
        count = len(data) if isinstance(data, list) else None
    except orjson.JSONDecodeError:
        count = None  # registered anyway: processing marks it FAILED with the reason
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


def register_paths(engine: Engine, root: PayloadRoot, paths: Sequence[Path], actor: str) -> RegistrationReport:
    """Register the given files (unknown ones become PENDING); safe to call for files already registered."""
    report = RegistrationReport()
    described: list[NewPayloadFile] = []
    for path in paths:
        try:
            described.append(describe_file(root, path))
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
    engine: Engine, root: PayloadRoot, actor: str, month: str | None = None
) -> RegistrationReport:
    """Scan the payload folders (one month, or all) and register every file the database does not know."""
    report = RegistrationReport()
    for folder in month_folders(root, month):
        known = registered_paths(engine, folder.name)
        new = [Path(entry.path) for entry in payload_candidates(folder) if f"{folder.name}/{entry.name}" not in known]
        report.merge(register_paths(engine, root, sorted(new), actor))
    return report
