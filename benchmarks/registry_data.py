"""A registry of many files, inserted in bulk by SQL: the history a national pipeline has after a few years.

`fill_registry` writes synthetic rows into `batch_file_status` of a PostgreSQL database: history (24
months of settled files in 5 campaigns: COMPLETED, a few FAILED and DISCARDED, duplicates, the older
half archived and deleted by retention), then the month being checked (`CHECKED_MONTH`: 2,500
COMPLETED files with 400 link rows each in `file_properties`) and the backlog (`BACKLOG_MONTH`: 2,500
PENDING files, the newest ids); every history file has one link row. No payload file is behind
these rows: the measured commands read the status table only, and the sensor tick brings real
files of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

HISTORY_MONTHS = 24
CAMPAIGNS = 5
CHECKED_MONTH = "2026-11"
BACKLOG_MONTH = "2026-12"
MONTH_FILES = 2_500  # files of the checked month, and PENDING files of the backlog
LINKS_PER_FILE = 400


@dataclass(frozen=True)
class Registry:
    """What `fill_registry` wrote."""

    files: int  # rows in batch_file_status
    link_rows: int  # rows in file_properties


_HISTORY = """
INSERT INTO batch_file_status (
    file_path, campaign_id, batch_number, month, status, checksum_sha256, file_size_bytes, captured_at,
    created_at, processed_at, error_details, properties_count, success_count, error_count, processing_time_ms,
    attempts, duplicate_of_file_id, archived_at, deleted_at, archive_name
)
SELECT
    m.month || '/hist' || c || '_batch' || lpad(n::text, 7, '0') || '.json',
    'hist' || c,
    n,
    m.month,
    CASE WHEN i % 1000 = 7 THEN 'FAILED' WHEN i % 2000 = 11 THEN 'DISCARDED' ELSE 'COMPLETED' END,
    CASE WHEN i % 100 = 50 THEN md5((i - 1)::text) || md5('x' || (i - 1)) ELSE md5(i::text) || md5('x' || i) END,
    800000 + i % 1000,
    m.start + make_interval(secs => n),
    m.start + make_interval(secs => n + 60),
    m.start + make_interval(secs => n + 120),
    CASE WHEN i % 1000 = 7 OR i % 2000 = 11 THEN 'not a payload page: synthetic failure ' || i END,
    400,
    CASE WHEN i % 1000 = 7 OR i % 2000 = 11 OR i % 100 = 50 THEN 0 ELSE 399 + (i % 2) END,
    CASE WHEN i % 1000 = 7 OR i % 2000 = 11 OR i % 100 = 50 THEN 0 ELSE 1 - (i % 2) END,
    40 + i % 97,
    1,
    CASE WHEN i % 100 = 50 THEN :first_id + i - 2 END,
    CASE WHEN m.k < :archived_months AND i % 1000 <> 7 THEN m.start + interval '70 days' END,
    CASE WHEN m.k < :archived_months AND i % 1000 <> 7 THEN m.start + interval '71 days' END,
    CASE WHEN m.k < :archived_months AND i % 1000 <> 7 THEN 'archive-' || m.month || '.tar' END
FROM generate_series(1, :count) AS g(i)
CROSS JOIN LATERAL (SELECT (i - 1) % :campaigns + 1 AS c, (i - 1) / :campaigns + 1 AS n) AS per_campaign
CROSS JOIN LATERAL (
    SELECT k, to_char(start, 'YYYY-MM') AS month, start
    FROM (SELECT (i - 1) * :months / :count AS k) AS which,
         LATERAL (SELECT timestamptz '2024-11-01 00:00:00+00' + make_interval(months => k::int) AS start) AS s
) AS m
ORDER BY i
"""

_MONTH = """
INSERT INTO batch_file_status (
    file_path, campaign_id, batch_number, month, status, checksum_sha256, file_size_bytes, captured_at,
    created_at, processed_at, properties_count, success_count, error_count, processing_time_ms, attempts
)
SELECT
    CAST(:month AS text) || '/' || CAST(:campaign AS text) || '_batch' || lpad(i::text, 7, '0') || '.json',
    CAST(:campaign AS text),
    i,
    CAST(:month AS text),
    CAST(:status AS text),
    md5(CAST(:month AS text) || CAST(:campaign AS text) || i) || md5('y' || CAST(:month AS text) || i),
    800000,
    CAST(:start AS timestamptz) + make_interval(secs => i),
    CAST(:start AS timestamptz) + make_interval(secs => i + 60),
    CASE WHEN CAST(:status AS text) = 'COMPLETED'
        THEN CAST(:start AS timestamptz) + make_interval(secs => i + 120) END,
    :links,
    CASE WHEN CAST(:status AS text) = 'COMPLETED' THEN :links END,
    CASE WHEN CAST(:status AS text) = 'COMPLETED' THEN 0 END,
    CASE WHEN CAST(:status AS text) = 'COMPLETED' THEN 40 + i % 89 END,
    CASE WHEN CAST(:status AS text) = 'COMPLETED' THEN 1 ELSE 0 END
FROM generate_series(1, :count) AS g(i)
ORDER BY i
"""

_LINKS = """
INSERT INTO file_properties (file_id, property_id)
SELECT f.file_id, 'p' || f.batch_number || '-' || j
FROM batch_file_status AS f CROSS JOIN generate_series(1, :links) AS g(j)
WHERE f.month = :month AND f.campaign_id = :campaign
"""


def fill_registry(
    engine: Engine, files: int, *, month_files: int = MONTH_FILES, links_per_file: int = LINKS_PER_FILE
) -> Registry:
    """`files` registered files: settled history, the checked month and the backlog (see the module docstring)."""
    history = files - 2 * month_files
    if history < HISTORY_MONTHS * CAMPAIGNS:
        raise ValueError(f"{files} files leave too little history beside two months of {month_files}")
    with engine.begin() as conn:
        first_id = int(conn.execute(text("SELECT coalesce(max(file_id), 0) + 1 FROM batch_file_status")).scalar_one())
        conn.execute(
            text(_HISTORY),
            {
                "count": history,
                "campaigns": CAMPAIGNS,
                "months": HISTORY_MONTHS,
                "archived_months": HISTORY_MONTHS // 2,
                "first_id": first_id,
            },
        )
        conn.execute(
            text(
                "INSERT INTO file_properties (file_id, property_id) SELECT file_id, 'h' || file_id "
                "FROM batch_file_status WHERE file_id >= :first_id"
            ),
            {"first_id": first_id},
        )
        checked = {"month": CHECKED_MONTH, "campaign": "checked", "count": month_files, "links": links_per_file}
        conn.execute(text(_MONTH), {**checked, "status": "COMPLETED", "start": "2026-11-01 00:00:00+00"})
        conn.execute(text(_LINKS), checked)
        backlog = {"month": BACKLOG_MONTH, "campaign": "backlog", "count": month_files, "links": links_per_file}
        conn.execute(text(_MONTH), {**backlog, "status": "PENDING", "start": "2026-12-01 00:00:00+00"})
        files = int(conn.execute(text("SELECT count(*) FROM batch_file_status")).scalar_one())
        links = int(conn.execute(text("SELECT count(*) FROM file_properties")).scalar_one())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE batch_file_status"))
        conn.execute(text("VACUUM ANALYZE file_properties"))
    return Registry(files, links)
