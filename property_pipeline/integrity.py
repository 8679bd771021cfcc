"""Check that every registered payload file is still on disk with the bytes it was captured with."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from property_pipeline.db.queries import registered_files_for_verification
from property_pipeline.store.layout import PayloadPathError, PayloadRoot
from property_pipeline.store.publish import sha256_file


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


def verify_files(engine: Engine, root: PayloadRoot, month: str | None = None) -> VerificationReport:
    """Re-hash every registered file in scope that retention has not deleted on purpose."""
    report = VerificationReport()
    for file_id, file_path, checksum, size in registered_files_for_verification(engine, month):
        report.checked += 1
        try:
            path = root.resolve(file_path)
        except PayloadPathError as error:
            report.problems.append(VerificationProblem(file_id, file_path, f"unsafe path: {error}"))
            continue
        if not path.is_file():
            report.problems.append(VerificationProblem(file_id, file_path, "missing from disk"))
            continue
        actual, actual_size = sha256_file(path)
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
