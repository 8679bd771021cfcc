"""The Dagster UI in a real browser, as a new user meets it: `demo`, then `dg dev`, then a month gone wrong.

A fresh pipeline database (SQLite) and a fresh DAGSTER_HOME. The user runs `property-pipeline demo`
(the CLI: capture, register, process), then starts the UI as `make dagster` does (`dg dev`). Without
any click the demo's month shows green with the table's row count. Another month gets a payload file
that is truncated on disk after registration; `property-pipeline process` leaves it FAILED, and the
UI shows that month Failed, with the file's error two clicks away (the month, then the run's logs).
After the file is put back, `retry` and `process` turn the month green. Every change is made by the
CLI and reaches the UI through the month sensor; the test only polls, with deadlines. Screenshots go
to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import properties as properties_table
from property_pipeline.defs.partitions import current_month
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.conftest import IN_CI
from property_pipeline_tests.defs.test_e2e_backfill import free_port, process_group, wait_until_serving
from property_pipeline_tests.factories import make_page, make_record

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
# The month sensor ticks every 30 s; a record_month_state run then takes a few seconds to start and finish.
SENSOR_DEADLINE_SECONDS = 120

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(540)]


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


@dataclass
class NewUser:
    """What a new user has: a working folder, the CLI's environment, the UI's port."""

    root: PayloadRoot
    db_url: str
    env: dict[str, str]
    port: int = 0

    def cli(self, *args: str, expect: int = 0) -> str:
        done = subprocess.run(
            [str(BIN / "property-pipeline"), *args],
            cwd=self.root.logs_dir.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == expect, f"property-pipeline {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def table_rows(self) -> int:
        engine = create_db_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(properties_table)).scalar_one())
        finally:
            engine.dispose()


@pytest.fixture
def new_user(tmp_path: Path) -> Iterator[NewUser]:
    """`property-pipeline demo` on a fresh folder, then the UI started as `make dagster` starts it."""
    work = tmp_path / "work"
    work.mkdir()
    root = PayloadRoot(work / "logs")
    home = (tmp_path / "dagster_home").absolute()
    (home / ".nux").mkdir(parents=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")  # no "join the community" dialog
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # telemetry off, SQLite storage
    db_url = f"sqlite:///{work / 'property_pipeline.db'}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PROPERTY_PIPELINE_DB_URL": db_url,
        "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
        "PROPERTY_PIPELINE_ALERT_WEBHOOK_URL": "",
        "PROPERTY_PIPELINE_SETTLE_SECONDS": "0",  # files dropped in by the test are complete at once
        "VIRTUAL_ENV": str(BIN.parent),  # as the Makefile runs dg: the project's environment is the active one
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    user = NewUser(root, db_url, env)
    assert "Demo complete" in user.cli("demo")

    user.port = free_port()
    log = tmp_path / "dg-dev.log"
    command = [str(BIN / "dg"), "dev", "-h", "127.0.0.1", "-p", str(user.port)]
    try:
        with process_group(command, env, log) as process:
            wait_until_serving(user.port, process, log)
            yield user
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "dg-dev.log")  # what the webserver and the daemon said, for a failure


def previous_month(month: str) -> str:
    year, number = (int(part) for part in month.split("-"))
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


def test_a_new_user_sees_the_months_as_the_database_has_them(
    chromium_available: None, new_user: NewUser, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    base = f"http://127.0.0.1:{new_user.port}"
    partitions = f"{base}/assets/properties?view=partitions"
    demo_month, broken_month = current_month(), previous_month(current_month())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def eventually(page: Page, url: str, *texts: str) -> None:
        """Reload `url` until every text is visible: the month sensor reports within a tick, not at once."""
        deadline = time.monotonic() + SENSOR_DEADLINE_SECONDS
        while True:
            page.goto(url)
            try:
                for text in texts:
                    expect(page.get_by_text(text, exact=True).first).to_be_visible(timeout=5_000)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    page.screenshot(path=ARTIFACTS / "timeout.png", full_page=True)
                    raise
                page.wait_for_timeout(2_000)

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

            # 1. After `demo`, without a click: the demo's month is green, the table's row count shown.
            eventually(page, partitions, "Materialized (1)", "Failed (0)")
            page.get_by_text(demo_month, exact=True).first.click()
            expect(page.get_by_text("Materialized", exact=True).last).to_be_visible()
            page.screenshot(path=ARTIFACTS / "01-demo-month-green.png", full_page=True)
            rows = new_user.table_rows()
            page.goto(f"{base}/assets/properties")
            expect(page.get_by_text("Row count", exact=True)).to_be_visible()
            expect(page.get_by_text(f"{rows:,}", exact=True).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "02-properties-row-count.png", full_page=True)

            # 2. A month whose payload file is truncated on disk after registration: `process` leaves it FAILED.
            folder = new_user.root.month_dir(broken_month)
            folder.mkdir(parents=True)
            day = broken_month.replace("-", "") + "05"
            whole, truncated = (
                folder / f"partner_batch1_{day}T080000Z.json",
                folder / f"partner_batch2_{day}T090000Z.json",
            )
            whole.write_bytes(make_page([make_record(f"partner-a-{index}") for index in range(20)]))
            original = make_page([make_record(f"partner-b-{index}") for index in range(20)])
            truncated.write_bytes(original)
            new_user.cli("register", "--month", broken_month)
            os.chmod(truncated, stat.S_IRUSR | stat.S_IWUSR)
            truncated.write_bytes(original[: len(original) // 3])  # a disk that filled up, a copy cut short
            new_user.cli("process", "--month", broken_month, expect=1)
            relative = f"{broken_month}/{truncated.name}"

            eventually(page, partitions, "Failed (1)", "Materialized (1)")
            page.get_by_text(broken_month, exact=True).first.click()  # click 1: the month
            expect(page.get_by_text("failed, and did not materialize this asset", exact=False)).to_be_visible()
            page.screenshot(path=ARTIFACTS / "03-broken-month-failed.png", full_page=True)
            page.get_by_text("View logs", exact=True).first.click()  # click 2: the logs of the run that recorded it
            expect(page.get_by_text(f"{broken_month} is not settled", exact=False).first).to_be_visible()
            expect(page.get_by_text(relative, exact=False).first).to_be_visible()
            expect(page.get_by_text("checksum mismatch", exact=False).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "04-the-files-error.png", full_page=True)

            # 3. The file put back, `retry` and `process`: the month turns green.
            truncated.write_bytes(original)
            new_user.cli("retry", "--month", broken_month)
            new_user.cli("process", "--month", broken_month)
            eventually(page, partitions, "Materialized (2)", "Failed (0)")
            page.get_by_text(broken_month, exact=True).first.click()
            expect(page.get_by_text("rows_delivered_by_month_files", exact=True)).to_be_visible()
            page.screenshot(path=ARTIFACTS / "05-fixed-month-green.png", full_page=True)

            # The month's checks, one verdict per month.
            page.goto(f"{base}/assets/properties?view=checks")
            expect(page.get_by_text("quarantine_rate_acceptable", exact=True).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "06-checks.png", full_page=True)
        finally:
            browser.close()
    print(f"\nnew user in the UI: {time.monotonic() - started:.1f}s")
