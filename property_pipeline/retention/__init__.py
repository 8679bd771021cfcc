"""Retention: archive old months' settled payload files, verify the archive, then delete the originals.

Policy: the current month and the `keep_months - 1` months before it stay on disk. In older
months only settled files (COMPLETED, or DISCARDED by an operator) are removed; PENDING,
PROCESSING and FAILED files, and files the database does not know, are reported and never touched.

Crash safety with archiving on: archive written (temporary file, fsync, rename, fsync folder)
and read back → `archived_at` + `archive_name` committed → original unlinked → `deleted_at`
committed. At every moment a file is on disk or inside a verified archive the database names;
a file that is gone but has no `deleted_at` yet gets it on the next run, once its archive verifies.
With archiving off there is nothing to check a missing file against, so `deleted_at` is
committed first and the file unlinked after: an interrupted run leaves files that the next run
removes, never a missing file the database still expects.
"""

from property_pipeline.retention.apply import MonthResult, RetentionReport, apply_retention
from property_pipeline.retention.archive import (
    ArchiveError,
    ManifestEntry,
    archive_name_for,
    checked_archive_name,
    verify_archive,
    write_archive,
)
from property_pipeline.retention.months import month_lock
from property_pipeline.retention.plan import (
    Failure,
    MonthPlan,
    RetentionFile,
    RetentionPlan,
    SkippedFile,
    oldest_kept_month,
    plan_retention,
)
from property_pipeline.retention.restore import RestoreReport, restore_month

__all__ = [
    "ArchiveError",
    "Failure",
    "ManifestEntry",
    "MonthPlan",
    "MonthResult",
    "RestoreReport",
    "RetentionFile",
    "RetentionPlan",
    "RetentionReport",
    "SkippedFile",
    "apply_retention",
    "archive_name_for",
    "checked_archive_name",
    "month_lock",
    "oldest_kept_month",
    "plan_retention",
    "restore_month",
    "verify_archive",
    "write_archive",
]
