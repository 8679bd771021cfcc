"""A throwaway PostgreSQL cluster (initdb into a temporary folder, its own port) that tests may stop and restart.

The shared server on 127.0.0.1:5432 is never touched: database-fault tests restart only this one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text

PG_BIN = Path(os.environ.get("PROPERTY_PIPELINE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ClusterUnavailable(RuntimeError):
    """initdb/pg_ctl are not installed or cannot run here."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` OS user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class ThrowawayCluster:
    """initdb + pg_ctl on a free loopback port; `stop`, `start`, `restart` at will, `destroy` in a finally."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise ClusterUnavailable(f"{PG_BIN / 'initdb'} not found (set PROPERTY_PIPELINE_TEST_PG_BIN)")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise ClusterUnavailable("running as root without runuser: cannot start PostgreSQL as another user")
        self.folder = Path(tempfile.mkdtemp(prefix="pp-faults-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.folder.chmod(0o700)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(_as_postgres([str(PG_BIN / args[0]), *args[1:]]), capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"{args[0]} failed ({result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}"
            )

    def init(self) -> ThrowawayCluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        return self.start()

    def start(self) -> ThrowawayCluster:
        # fsync off (a server crash keeps what reached the OS; commits stay synchronous), loopback only.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
            "-c full_page_writes=off -c max_connections=40"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.database_url(name)

    def destroy(self) -> None:
        """Stop the server (immediately) and remove its folder; safe to call in a finally."""
        try:
            if self.is_running():
                self.stop("immediate")
        except (ClusterUnavailable, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
