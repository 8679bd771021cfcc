"""Checks of the rules of docs/design.md (section 2) that read the database and the folders; violations as text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import Engine, func, select

from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_properties, properties, quarantined_records
from property_pipeline.db.schema import file_status_events as events
from property_pipeline.store.folder import PayloadRoot


def data_violations(engine: Engine) -> list[str]:
    """Exactly once and a truthful status table: a file's data exists if and only if it is COMPLETED, or it is
    being reprocessed (its earlier load stays until the reload replaces it, in the reload's transaction).

    Checks per file: COMPLETED, or waiting to be reprocessed ⇔ link rows == success_count and quarantine
    rows == error_count; any other state ⇔ no link and no quarantine row. Every property row comes from
    such a file, and every linked property exists.
    """
    violations: list[str] = []
    with engine.connect() as conn:
        rows = conn.execute(
            select(files.c.file_id, files.c.status, files.c.success_count, files.c.error_count, files.c.locked_by)
        ).all()
        reprocessing = set(
            conn.execute(
                select(events.c.file_id)
                .join(files, files.c.file_id == events.c.file_id)
                .where(events.c.detail.like("reprocess: %"), files.c.status.in_(["PENDING", "PROCESSING"]))
            ).scalars()
        )
        links = dict(
            conn.execute(select(file_properties.c.file_id, func.count()).group_by(file_properties.c.file_id)).all()
        )
        quarantined = dict(
            conn.execute(
                select(quarantined_records.c.file_id, func.count()).group_by(quarantined_records.c.file_id)
            ).all()
        )
        orphans = conn.execute(
            select(func.count())
            .select_from(properties.outerjoin(files, files.c.file_id == properties.c.source_file_id))
            .where(
                (files.c.status.is_(None))
                | ((files.c.status != "COMPLETED") & files.c.file_id.not_in(sorted(reprocessing) or [-1]))
            )
        ).scalar_one()
        unlinked = conn.execute(
            select(func.count())
            .select_from(
                file_properties.outerjoin(properties, properties.c.property_id == file_properties.c.property_id)
            )
            .where(properties.c.property_id.is_(None))
        ).scalar_one()
    for row in rows:
        linked, held = links.get(row.file_id, 0), quarantined.get(row.file_id, 0)
        if row.status == "COMPLETED" or row.file_id in reprocessing:
            if linked != (row.success_count or 0) or held != (row.error_count or 0):
                violations.append(
                    f"file {row.file_id} COMPLETED with success_count={row.success_count} error_count="
                    f"{row.error_count} but {linked} link rows and {held} quarantined rows"
                )
        elif linked or held:
            violations.append(f"file {row.file_id} is {row.status} yet has {linked} link and {held} quarantine rows")
        if row.status == "PROCESSING" and row.locked_by is None:
            violations.append(f"file {row.file_id} is PROCESSING without an owner: it could never be requeued")
    if orphans:
        violations.append(f"{orphans} property rows come from a file that is neither COMPLETED nor reprocessed")
    if unlinked:
        violations.append(f"{unlinked} link rows point at a property that does not exist")
    return violations


def property_ids_by_file(engine: Engine) -> dict[int, Counter[str]]:
    """{file_id: Counter(property_id)} of the link table, to compare with what each file holds."""
    result: dict[int, Counter[str]] = {}
    with engine.connect() as conn:
        for file_id, property_id in conn.execute(select(file_properties.c.file_id, file_properties.c.property_id)):
            result.setdefault(file_id, Counter())[property_id] += 1
    return result


def statuses(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(files.c.file_id, files.c.status)).all())  # type: ignore[arg-type]


def marker_violations(root: PayloadRoot, states: Mapping[str, str]) -> list[str]:
    """The folder mirror agrees with the database: one marker per file, in the folder of its state."""
    violations = []
    for relative_path, status in states.items():
        pending = (root.pending / relative_path).exists()
        processed = (root.processed / relative_path).exists()
        wanted = (True, False) if status in {"PENDING", "PROCESSING"} else (False, True)
        if (pending, processed) != wanted:
            violations.append(f"{relative_path} is {status} but pending marker={pending}, processed marker={processed}")
    leftovers = [path.name for path in Path(root.processing).iterdir()] if root.processing.exists() else []
    if leftovers and not any(status == "PROCESSING" for status in states.values()):
        violations.append(f"processing/ still holds {leftovers[:3]} with no file PROCESSING")
    return violations
