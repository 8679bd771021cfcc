"""Shared fixtures: a real SQLite file and the real PostgreSQL server, real payload folders, a real S3 server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.s3 import S3Store
from property_pipeline_tests.s3server import CREDENTIALS, MotoServer, client_for

PG_ADMIN_URL = os.environ.get("PROPERTY_PIPELINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TABLES = (
    "alerts",
    "property_market_summary",
    "capture_runs",
    "file_status_events",
    "file_properties",
    "quarantined_records",
    "property_sightings",
    "property_records",
    "batch_file_status",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the PostgreSQL server are marked `postgres`, so the fast loop (`make check`) can leave them
    to `make test`: the PostgreSQL variant of a `db_url` test, and every test using `postgres_url`."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        variant = getattr(getattr(item, "callspec", None), "params", {}).get("db_url")
        if variant == "postgresql" or (variant is None and "postgres_url" in fixtures):
            item.add_marker(pytest.mark.postgres)


def _postgres_unreachable_reason() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {error.__class__.__name__}: {str(error).splitlines()[0]}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to the newest schema; dropped afterwards."""
    reason = _postgres_unreachable_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests are mandatory)")
        pytest.skip(reason)
    name = f"pp_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs on both a real SQLite file and the real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pipeline.db'}"
        engine = create_db_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def root(tmp_path: Path) -> PayloadRoot:
    root = PayloadRoot(tmp_path / "logs")
    root.ensure_folders()
    return root


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """moto's S3 server (a real HTTP server speaking the S3 API) on a free loopback port, for the session."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


def s3_environment(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point boto3 (in this process or a child) at a loopback server."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture
def s3_store(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """An empty bucket of its own on the moto server, under a prefix; the AWS variables point at it."""
    for name, value in s3_environment(s3_server.url).items():
        monkeypatch.setenv(name, value)
    bucket = f"pp-{uuid.uuid4().hex[:16]}"
    client = client_for(s3_server.url)
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, "landing", client=client)


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, root: PayloadRoot) -> PayloadStore:
    """Each test that takes this runs on both payload store backends: the data root folder and S3 (moto)."""
    if request.param == "folder":
        return root
    return request.getfixturevalue("s3_store")  # type: ignore[no-any-return]
