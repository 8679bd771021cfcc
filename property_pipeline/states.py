"""The states of a payload file and of a capture run, as types: the one spelling of each (docs/design.md draws
the transitions; `db/status.py` is the only code that moves a file from one state to another)."""

from __future__ import annotations

from enum import StrEnum


class _StoredState(StrEnum):
    """A state stored as its name in a text column, which a CHECK constraint keeps to the members."""

    @classmethod
    def sql_check(cls, column: str) -> str:
        """The CHECK constraint's condition: the column holds one of the states."""
        return f"{column} IN ({', '.join(repr(state.value) for state in cls)})"


class FileStatus(_StoredState):
    """Where a registered payload file is in its life: `batch_file_status.status`."""

    PENDING = "PENDING"  # registered, waiting to be loaded
    PROCESSING = "PROCESSING"  # claimed by one processor, under a lease
    COMPLETED = "COMPLETED"  # loaded, in the same transaction as its data (or a duplicate: nothing to load)
    FAILED = "FAILED"  # not loadable as it is; `error_details` says why, `retry` puts it back
    DISCARDED = (
        "DISCARDED"  # a FAILED file an operator gave up on, with the reason; never loaded, `retry` takes it back
    )


# Files that may still be loaded (a `pending/` marker), and files a processor is done with (a `processed/` one).
WAITING = frozenset({FileStatus.PENDING, FileStatus.PROCESSING})
FINISHED = frozenset({FileStatus.COMPLETED, FileStatus.FAILED, FileStatus.DISCARDED})
# Files nothing more is expected of: a month whose files are all settled is done (and retention may clear it).
SETTLED = frozenset({FileStatus.COMPLETED, FileStatus.DISCARDED})


class CaptureRunState(_StoredState):
    """A capture run (`capture_runs.state`): running, done, or stopped early and resumable."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    INTERRUPTED = "INTERRUPTED"
