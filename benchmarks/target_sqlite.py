"""Target 3: `property-pipeline process` on SQLite against a bare single-transaction executemany.

Goal: at least 0.9x the bare insert of the same rows into an empty table like `properties` (one table holding the
content and lineage columns, with its primary key, in the freshly migrated database; 0.7x in the first round).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from benchmarks.common import (
    WIDE_TABLE,
    TargetResult,
    create_wide_table,
    log,
    python_child,
    require_ok,
    scratch_folder,
    sizes_for,
)
from benchmarks.data import dataset
from benchmarks.pipeline import exactly_once_problems, process_command, registered_backlog
from property_pipeline.db.engine import create_db_engine, upgrade


def _migrated_sqlite(folder: Path) -> tuple[str, Path]:
    path = folder / "pipeline.db"
    url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    return url, path


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    data = dataset(sizes.files)
    files = data.as_argument()
    result = TargetResult(
        "sqlite",
        f"3. Processing on SQLite, {data.records:,} records ({data.files} files)",
        mode,
        setup={"files": data.files, "records": data.records},
    )
    values: dict[str, list[float]] = defaultdict(list)
    for repeat in range(sizes.repeats):
        for name in ("process", "executemany") if repeat % 2 == 0 else ("executemany", "process"):
            log(f"sqlite: repeat {repeat + 1}/{sizes.repeats}: {name}")
            with scratch_folder("sqlite") as folder:
                url, path = _migrated_sqlite(folder)
                if name == "process":
                    logs = folder / "logs"
                    registered_backlog(url, logs, data)
                    _child, measured = process_command(url, logs)
                    problems = exactly_once_problems(url, data.files, data.records)
                    result.check(f"exactly once on SQLite (repeat {repeat + 1})", not problems, "; ".join(problems))
                    values[name].append(data.records / measured.seconds)
                else:
                    create_wide_table(url)
                    arguments = {"db_path": str(path), "data": files, "table": WIDE_TABLE}
                    child = python_child("benchmarks.baselines", "sqlite_executemany", json.dumps(arguments))
                    require_ok(child, "SQLite executemany baseline")
                    measured_bare = child.json()
                    result.check("executemany stored every record", measured_bare["stored"] == data.records)
                    values[name].append(data.records / measured_bare["seconds"])
    result.method("process", "property-pipeline process on SQLite", "rows/s", values["process"])
    result.method(
        "executemany",
        "bare executemany INSERT, one transaction, into an empty table like `properties` (one table, its key)",
        "rows/s",
        values["executemany"],
    )
    result.ratio(
        "SQLite process / bare executemany",
        [a / b for a, b in zip(values["process"], values["executemany"], strict=True)],
        0.9,
    )
    return result
