"""Check that every registered payload file is still in the payload store with the bytes it was captured with."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from property_pipeline.db.queries import registered_files_for_verification
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.layout import PayloadPathError


@dataclass(frozen=True)
class VerificationProblem:
    file_id: int
    file_path: str
    problem: str  # missing, checksum mismatch, unsafe path


@dataclass
class VerificationReport:
    checked: int = 0
    problems: list[VerificationProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_files(engine: Engine, store: PayloadStore, month: str | None = None) -> VerificationReport:
    """Re-hash every registered file in scope that retention has not deleted on purpose."""
    report = VerificationReport()
    for file_id, file_path, checksum, size in registered_files_for_verification(engine, month):
        report.checked += 1
        try:
            found = store.hash_payload(file_path)
        except PayloadPathError as error:
            report.problems.append(VerificationProblem(file_id, file_path, f"unsafe path: {error}"))
            continue
        if found is None:
            where = "from disk" if store.folder is not None else f"from {store.describe()}"
            report.problems.append(VerificationProblem(file_id, file_path, f"missing {where}"))
            continue
        actual, actual_size = found
        if actual != checksum:
            report.problems.append(
                VerificationProblem(
                    file_id,
                    file_path,
                    f"checksum mismatch: registered {checksum[:12]}… ({size} bytes), "
                    f"now {actual[:12]}… ({actual_size} bytes)",
                )
            )
    return report
