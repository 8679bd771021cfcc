"""The archive format: one read-only tar.gz per month and run, with a manifest; written once, verified in full."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO

from property_pipeline.db.schema import utcnow
from property_pipeline.errors import PipelineError
from property_pipeline.retention.plan import RetentionFile
from property_pipeline.store.backend import PayloadMissing, PayloadStore, PayloadStoreUnavailable, PayloadTooLarge
from property_pipeline.store.layout import format_timestamp, validate_month
from property_pipeline.store.publish import HASH_CHUNK

log = logging.getLogger(__name__)

ARCHIVE_PREFIX = "property_payloads_"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "property_pipeline.archive/1"
ARCHIVE_NAME_RE = re.compile(r"property_payloads_\d{4}-\d{2}_\d{8}T\d{12}Z\.tar\.gz")


class ArchiveError(PipelineError):
    """An archive could not be written or read, or does not match its manifest and the database."""


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


def checked_archive_name(archive_name: str) -> str:
    """A recorded archive's name; refuses names retention does not write (no path tricks from the database)."""
    if not ARCHIVE_NAME_RE.fullmatch(archive_name):
        raise ArchiveError(f"archive name {archive_name!r} is not one retention writes; it was not read")
    return archive_name


def write_archive(store: PayloadStore, month: str, payloads: Sequence[RetentionFile]) -> str:
    """Write one tar.gz of `payloads` plus manifest.json into the store's archives, create-only; return its name."""
    name = archive_name_for(month, utcnow())
    try:
        with store.writing_archive(name) as handle:
            _write_tar(handle, store, month, payloads)
    except OSError as error:
        raise ArchiveError(f"could not write archive {store.archive_location(name)}: {error}") from error
    return name


@contextmanager
def stored_archive(store: PayloadStore, archive_name: str) -> Iterator[Path]:
    """A recorded archive as a local file to read (fetched from object storage); ArchiveError when it is not there."""
    try:
        with store.reading_archive(checked_archive_name(archive_name)) as path:
            yield path
    except (PayloadMissing, PayloadStoreUnavailable) as error:
        raise ArchiveError(f"archive {archive_name} cannot be read back: {error}") from error


def verify_stored_archive(store: PayloadStore, archive_name: str, expected: Sequence[ManifestEntry]) -> None:
    """Read a stored archive back in full (from the store, not from what was written) and verify it."""
    with stored_archive(store, archive_name) as path:
        verify_archive(path, expected)


def _write_tar(handle: BinaryIO, store: PayloadStore, month: str, payloads: Sequence[RetentionFile]) -> None:
    with tarfile.open(fileobj=handle, mode="w:gz", compresslevel=6) as tar:
        entries = [asdict(_add_payload(tar, store, payload)) for payload in payloads]
        manifest = {"format": MANIFEST_FORMAT, "month": month, "created_at": utcnow().isoformat(), "files": entries}
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode, info.mtime = len(body), 0o444, int(utcnow().timestamp())
        tar.addfile(info, io.BytesIO(body))


def _add_payload(tar: tarfile.TarFile, store: PayloadStore, payload: RetentionFile) -> ManifestEntry:
    try:
        # One byte above the registered size is let through, so that a grown file reads as a mismatch below.
        with store.open_payload(payload.file_path, payload.size_bytes + 1) as source:
            size = source.seek(0, io.SEEK_END)
            source.seek(0)
            info = tarfile.TarInfo(payload.file_path)
            info.size, info.mode, info.mtime = size, 0o444, _modified(source)
            reader = _HashingReader(source)
            tar.addfile(info, reader)
        entry = ManifestEntry.registered(payload.file_id, payload.file_path, info.size, reader.digest.hexdigest())
    except PayloadTooLarge as error:
        entry = ManifestEntry.registered(payload.file_id, payload.file_path, error.size, "(not read)")
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


def read_members(
    store: PayloadStore, archive_name: str, wanted: Mapping[str, ManifestEntry]
) -> Iterator[tuple[str, bytes]]:
    """The bytes of the wanted members of an archive, each checked against its registered SHA-256 and size,
    streamed from the tar.gz (none written beside the payloads). ArchiveError when a member differs or is missing."""
    found: set[str] = set()
    try:
        with stored_archive(store, archive_name) as path, tarfile.open(path, "r:gz") as tar:
            for member in tar:
                want = wanted.get(member.name)
                stream = tar.extractfile(member) if want is not None else None
                if want is None or stream is None:
                    continue
                body = stream.read(want.size + 1)
                if len(body) != want.size or hashlib.sha256(body).hexdigest() != want.sha256:
                    raise ArchiveError(f"{member.name} in archive {archive_name} differs from its registered SHA-256")
                found.add(member.name)
                yield member.name, body
    except (OSError, EOFError, zlib.error, tarfile.TarError) as error:
        raise ArchiveError(f"archive {archive_name} cannot be read ({type(error).__name__}: {error})") from error
    missing = sorted(set(wanted) - found)
    if missing:
        raise ArchiveError(f"archive {archive_name} does not hold {missing[:3]}")


def _modified(source: BinaryIO) -> int:
    """A member's modification time: the file's own in a folder, now for an object (the bytes are what count)."""
    try:
        return int(os.fstat(source.fileno()).st_mtime)
    except (OSError, io.UnsupportedOperation):
        return int(utcnow().timestamp())


def _hash_stream(stream: IO[bytes]) -> tuple[str, int]:
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
