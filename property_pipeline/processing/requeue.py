"""Files going back to PENDING: expired claims before a run, and FAILED files when asked. Markers follow."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Engine

from property_pipeline.db import status
from property_pipeline.db.queries import file_paths, processing_paths
from property_pipeline.states import FileStatus
from property_pipeline.store import markers
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.folder import PayloadRoot

log = logging.getLogger(__name__)


def retry_failed_files(
    engine: Engine,
    store: PayloadStore,
    actor: str,
    *,
    file_ids: Sequence[int] | None = None,
    month: str | None = None,
    all_failed: bool = False,
) -> list[int]:
    """FAILED → PENDING for the chosen files (recorded), with their `pending/` markers; the file ids moved."""
    retried = status.retry_failed(engine, actor, file_ids=file_ids, month=month, all_failed=all_failed)
    for path in file_paths(engine, retried).values():
        store.follow(path, FileStatus.PENDING)
    return retried


def tidy_processing_copies(engine: Engine, root: PayloadRoot) -> int:
    """Remove the copies a processor killed after its commit left in `processing/` (never a live one's)."""
    listed_first = root.processing.is_dir() and any(root.processing.iterdir())
    if not listed_first:
        return 0
    in_flight = {path.rpartition("/")[2] for path in processing_paths(engine)}
    removed = markers.drop_stale_processing_copies(root, in_flight)
    if removed:
        log.info("removed %d processing copies left by processors that stopped", removed)
    return removed


def prepare_backlog(
    engine: Engine,
    store: PayloadStore,
    actor: str,
    *,
    month: str | None = None,
    file_ids: Sequence[int] | None = None,
    include_failed: bool = False,
    mirror_markers: bool = True,
) -> tuple[list[int], list[int]]:
    """Before processing: (files whose lease expired put back to PENDING, FAILED files in scope retried if asked).

    `mirror_markers=False`: the database is not the one the root's markers mirror (a rebuild's target), so
    neither markers nor processing copies are touched."""
    requeued = status.requeue_expired_claims(engine, actor)
    for file_id in requeued:
        log.warning("file %s: lease expired, its processor stopped; back to PENDING", file_id)
    if mirror_markers and store.folder is not None:
        tidy_processing_copies(engine, store.folder)
    retried: list[int] = []
    if include_failed and mirror_markers:
        retried = retry_failed_files(engine, store, actor, file_ids=file_ids, month=month, all_failed=True)
    elif include_failed:
        retried = status.retry_failed(engine, actor, file_ids=file_ids, month=month, all_failed=True)
    return requeued, retried
