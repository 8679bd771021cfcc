"""The Dagster UI in a real browser: `dagster dev` on a prepared pipeline, opened in headless Chromium.

The pipeline database (SQLite) holds a processed month (2026-10, one of its payloads tampered with
afterwards), and a month with a FAILED file and a PENDING one (2026-11). Before the UI starts, the
runs that a person would launch are executed in process into a fresh DAGSTER_HOME: `properties` of
2026-10, the checks on their own (two fail), and the status report. The test then checks what a
person sees: the assets, the month partitions, the report with the failed file's error, the failing
checks. Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.monitoring import pipeline_status_report
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import CampaignCatalog, PayloadStore, PropertyApi, database_resources
from property_pipeline.registration import register_unregistered
from property_pipeline.store.layout import PayloadRoot
from property_pipeline_tests.conftest import IN_CI
from property_pipeline_tests.defs.conftest import UNUSED_API, write_month
from property_pipeline_tests.defs.test_e2e_backfill import fail_once, free_port, process_group, wait_until_serving

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 30_000

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]


def _browser_unavailable_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[browser]')"
    return None


@pytest.fixture(scope="module")
def chromium_available() -> None:
    reason = _browser_unavailable_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the browser test is mandatory)")
        pytest.skip(reason)


def prepare_pipeline(db_url: str, root: PayloadRoot) -> str:
    """Files in two months on a fresh SQLite database; returns the FAILED file's path."""
    engine = create_db_engine(db_url)
    try:
        upgrade(engine)
        write_month(root, "2026-10", files=3, per_file=10)
        november = write_month(root, "2026-11", files=2, per_file=10)
        register_unregistered(engine, root, "browser-test")
        fail_once(engine, root, november[0])  # FAILED: its file was missing when processing ran
        return november[0].relative_path
    finally:
        engine.dispose()


def run_like_a_person(home: Path, db_url: str, root: PayloadRoot, tampered: Path) -> None:
    """Into DAGSTER_HOME: process 2026-10, tamper a payload, run the checks alone, materialize the report."""
    resources: dict[str, Any] = {
        "payload_store": PayloadStore(logs_dir=str(root.logs_dir)),
        **database_resources(db_url),
        "property_api": PropertyApi(base_url=UNUSED_API),
        "campaigns": CampaignCatalog(path=str(home / "no-campaigns.yaml")),
    }
    every = [raw_property_payloads, properties, *ALL_CHECKS, pipeline_status_report]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        october = dg.materialize(
            every, selection=dg.AssetSelection.assets(properties), partition_key="2026-10", resources=resources,
            instance=instance,
        )  # fmt: skip
        assert october.success
        os.chmod(tampered, stat.S_IRUSR | stat.S_IWUSR)
        tampered.write_bytes(tampered.read_bytes().replace(b"Austin", b"Boston", 1))
        checks = dg.materialize(
            every, selection=dg.AssetSelection.checks(*ALL_CHECKS), resources=resources, instance=instance,
            raise_on_error=False,
        )  # fmt: skip
        failing = {e.check_name for e in checks.get_asset_check_evaluations() if not e.passed}
        assert failing == {"payload_files_intact", "no_failed_files"}
        report = dg.materialize(
            every, selection=dg.AssetSelection.assets(pipeline_status_report), resources=resources, instance=instance
        )
        assert report.success


@pytest.fixture
def dagster_ui(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """`dagster dev` on the prepared pipeline; yields (port, the FAILED file's path)."""
    root = PayloadRoot(tmp_path / "logs")
    root.ensure_folders()
    db_url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    failed_path = prepare_pipeline(db_url, root)
    tampered = next((root.logs_dir / "property_payloads" / "2026-10").glob("*batch2_*.json"))

    home = (tmp_path / "dagster_home").absolute()
    (home / ".nux").mkdir(parents=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")  # no "join the community" dialog
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # telemetry off, SQLite storage
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PROPERTY_PIPELINE_DB_URL": db_url,
        "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
        "PROPERTY_PIPELINE_ALERT_WEBHOOK_URL": "",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ["DAGSTER_HOME"] = str(home)  # dagster.yaml reads base_dir from it
    try:
        run_like_a_person(home, db_url, root, tampered)
    finally:
        os.environ.pop("DAGSTER_HOME", None)

    port = free_port()
    log = tmp_path / "dagster-dev.log"
    command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with process_group(command, env, log) as process:
        wait_until_serving(port, process, log)
        yield port, failed_path


def test_the_ui_shows_assets_partitions_the_status_report_and_a_failing_check(
    chromium_available: None, dagster_ui: tuple[int, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    port, failed_path = dagster_ui
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)

            page.goto(f"{base}/assets")
            for name in ("raw_property_payloads", "properties", "pipeline_status_report"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.get_by_text("Loading...")).to_have_count(0)  # the status column has filled in
            page.screenshot(path=ARTIFACTS / "01-asset-catalog.png", full_page=True)

            page.goto(f"{base}/assets/properties?view=partitions")
            expect(page.get_by_text("2026-11", exact=True).first).to_be_visible()
            expect(page.get_by_text("2026-10", exact=True).first).to_be_visible()
            expect(page.get_by_text("Materialized (1)")).to_be_visible()  # 2026-10 was processed
            page.screenshot(path=ARTIFACTS / "02-properties-partitions.png", full_page=True)

            page.goto(f"{base}/assets/pipeline_status_report?view=events")
            expect(page.get_by_role("row", name="backlog_files 1")).to_be_visible()
            expect(page.get_by_role("row", name="failed_files 1")).to_be_visible()
            page.get_by_text("[Show Markdown]").first.click()  # the report opens in a dialog, rendered
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Latest errors")).to_be_visible()
            expect(dialog.get_by_text("is missing from").first).to_be_visible()  # the failed file's error
            expect(dialog.get_by_text(failed_path).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "03-status-report.png", full_page=True)

            page.goto(f"{base}/assets/raw_property_payloads?view=checks")
            expect(page.get_by_text("payload_files_intact").first).to_be_visible()
            expect(page.get_by_text("Failed").first).to_be_visible()
            expect(page.get_by_text("1 payload file(s) missing or changed; restore them")).to_be_visible()
            page.screenshot(path=ARTIFACTS / "04-failing-check.png", full_page=True)
        finally:
            browser.close()
    print(f"\nbrowser checks: {time.monotonic() - started:.1f}s")
