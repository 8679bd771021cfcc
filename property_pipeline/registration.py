"""Find payload files in the store that the database does not know yet, and register them as PENDING.

On a folder: month folders scanned, inode change times as the sensor's watermark (files copied in are found
whatever their modification time). On object storage: month prefixes listed and compared with the database
(an object that arrives late, under an older name, is still found: no name order is assumed)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select

from property_pipeline.db.schema import batch_file_status, utcnow
from property_pipeline.db.status import NewPayloadFile, Registration, register_files
from property_pipeline.errors import PipelineError
from property_pipeline.payload_json import PayloadJsonError, decode_payload
from property_pipeline.processing.memory import fewer_garbage_collections
from property_pipeline.settings import DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_MAX_PAYLOAD_BYTES, Settings
from property_pipeline.store.backend import PayloadMissing, PayloadStore, StoredObject
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import (
    MONTH_RE,
    PayloadName,
    PayloadPathError,
    month_of,
    parse_payload_name,
    validate_month,
)
from property_pipeline.store.publish import sha256_file

log = logging.getLogger(__name__)
REGISTER_CHUNK = 500
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class HeldBack(PipelineError):
    """A file that is not registrable yet but may be later (still being written); registration tries again."""


@dataclass(frozen=True)
class DropInRules:
    """When a file on disk may be registered: the rules for files other systems drop into the month folders.

    `settle_seconds`: a file that is empty or not a complete page, and changed less than this long ago,
    may still be being written: it is held back. A complete page registers at once (no prefix of a
    page parses). 0 registers whatever is there now, for callers that know their files are complete.
    `clock_skew_seconds`: how far in this clock's future a name's timestamp may lie (clocks drift).
    """

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    settle_seconds: float = 0.0
    clock_skew_seconds: float = DEFAULT_CLOCK_SKEW_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> DropInRules:
        return cls(settings.max_payload_bytes, settings.settle_seconds, settings.clock_skew_seconds)


@dataclass
class RegistrationReport:
    registered: list[Registration] = field(default_factory=list)
    duplicates: list[Registration] = field(default_factory=list)
    already_registered: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): refused until fixed
    held_back: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): tried again next time
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, note): registered, with a caveat

    def merge(self, other: RegistrationReport) -> None:
        self.registered += other.registered
        self.duplicates += other.duplicates
        self.already_registered += other.already_registered
        self.skipped += other.skipped
        self.held_back += other.held_back
        self.warnings += other.warnings


def month_folders(root: PayloadRoot, month: str | None = None, *, linked: list[Path] | None = None) -> list[Path]:
    """The payload month folders to look in, oldest first. Month folders that are symbolic links are left out
    (and appended to `linked`): a link to another month would register that month's files twice."""
    if month is not None:
        candidates = [root.month_dir(validate_month(month))]
    elif root.payloads.is_dir():
        candidates = sorted(entry for entry in root.payloads.iterdir() if MONTH_RE.fullmatch(entry.name))
    else:
        candidates = []
    folders = []
    for folder in candidates:
        if folder.is_symlink():
            if linked is not None and folder.is_dir():
                linked.append(folder)
        elif folder.is_dir():
            folders.append(folder)
    return folders


def _refuse_linked_folder(root: PayloadRoot, folder: Path, report: RegistrationReport) -> None:
    """Every payload file in a linked month folder is reported, none registered."""
    try:
        root.check_inside(folder)
        reason = (
            f"its month folder {folder.name} is a symbolic link (to {os.readlink(folder)}); month folders must be "
            "real folders, so that no file is registered under two months"
        )
    except PayloadPathError as error:
        reason = str(error)
    for entry in payload_candidates(folder):
        report.skipped.append((entry.path, reason))
        log.warning("not registered: %s: %s", entry.path, reason)


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


def check_capture_time(name: PayloadName, month: str, rules: DropInRules, now: datetime | None = None) -> None:
    """Refuse a name whose timestamp lies in another month than its folder, or in the future (past the skew
    allowance): such a file would win newest-wins over every later capture of its properties."""
    if month_of(name.captured_at) != month:
        raise PayloadPathError(
            f"its timestamp {name.captured_at:%Y-%m-%d %H:%M:%S} UTC belongs to {month_of(name.captured_at)}, "
            f"but it sits in the folder {month}; move it to property_payloads/{month_of(name.captured_at)}/"
        )
    ahead = (name.captured_at - (now or utcnow())).total_seconds()
    if ahead > rules.clock_skew_seconds:
        raise PayloadPathError(
            f"its timestamp {name.captured_at:%Y-%m-%d %H:%M:%S} UTC lies {_duration(ahead)} in the future, beyond "
            f"the {rules.clock_skew_seconds:g} s clock-skew allowance (PROPERTY_PIPELINE_CLOCK_SKEW_SECONDS): a "
            "file from the future would win over every later capture of its properties. Fix its name"
        )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:.0f} s"


def describe_file(root: PayloadRoot, path: Path, rules: DropInRules | None = None) -> NewPayloadFile:
    """Checksum, size and record count of a file on disk.

    PayloadPathError when it may not be registered (its name, place or kind); HeldBack when it may
    still be being written. A file above `max_payload_bytes` is hashed in chunks, never read whole.
    """
    rules = rules or DropInRules()
    month = path.parent.name
    validate_month(month)
    name = parse_payload_name(path.name)
    check_capture_time(name, month, rules)
    if path.is_symlink() or path.parent.is_symlink() or not path.is_file():
        raise PayloadPathError(f"{path} is a symlink or not a regular file; payloads must be plain files")
    root.check_inside(path)
    count = plain = None  # unknown when the file is too big to read whole
    unreadable = False
    if path.stat().st_size > rules.max_payload_bytes:
        checksum, size = sha256_file(path)
    else:
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            body = handle.read()  # read once: hashed and counted from the same bytes
            after = os.fstat(handle.fileno())
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(body) != after.st_size:
            raise HeldBack("it changed while it was read: still being written; registered once it is complete")
        checksum, size = hashlib.sha256(body).hexdigest(), len(body)
        count, plain = page_facts(body)
        if count is None:
            age = time.time() - max(after.st_mtime_ns, after.st_ctime_ns) / 1e9
            if age < rules.settle_seconds:
                raise HeldBack(
                    f"{'empty' if not body else 'not a complete page'} and changed {age:.1f} s ago: it may still "
                    f"be being written; registered once unchanged for {rules.settle_seconds:g} s "
                    "(PROPERTY_PIPELINE_SETTLE_SECONDS)"
                )
            unreadable = True  # registered so that processing fails it with the reason; never a duplicate
    return NewPayloadFile(
        file_path=f"{month}/{path.name}",
        campaign_id=name.campaign_id,
        batch_number=name.batch_number,
        month=month,
        checksum_sha256=checksum,
        file_size_bytes=size,
        captured_at=name.captured_at,
        properties_count=count,
        content_unreadable=unreadable,
        plain_json=plain,
    )


def page_facts(body: bytes) -> tuple[int | None, bool | None]:
    """(records, plain) when the bytes are a payload page (a JSON object with a `data` list), else (None, None).
    `plain`: the page decodes as plain JSON, which processing then trusts for these bytes (payload_json.py)."""
    try:
        document, plain = decode_payload(body)
    except PayloadJsonError:
        return None, None
    data = document.get("data") if isinstance(document, dict) else None
    return (len(data), plain) if isinstance(data, list) else (None, None)


def register_paths(
    engine: Engine, root: PayloadRoot, paths: Sequence[Path], actor: str, *, rules: DropInRules | None = None
) -> RegistrationReport:
    """Register the given files (unknown ones become PENDING); safe to call for files already registered."""
    report = RegistrationReport()
    described: list[NewPayloadFile] = []
    with fewer_garbage_collections():  # each file is parsed whole to count its records
        for path in paths:
            try:
                described.append(describe_file(root, path, rules))
            except HeldBack as reason:
                report.held_back.append((str(path), str(reason)))
            except (PayloadPathError, OSError) as error:
                report.skipped.append((str(path), str(error)))
                log.warning("not registered: %s: %s", path, error)
    _register_described(engine, root, described, actor, report)
    return report


def _register_described(
    engine: Engine, store: PayloadStore, described: Sequence[NewPayloadFile], actor: str, report: RegistrationReport
) -> None:
    """Register described files in chunks; each new one's state is mirrored by the store (in a folder: read-only)."""
    for start in range(0, len(described), REGISTER_CHUNK):
        with engine.begin() as conn:
            results = register_files(conn, described[start : start + REGISTER_CHUNK], actor)
        for result in results:
            if not result.created:
                report.already_registered += 1
                continue
            if result.duplicate_of is not None:
                report.duplicates.append(result)
            else:
                report.registered.append(result)
            store.follow(result.file_path, result.status, file_id=result.file_id, duplicate_of=result.duplicate_of)
            root = store.folder
            note = make_read_only(root.resolve(result.file_path)) if root is not None else None
            if note:
                report.warnings.append((result.file_path, note))


def make_read_only(path: Path) -> str | None:
    """Registered originals are immutable: drop every write bit. A note when the file is not ours to change."""
    try:
        mode = path.stat().st_mode
        if mode & WRITE_BITS:
            os.chmod(path, stat.S_IMODE(mode) & ~WRITE_BITS)
    except OSError as error:
        return (
            f"registered, but it could not be made read-only ({error.strerror}): it belongs to another user or "
            "system; keep it unchanged, processing checks its SHA-256 before loading it"
        )
    return None


def register_unregistered(
    engine: Engine,
    store: PayloadStore,
    actor: str,
    month: str | None = None,
    *,
    rules: DropInRules | None = None,
    campaign: str | None = None,
) -> RegistrationReport:
    """Scan the payload store (one month, or all) and register every file the database does not know
    (only one campaign's files, when `campaign` is given)."""
    prefix = None if campaign is None else f"{campaign}_batch"
    root = store.folder
    if root is None:
        months = [validate_month(month)] if month is not None else store.list_months()
        objects = [
            found
            for each in months
            for found in unregistered_objects(engine, store, each)
            if prefix is None or found.name.startswith(prefix)
        ]
        return register_objects(engine, store, objects, actor, rules=rules)
    report = RegistrationReport()
    linked: list[Path] = []
    folders = month_folders(root, month, linked=linked)
    for folder in linked:
        _refuse_linked_folder(root, folder, report)
    for folder in folders:
        known = registered_paths(engine, folder.name)
        new = [
            Path(entry.path)
            for entry in payload_candidates(folder)
            if f"{folder.name}/{entry.name}" not in known and (prefix is None or entry.name.startswith(prefix))
        ]
        report.merge(register_paths(engine, root, sorted(new), actor, rules=rules))
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


# Object storage: listings compared with the database.


def unregistered_objects(engine: Engine, store: PayloadStore, month: str) -> list[StoredObject]:
    """The payloads a month's listing shows that the database does not know, oldest write first."""
    known = registered_paths(engine, month)
    fresh = [found for found in store.list_payloads(month) if found.relative_path not in known]
    return sorted(fresh, key=lambda found: (found.modified_at, found.relative_path))


def describe_object(store: PayloadStore, found: StoredObject, rules: DropInRules | None = None) -> NewPayloadFile:
    """Checksum, size and record count of a stored object (read once, after its size was checked).

    An object is whole once it is listed (a PUT is atomic), so nothing is held back: one that is not a
    page is registered for processing to fail with the reason. PayloadPathError for a name that may not
    be registered; PayloadMissing when it went away since it was listed.
    """
    rules = rules or DropInRules()
    month = found.month
    validate_month(month)
    name = parse_payload_name(found.name)
    check_capture_time(name, month, rules)
    count = plain = None
    unreadable = False
    if found.size_bytes > rules.max_payload_bytes:
        hashed = store.hash_payload(found.relative_path)
        if hashed is None:
            raise PayloadMissing(f"{store.location(found.relative_path)} was deleted after it was listed")
        checksum, size = hashed
    else:
        with store.open_payload(found.relative_path, rules.max_payload_bytes) as handle:
            body = handle.read()
        checksum, size = hashlib.sha256(body).hexdigest(), len(body)
        count, plain = page_facts(body)
        unreadable = count is None
    return NewPayloadFile(
        file_path=found.relative_path,
        campaign_id=name.campaign_id,
        batch_number=name.batch_number,
        month=month,
        checksum_sha256=checksum,
        file_size_bytes=size,
        captured_at=name.captured_at,
        properties_count=count,
        content_unreadable=unreadable,
        plain_json=plain,
    )


def register_objects(
    engine: Engine,
    store: PayloadStore,
    objects: Sequence[StoredObject],
    actor: str,
    *,
    rules: DropInRules | None = None,
) -> RegistrationReport:
    """Register the given objects (unknown ones become PENDING); safe to call for objects already registered."""
    report = RegistrationReport()
    described: list[NewPayloadFile] = []
    with fewer_garbage_collections():
        for found in objects:
            try:
                described.append(describe_object(store, found, rules))
            except PayloadMissing:
                log.info("%s went away after it was listed: nothing to register", found.relative_path)
            except (PayloadPathError, OSError) as error:
                report.skipped.append((store.location(found.relative_path), str(error)))
                log.warning("not registered: %s: %s", found.relative_path, error)
    _register_described(engine, store, described, actor, report)
    return report


@dataclass(frozen=True)
class NewObjectsScan:
    """Unregistered objects found by one discovery pass over object storage, and where the next pass sweeps."""

    objects: list[StoredObject]  # to register now, oldest write first
    sweep_month: str | None  # the older month this pass listed; the next pass lists the one before it
    more: bool  # True when `max_files` left objects for the next pass
    months_listed: int


def scan_new_objects(
    engine: Engine, store: PayloadStore, *, recent_months: Sequence[str], swept: str | None, max_files: int
) -> NewObjectsScan:
    """One discovery pass: the recent months' prefixes (where captures land) are listed in full, plus one older
    month in rotation (`swept` is the last one listed; None starts from the newest), so an object written late
    into an old month is found within as many passes as there are months. Each listing is compared with the
    database, so the pass costs one listing per month listed plus the new objects, whatever the history."""
    months = store.list_months()
    recent = [month for month in months if month in set(recent_months)]
    older = [month for month in months if month not in set(recent_months)]
    sweep = None
    if older:
        before = [month for month in older if swept is None or month < swept]
        sweep = before[-1] if before else older[-1]  # wraps round to the newest older month
    fresh: list[StoredObject] = []
    listed = recent + ([sweep] if sweep is not None else [])
    for month in listed:
        fresh += unregistered_objects(engine, store, month)
    fresh.sort(key=lambda found: (found.modified_at, found.relative_path))
    return NewObjectsScan(fresh[:max_files], sweep, len(fresh) > max_files, len(listed))
