"""Fixtures for the Dagster definitions: resources on the real database and payload folders, a test instance."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine, create_engine, make_url, select, text

from property_pipeline.db.schema import batch_file_status
from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import (
    CampaignCatalog,
    PayloadStore,
    PropertyApi,
    QuarantinePolicy,
    RetentionPolicy,
    database_resources,
)
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import StoredPayload
from property_pipeline_tests.factories import make_record, write_page

UNUSED_API = "http://127.0.0.1:9"  # nothing listens here: a test that should not call the API fails if it does
ALL_ASSETS_AND_CHECKS: list[Any] = [raw_property_payloads, properties, *ALL_CHECKS]


DAGSTER_WARNINGS_AS_ERRORS = [
    "error::DeprecationWarning",
    "error::dagster.BetaWarning",
    "error::dagster.PreviewWarning",
    "error::dagster.SupersessionWarning",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every Dagster deprecation, beta, preview or supersession warning in these tests is a failure."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            for spec in DAGSTER_WARNINGS_AS_ERRORS:
                item.add_marker(pytest.mark.filterwarnings(spec), append=False)


@pytest.fixture
def campaigns_file(tmp_path: Path) -> Path:
    path = tmp_path / "campaigns.yaml"
    path.write_text(
        "campaigns:\n"
        "  - id: tx-sfr\n    criteria: {records: 50}\n"
        "  - id: off-campaign\n    enabled: false\n    criteria: {state: CA}\n"
    )
    return path


@pytest.fixture
def resources(db_url: str, root: PayloadRoot, campaigns_file: Path) -> dict[str, dg.ConfigurableResource]:
    """The project's resources pointed at this test's database and data root."""
    return {
        "payload_store": PayloadStore(logs_dir=str(root.logs_dir)),
        **database_resources(db_url, lease_seconds=60),
        "property_api": PropertyApi(base_url=UNUSED_API, page_size=20),
        "campaigns": CampaignCatalog(path=str(campaigns_file)),
        "retention_policy": RetentionPolicy(keep_months=2, archive=True),
        "quarantine_policy": QuarantinePolicy(),
    }


@pytest.fixture
def dagster_pg_env(postgres_url: str) -> Iterator[dict[str, str]]:
    """A fresh, empty PostgreSQL database for Dagster's own storage, as dagster.postgres.yaml's variables."""
    url = make_url(postgres_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"pp_dagster_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield {
            "DAGSTER_PG_HOST": url.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_PG_USER": url.username or "postgres",
            "DAGSTER_PG_PASSWORD": url.password or "",
            "DAGSTER_PG_DB": name,
        }
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def instance() -> Iterator[dg.DagsterInstance]:
    """One Dagster instance for the session (creating one takes seconds); tests look only at their own runs."""
    with dg.instance_for_test() as instance:
        yield instance


def materialize_month(
    month: str,
    resources: Mapping[str, Any],
    instance: dg.DagsterInstance,
    *,
    selection: Sequence[Any] = (),
    run_config: Mapping[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the selected assets (and their checks) for one month, in process, without raising."""
    return dg.materialize(
        ALL_ASSETS_AND_CHECKS,
        selection=dg.AssetSelection.assets(*selection) if selection else None,
        partition_key=month,
        resources=resources,
        instance=instance,
        run_config=run_config or {},
        raise_on_error=False,
    )


def checks_by_name(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def metadata_values(event: Any) -> dict[str, Any]:
    """{key: plain value} of a materialization's or evaluation's metadata."""
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def write_month(
    root: PayloadRoot, month: str, files: int, per_file: int = 5, campaign: str = "camp-1"
) -> list[StoredPayload]:
    """`files` payload pages captured in `month`, a minute apart, with ids unique to the month."""
    year, number = (int(part) for part in month.split("-"))
    start = datetime(year, number, 3, 8, 0, tzinfo=UTC)
    return [
        write_page(
            root,
            [make_record(f"{campaign}-{month}-{batch}-{index}") for index in range(per_file)],
            campaign=campaign,
            batch=batch,
            captured_at=start + timedelta(minutes=batch),
        )
        for batch in range(1, files + 1)
    ]


def statuses(engine: Engine) -> dict[str, str]:
    """{file_path: status} of every registered file."""
    with engine.connect() as conn:
        return dict(conn.execute(select(batch_file_status.c.file_path, batch_file_status.c.status)).all())
