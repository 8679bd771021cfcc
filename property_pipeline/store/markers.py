"""The readable folder mirror of file states: `pending/`, `processing/`, `processed/`.

The database is the authority; these markers follow it after each commit and
`reconcile_markers` rebuilds them from the database after a crash.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from property_pipeline.store.layout import PayloadRoot


def _marker(folder: Path, relative_path: str) -> Path:
    month, name = relative_path.split("/")
    return folder / month / name


def mark_pending(root: PayloadRoot, relative_path: str) -> None:
    """Create the empty `pending/YYYY-MM/<name>` marker and drop any `processed/` one."""
    marker = _marker(root.pending, relative_path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    _marker(root.processed, relative_path).unlink(missing_ok=True)


def mark_processed(root: PayloadRoot, relative_path: str, summary: dict[str, object]) -> None:
    """Write `processed/YYYY-MM/<name>` with the outcome and drop the `pending/` marker."""
    marker = _marker(root.processed, relative_path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_name(f".{marker.name}.tmp")
    temporary.write_text(json.dumps(summary, sort_keys=True, default=str))
    os.replace(temporary, marker)
    _marker(root.pending, relative_path).unlink(missing_ok=True)


def clear_markers(root: PayloadRoot, relative_path: str) -> None:
    """Remove both markers of a file (retention deleted it)."""
    _marker(root.pending, relative_path).unlink(missing_ok=True)
    _marker(root.processed, relative_path).unlink(missing_ok=True)


def processing_copy(root: PayloadRoot, file_id: int, source: Path) -> Path:
    """Copy a payload into `processing/` for the duration of its processing and return the copy."""
    root.processing.mkdir(parents=True, exist_ok=True)
    target = root.processing / f"{file_id}_{source.name}"
    target.unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return target


def drop_processing_copy(copy: Path) -> None:
    copy.unlink(missing_ok=True)


def reconcile_markers(root: PayloadRoot, states: dict[str, str]) -> int:
    """Rebuild the marker folders from `{relative_path: status}`; returns how many markers changed."""
    changed = 0
    for relative_path, status in states.items():
        pending = _marker(root.pending, relative_path)
        processed = _marker(root.processed, relative_path)
        if status in {"PENDING", "PROCESSING"}:
            if not pending.exists() or processed.exists():
                mark_pending(root, relative_path)
                changed += 1
        elif status in {"COMPLETED", "FAILED"}:
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
    in_flight = {path.split("/")[1] for path, status in states.items() if status == "PROCESSING"}
    if root.processing.exists():
        for leftover in root.processing.iterdir():
            if leftover.name.partition("_")[2] not in in_flight:
                leftover.unlink(missing_ok=True)
                changed += 1
    return changed
