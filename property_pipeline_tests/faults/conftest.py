"""Fixtures of the fault-injection suite: a PostgreSQL-only database, a throwaway cluster, the figures summary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline_tests.conftest import IN_CI, TABLES
from property_pipeline_tests.faults.figures import FIGURES_FILE, SESSION_FIGURES
from property_pipeline_tests.faults.pg_cluster import ClusterUnavailable, ThrowawayCluster


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """The session's database on the shared PostgreSQL server, emptied for this test."""
    engine = create_db_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return postgres_url


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    """A private PostgreSQL cluster on its own port that tests may stop and restart; removed afterwards."""
    try:
        server = ThrowawayCluster()
    except ClusterUnavailable as error:
        if IN_CI:
            pytest.fail(f"{error} (CI=true: database-fault tests are mandatory)")
        pytest.skip(str(error))
    try:
        try:
            server.init()
        except ClusterUnavailable as error:
            if IN_CI:
                pytest.fail(str(error))
            pytest.skip(str(error))
        yield server
    finally:
        server.destroy()


@pytest.fixture
def cluster_db_url(cluster: ThrowawayCluster) -> str:
    """A fresh, migrated database on the throwaway cluster (which is running when the test starts)."""
    if not cluster.is_running():
        cluster.start()
    url = cluster.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show every scenario's figures at the end of the run, whether or not output was captured."""
    if SESSION_FIGURES:
        terminalreporter.section("fault-injection figures")
        for line in SESSION_FIGURES:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(also in {FIGURES_FILE})")
