"""Replay: loading files again from the raw store, and giving up on files that can never load.

- **Reprocess**: COMPLETED → PENDING (recorded, with the reason), then the ordinary processing path
  loads the file again. The reload replaces the file's link and quarantine rows in its own
  transaction; newest wins as on a first load (the upsert rewrites a row whose values came from
  this very file, and never one a later capture delivered).
- **Properties a file no longer delivers** (a new rule rejects a record it used to accept, or a
  reload fails and the file's data is removed): a row whose values came from that file gets them
  from the newest other file that still delivers the property (read again from the raw store,
  parsed by today's rules), or is deleted when none does; its first-seen time is recomputed. So
  the database stays what loading every settled file once, in capture order, would give.
- **Discard**: FAILED → DISCARDED (recorded, with the reason), settled and never loaded; `retry`
  takes it back.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, update

from property_pipeline.db import status
from property_pipeline.db.queries import file_paths
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_properties, property_sightings
from property_pipeline.errors import PayloadError, ProcessingError
from property_pipeline.processing.loader import delete_property, write_from_source
from property_pipeline.processing.parse import PayloadFormatError, PayloadPage, read_page
from property_pipeline.retention.archive import ArchiveError, ManifestEntry, read_members
from property_pipeline.retention.months import month_lock
from property_pipeline.states import FileStatus
from property_pipeline.store.backend import PayloadStore

log = logging.getLogger(__name__)

# The page of a registered file, read again from the raw store and parsed by today's rules.
PageReader = Callable[["SourceFile"], PayloadPage]


class SourceUnavailable(ProcessingError):
    """A file whose records must be read again is not readable (missing, changed, or its archive is gone)."""


@dataclass(frozen=True)
class SourceFile:
    """A registered file that delivers a property: where its bytes are and what they must hash to."""

    file_id: int
    file_path: str
    campaign_id: str
    checksum_sha256: str
    file_size_bytes: int
    captured_at: Any
    archive_name: str | None
    deleted: bool


@dataclass
class ReprocessPlan:
    """The files a reprocess request names, sorted by what can be done with them."""

    to_reprocess: list[tuple[int, str]] = field(default_factory=list)  # (file_id, file_path), COMPLETED on disk
    needs_restore: list[tuple[int, str]] = field(default_factory=list)  # deleted by retention: `restore` first
    not_completed: list[tuple[int, str, str]] = field(default_factory=list)  # (id, path, state): loads anyway
    duplicates: int = 0  # identical to another file: nothing of their own to load


def plan_reprocess(
    engine: Engine, *, month: str | None = None, campaign: str | None = None, file_ids: Sequence[int] | None = None
) -> ReprocessPlan:
    """Which of the named files would be loaded again (a month, a campaign within a month, or file ids)."""
    if month is None and not file_ids:
        raise ValueError("name what to reprocess: a month (optionally one campaign) or file ids")
    conditions = []
    if month is not None:
        conditions.append(files.c.month == month)
    if campaign is not None:
        conditions.append(files.c.campaign_id == campaign)
    if file_ids:
        conditions.append(files.c.file_id.in_(list(file_ids)))
    query = (
        select(files.c.file_id, files.c.file_path, files.c.status, files.c.duplicate_of_file_id, files.c.deleted_at)
        .where(and_(*conditions))
        .order_by(files.c.captured_at, files.c.file_id)
    )
    plan = ReprocessPlan()
    with engine.connect() as conn:
        for row in conn.execute(query):
            if row.duplicate_of_file_id is not None:
                plan.duplicates += 1
            elif row.status != FileStatus.COMPLETED:
                plan.not_completed.append((row.file_id, row.file_path, row.status))
            elif row.deleted_at is not None:
                plan.needs_restore.append((row.file_id, row.file_path))
            else:
                plan.to_reprocess.append((row.file_id, row.file_path))
    return plan


def mark_for_reprocessing(
    engine: Engine,
    store: PayloadStore,
    actor: str,
    plan: ReprocessPlan,
    reason: str,
    on_wait: Callable[[str], None] | None = None,
) -> list[int]:
    """COMPLETED → PENDING for the plan's files (recorded with `reason`), with their `pending/` markers.

    Under each month's lock, as cleanup and restore are: a file is never put back to PENDING while
    retention is removing it from disk (retention only removes settled files, and looks under the lock).
    """
    if not reason.strip():
        raise ValueError("say why the files are reprocessed (--reason): it is recorded with each file")
    by_month: dict[str, list[int]] = {}
    for file_id, path in plan.to_reprocess:
        by_month.setdefault(path.split("/", 1)[0], []).append(file_id)
    marked: list[int] = []
    for month, file_ids in sorted(by_month.items()):
        with month_lock(engine, month, None if on_wait is None else partial(on_wait, month)):
            marked += status.mark_for_reprocessing(engine, actor, file_ids, reason)
    for path in file_paths(engine, marked).values():
        store.follow(path, FileStatus.PENDING)
    return sorted(marked)


def discard(engine: Engine, store: PayloadStore, actor: str, file_ids: Sequence[int], reason: str) -> list[int]:
    """FAILED → DISCARDED (recorded with `reason`), with their `processed/` markers saying so."""
    if not reason.strip():
        raise ValueError("say why the files are discarded (--reason): it is recorded with each file")
    discarded = status.discard_failed(engine, actor, file_ids, reason)
    for file_id, path in file_paths(engine, discarded).items():
        store.follow(path, FileStatus.DISCARDED, file_id=file_id, reason=reason)
    return discarded


def unload(conn: Connection, file_id: int) -> frozenset[str]:
    """Remove what an earlier load of the file left (links, quarantine) in the caller's transaction; the ids it
    had delivered. The caller then gives those properties their other sources (`give_new_sources`)."""
    from property_pipeline.processing.loader import forget_previous_load

    return forget_previous_load(conn, file_id)


def give_new_sources(conn: Connection, file_id: int, dropped: Iterable[str], read_page: PageReader) -> None:
    """The properties in `dropped` are no longer delivered by file `file_id`: recompute each from the files that
    still deliver it, in the caller's transaction (see the module's docstring)."""
    dropped = sorted(set(dropped))
    if not dropped:
        return
    sources = _sources_by_property(conn, dropped)
    came_from_this_file = select(property_sightings.c.property_id).where(
        property_sightings.c.property_id.in_(dropped), property_sightings.c.source_file_id == file_id
    )
    for property_id in sorted(conn.execute(came_from_this_file).scalars()):
        if not _take_values_from_next_source(conn, property_id, sources.get(property_id, []), read_page):
            delete_property(conn, property_id)
    _recompute_first_seen(conn, dropped)


def _sources_by_property(conn: Connection, property_ids: Sequence[str]) -> dict[str, list[SourceFile]]:
    """The COMPLETED files that still link each property, newest capture first. Files waiting to be reprocessed
    are no source yet: they bring their own values when they load."""
    query = (
        select(
            file_properties.c.property_id,
            files.c.file_id,
            files.c.file_path,
            files.c.campaign_id,
            files.c.checksum_sha256,
            files.c.file_size_bytes,
            files.c.captured_at,
            files.c.archive_name,
            files.c.deleted_at,
        )
        .join(files, files.c.file_id == file_properties.c.file_id)
        .where(file_properties.c.property_id.in_(list(property_ids)), files.c.status == FileStatus.COMPLETED)
        .order_by(file_properties.c.property_id, files.c.captured_at.desc(), files.c.file_id.desc())
    )
    found: dict[str, list[SourceFile]] = {}
    for row in conn.execute(query):
        found.setdefault(row.property_id, []).append(
            SourceFile(
                row.file_id,
                row.file_path,
                row.campaign_id,
                row.checksum_sha256,
                row.file_size_bytes,
                row.captured_at,
                row.archive_name,
                row.deleted_at is not None,
            )
        )
    return found


def _take_values_from_next_source(
    conn: Connection, property_id: str, candidates: Sequence[SourceFile], read_page: PageReader
) -> bool:
    """Give the row the values of the newest candidate whose page still accepts the property; False if none."""
    for candidate in candidates:
        record = next((r for r in read_page(candidate).records() if r.property_id == property_id), None)
        if record is None:
            # Loaded under older rules, which accepted the record; today's reject it. That file's month needs
            # reprocessing too; until then it is no source (its link stays: it is that file's history).
            log.warning(
                "property %s: file %s (%s) still links it, but today's rules reject its record there; "
                "reprocess that file's month too",
                property_id,
                candidate.file_id,
                candidate.file_path,
            )
            continue
        write_from_source(conn, record, candidate.file_id, candidate.campaign_id, candidate.captured_at)
        return True
    return False


def read_registered(store: PayloadStore, source: SourceFile) -> bytes:
    """A registered file's bytes, checked against its SHA-256: from the payload folder, or, for a file retention
    deleted, straight from its verified archive (nothing written back). SourceUnavailable otherwise."""
    if source.deleted:
        if source.archive_name is None:
            raise SourceUnavailable(f"{source.file_path} was deleted without an archive: its records are gone")
        entry = ManifestEntry.registered(
            source.file_id, source.file_path, source.file_size_bytes, source.checksum_sha256
        )
        try:
            return next(body for _, body in read_members(store, source.archive_name, {source.file_path: entry}))
        except (ArchiveError, StopIteration) as error:
            raise SourceUnavailable(f"{source.file_path}: its archive cannot give it back ({error})") from None
    try:
        with store.open_payload(source.file_path, source.file_size_bytes) as handle:
            body = handle.read()
    except (OSError, PayloadError) as error:
        raise SourceUnavailable(f"{source.file_path} cannot be read ({error}); restore it, then try again") from None
    if hashlib.sha256(body).hexdigest() != source.checksum_sha256:
        raise SourceUnavailable(f"{source.file_path} no longer matches its SHA-256; put its bytes back first")
    return body


def page_reader(store: PayloadStore) -> PageReader:
    """Read and parse the pages of registered files, each at most once (a cache for one reload)."""
    pages: dict[int, PayloadPage] = {}

    def page_of(source: SourceFile) -> PayloadPage:
        if source.file_id not in pages:
            try:
                pages[source.file_id] = read_page(read_registered(store, source))
            except PayloadFormatError as error:
                raise SourceUnavailable(f"{source.file_path} is no page any more: {error}") from None
        return pages[source.file_id]

    return page_of


def _recompute_first_seen(conn: Connection, property_ids: Sequence[str]) -> None:
    """first_seen_at = the capture time of the earliest file that still delivers the property."""
    if not property_ids:
        return
    earliest = (
        select(func.min(files.c.captured_at))
        .select_from(file_properties.join(files, files.c.file_id == file_properties.c.file_id))
        .where(file_properties.c.property_id == property_sightings.c.property_id)
        .scalar_subquery()
    )
    conn.execute(
        update(property_sightings)
        .where(property_sightings.c.property_id.in_(list(property_ids)))
        .values(first_seen_at=func.coalesce(earliest, property_sightings.c.first_seen_at))
    )
