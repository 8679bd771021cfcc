"""Named locks held by one command at a time, wherever the commands run: in the pipeline's database.

PostgreSQL: a session-level advisory lock on a connection of its own, held for the block (so it is
released if the process dies: the server ends its session). Every node that shares the database
shares the lock. SQLite (one machine): an exclusive `flock` on a file beside the database file.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from property_pipeline.errors import PipelineError

log = logging.getLogger(__name__)
LOCK_NAMESPACE = 7_220_002  # first key of the two-key advisory locks; the migration lock uses 7_220_001


class LockHeld(PipelineError):
    """Another command holds the lock (raised only when asked not to wait)."""


def _key(name: str) -> int:
    """A stable 32-bit key for the name (advisory locks take two int4 keys)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


@contextmanager
def exclusive(
    engine: Engine, name: str, *, wait: bool = True, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold the lock `name` for the block. Held elsewhere: wait for it (calling `on_wait` first), or raise LockHeld."""
    if engine.dialect.name == "postgresql":
        with _advisory(engine, name, wait, on_wait):
            yield
    else:
        with _file_lock(engine, name, wait, on_wait):
            yield


@contextmanager
def _advisory(engine: Engine, name: str, wait: bool, on_wait: Callable[[], None] | None) -> Iterator[None]:
    keys = {"namespace": LOCK_NAMESPACE, "key": _key(name)}
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        taken = connection.execute(text("SELECT pg_try_advisory_lock(:namespace, :key)"), keys).scalar()
        if not taken:
            if not wait:
                raise LockHeld(name)
            if on_wait is not None:
                on_wait()
            connection.execute(text("SELECT pg_advisory_lock(:namespace, :key)"), keys)
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), keys)


@contextmanager
def _file_lock(engine: Engine, name: str, wait: bool, on_wait: Callable[[], None] | None) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # one connection, one process: nothing to exclude
        return
    path = Path(f"{database}.{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockHeld(name) from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
