"""The readable folder mirror of file states: `pending/`, `processing/`, `processed/`.

The database is the authority; these markers follow it after each commit and
`reconcile_markers` rebuilds them from the database after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from property_pipeline.states import FINISHED, WAITING, FileStatus
from property_pipeline.store.layout import PayloadPathError, parse_payload_name, validate_month

if TYPE_CHECKING:
    from property_pipeline.store.folder import PayloadRoot

log = logging.getLogger(__name__)


def _markers(root: PayloadRoot, relative_path: str) -> tuple[Path, Path] | None:
    """(pending, processed) marker paths; None for a path that is not `YYYY-MM/<payload name>`.

    The status table is the authority: a row with any other path (a buggy or hostile registrar)
    gets no marker, so a marker can never be written outside its folder and never stops a run.
    """
    month, _, name = relative_path.partition("/")
    try:
        validate_month(month)
        parse_payload_name(name)
    except PayloadPathError as error:
        log.warning("no marker for %r: %s", relative_path, error)
        return None
    return root.pending / month / name, root.processed / month / name


def mark_pending(root: PayloadRoot, relative_path: str) -> None:
    """Create the empty `pending/YYYY-MM/<name>` marker and drop any `processed/` one."""
    if (paths := _markers(root, relative_path)) is None:
        return
    marker, processed = paths
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    processed.unlink(missing_ok=True)


def mark_processed(root: PayloadRoot, relative_path: str, summary: dict[str, object]) -> None:
    """Write `processed/YYYY-MM/<name>` with the outcome and drop the `pending/` marker."""
    if (paths := _markers(root, relative_path)) is None:
        return
    pending, marker = paths
    marker.parent.mkdir(parents=True, exist_ok=True)
    # An atomic replace, without the fsyncs of store/publish.py: markers are a readable mirror that
    # `reconcile` rebuilds from the database, written on every file's hot path.
    temporary = marker.with_name(f".{marker.name}.tmp")
    temporary.write_text(json.dumps(summary, sort_keys=True, default=str))
    os.replace(temporary, marker)
    pending.unlink(missing_ok=True)


def follow(root: PayloadRoot, relative_path: str, status: str, **summary: object) -> None:
    """Make a file's markers say what its status row says: the one way a front door updates them.

    PENDING and PROCESSING files have a `pending/` marker; finished ones a `processed/` marker holding
    the status and the given summary (file id, counts, error, duplicate_of; None values left out).
    """
    if status in WAITING:
        mark_pending(root, relative_path)
    else:
        mark_processed(
            root,
            relative_path,
            {"status": status, **{key: value for key, value in summary.items() if value is not None}},
        )


def clear_markers(root: PayloadRoot, relative_path: str) -> None:
    """Remove both markers of a file (retention deleted it)."""
    for marker in _markers(root, relative_path) or ():
        marker.unlink(missing_ok=True)


def processing_copy(root: PayloadRoot, file_id: int, source: Path) -> Path:
    """Put a payload into `processing/` for the duration of its processing and return that name.

    A hard link where the filesystem allows one: payload files are written once and never changed, so a
    second name for the same bytes is as good as a copy and costs no bytes written (a copy doubled the
    disk traffic of processing). Elsewhere (another filesystem, links not permitted) a real copy. The
    processor reads the payload through a handle it opened before making this name, so tidying the
    name away early (a link keeps the payload's old mtime, so it never looks young) costs nothing.
    Named `{file_id}_{claim}_{payload name}`, unique per claim: a name left by a processor that died is
    never confused with the one of the processor that claims the file next.
    """
    root.processing.mkdir(parents=True, exist_ok=True)
    target = root.processing / f"{file_id}_{uuid.uuid4().hex[:8]}_{source.name}"
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def drop_processing_copy(copy: Path) -> None:
    copy.unlink(missing_ok=True)


# A processor reads its copy right after making it (and keeps it open): an older copy whose file is
# not PROCESSING was left by a processor that died between its commit and dropping the copy.
STALE_COPY_SECONDS = 60.0


def drop_stale_processing_copies(root: PayloadRoot, in_flight: set[str], older_than: float = STALE_COPY_SECONDS) -> int:
    """Remove the copies in `processing/` of files not in `in_flight` (the payload names of the PROCESSING files)
    that are older than `older_than` seconds; returns how many. A copy made after `in_flight` was read is young."""
    if not root.processing.is_dir():
        return 0
    removed = 0
    now = time.time()
    for leftover in root.processing.iterdir():
        try:
            young = now - leftover.stat().st_mtime < older_than
        except FileNotFoundError:
            continue
        if young or leftover.name.split("_", 2)[-1] in in_flight:
            continue
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def reconcile_markers(root: PayloadRoot, states: dict[str, str]) -> int:
    """Rebuild the marker folders from `{relative_path: status}`; returns how many markers changed."""
    changed = 0
    for relative_path, status in states.items():
        if (paths := _markers(root, relative_path)) is None:
            continue
        pending, processed = paths
        if status in WAITING:
            if not pending.exists() or processed.exists():
                mark_pending(root, relative_path)
                changed += 1
        elif status in FINISHED:
            if not processed.exists() or pending.exists():
                mark_processed(root, relative_path, {"status": status, "reconciled": True})
                changed += 1
    for folder in (root.pending, root.processed):
        if not folder.exists():
            continue
        for marker in folder.glob("*/*"):
            relative_path = f"{marker.parent.name}/{marker.name}"
            if relative_path not in states and not marker.name.startswith("."):
                marker.unlink(missing_ok=True)
                changed += 1
    # Copies left in processing/ by a crashed processor are never needed (the original is
    # intact); copies of files that are PROCESSING right now belong to a live processor.
    in_flight = {path.rpartition("/")[2] for path, status in states.items() if status == FileStatus.PROCESSING}
    return changed + drop_stale_processing_copies(root, in_flight, older_than=0.0)
