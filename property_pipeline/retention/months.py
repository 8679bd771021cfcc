"""What cleanup and restore share for one month: its lock, and the temporaries a killed run of either left."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

from sqlalchemy import Engine

from property_pipeline.db import locks
from property_pipeline.store.publish import (
    remove_stale_temporaries,
)

log = logging.getLogger(__name__)


def month_lock(engine: Engine, month: str, on_wait: Callable[[], None] | None = None) -> ContextManager[None]:
    """One command at a time changes a month's files on disk (cleanup, restore), on every node."""
    return locks.exclusive(engine, f"payload-month:{month}", on_wait=on_wait)


def remove_leftovers(folder: Path, final_name_pattern: str) -> None:
    """Delete the temporaries a killed cleanup or restore left (called under the month lock that owns them)."""
    for leftover in remove_stale_temporaries(folder, final_name_pattern):
        log.warning("removed %s, left by an interrupted command", leftover)
