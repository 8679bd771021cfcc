"""Scanning every output we can reach for a secret: process output, logs, files, database rows."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, select

from property_pipeline.db.schema import metadata

# A distinctive API key used through capture, the CLI and the sandbox across the fault suite.
API_SECRET = "pp-faults-Xk3y-7Q9zV2-never-logged"


def secret_forms(secret: str) -> list[bytes]:
    """The secret as it could leak: plain, URL-quoted, and base64 (as in an Authorization header)."""
    return sorted({secret.encode(), quote(secret, safe="").encode(), base64.b64encode(secret.encode())})


@dataclass
class ExposureScan:
    """Where a secret was looked for, how much was read, and where it was found."""

    secret: str
    outputs: int = 0
    bytes_scanned: int = 0
    leaks: list[str] = field(default_factory=list)

    def text(self, where: str, content: str | bytes) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.outputs += 1
        self.bytes_scanned += len(data)
        for form in secret_forms(self.secret):
            if form in data:
                self.leaks.append(f"{where} holds {form.decode()!r}")

    def texts(self, outputs: Mapping[str, str | bytes]) -> None:
        for where, content in outputs.items():
            self.text(where, content)

    def folder(self, folder: Path) -> None:
        """Every regular file under `folder` (payloads, markers, locks, logs, database files)."""
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                self.text(str(path), path.read_bytes())

    def database(self, engine: Engine, tables: Iterable[str] | None = None) -> None:
        """Every row of every pipeline table, as text."""
        wanted = set(tables) if tables is not None else None
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                if wanted is None or table.name in wanted:
                    rows = conn.execute(select(table)).all()
                    self.text(f"table {table.name}", "\n".join(repr(tuple(row)) for row in rows))
