"""Secrets and exposure: the API key never shows up anywhere, servers bind to loopback, SQL is parameterized.

A distinctive key is used through the CLI (capture, a refused key, a key-bearing URL, process,
status, verify, demo), the sandbox-api command, the core in process (with DEBUG logging) and a
Dagster materialization; then every output we can reach is scanned for it in plain, URL-quoted
and base64 form: subprocess stdout/stderr, log records, every file under the data root and the
working folder, the database rows and the SQLite files themselves, and the Dagster instance's
event log, run records and storage folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import select as io_select
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster_shared.serdes import serialize_value

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, SandboxServer, serve_forever
from property_pipeline.capture import Campaign, capture_campaign
from property_pipeline.cli import main
from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.defs.partitions import current_month
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import pipeline_resources
from property_pipeline.settings import Settings
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.faults.exposure import API_SECRET, ExposureScan
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO, cli_command, cli_env, run_cli
from property_pipeline_tests.faults.sql_audit import audit_package, audit_source

pytestmark = pytest.mark.faults

PACKAGE = REPO / "property_pipeline"
WRONG_KEY = "pp-faults-WRONG-key-5Rt8"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'secrets.db'}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _read_line(process: subprocess.Popen[str], deadline_seconds: float) -> str:
    """The first line the process prints, waiting at most `deadline_seconds`."""
    assert process.stdout is not None
    ready, _, _ = io_select.select([process.stdout], [], [], deadline_seconds)
    if not ready:
        raise TimeoutError("the sandbox printed nothing in time")
    return process.stdout.readline()


@pytest.fixture
def sandbox_cli(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`property-pipeline -v sandbox-api` on a free port, requiring the key, failing each page's first request."""
    env = cli_env("sqlite://", PayloadRoot(tmp_path / "unused"), PROPERTY_API_KEY=API_SECRET)
    process = subprocess.Popen(
        cli_command("-v", "sandbox-api", "--port", "0", "--records", "200", "--fail-first", "1"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = _read_line(process, 30)
        match = re.search(r"POST (http://127\.0\.0\.1:\d+)/v2/PropertySearch", banner)
        assert match, banner
        yield match[1], process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def _materialize_with_dagster(
    monkeypatch: pytest.MonkeyPatch, db_url: str, root: PayloadRoot, tmp_path: Path, api_key: str
) -> tuple[bool, str, Path]:
    """Capture and process the current month through Dagster, with resources built from the environment."""
    campaigns = tmp_path / "campaigns.yaml"
    campaigns.write_text("campaigns:\n  - id: dagster-sec\n    criteria: {records: 60}\n")
    instance_dir = tmp_path / f"dagster-{api_key[:12]}"
    instance_dir.mkdir()
    with SandboxServer(SandboxConfig(records=60, api_key=API_SECRET, faults=FaultConfig(fail_first=1))) as server:
        for name, value in {
            "PROPERTY_API_KEY": api_key,
            "PROPERTY_API_BASE_URL": server.base_url,
            "PROPERTY_API_PAGE_SIZE": "20",
            "PROPERTY_PIPELINE_DB_URL": db_url,
            "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
            "PROPERTY_PIPELINE_CAMPAIGNS_FILE": str(campaigns),
        }.items():
            monkeypatch.setenv(name, value)
        with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
            result = dg.materialize(
                [raw_property_payloads, properties],
                partition_key=current_month(),
                resources=pipeline_resources(Settings.from_env()),
                instance=instance,
                raise_on_error=False,
            )
            run = instance.get_run_by_id(result.run_id)
            text = "\n".join(serialize_value(record) for record in instance.all_logs(result.run_id))
            text += "\n" + serialize_value(run)
    return result.success, text, instance_dir


@pytest.mark.slow
def test_the_api_key_never_appears_in_any_output_log_file_row_or_dagster_event(
    sqlite_url: str,
    root: PayloadRoot,
    tmp_path: Path,
    sandbox_cli: tuple[str, subprocess.Popen[str]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base_url, sandbox_process = sandbox_cli
    env = cli_env(sqlite_url, root, PROPERTY_API_BASE_URL=base_url, PROPERTY_API_KEY=API_SECRET)
    env["PROPERTY_API_PAGE_SIZE"] = "100"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    outputs: dict[str, str] = {}

    def cli(label: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        result = run_cli({**env, **extra}, "-v", *args, cwd=workdir)
        outputs[f"{label} stdout"], outputs[f"{label} stderr"] = result.stdout, result.stderr
        return result

    captured = cli("capture", "capture", "--campaign", "secret-cli", "--criteria", '{"records": 200}', "--json")
    assert captured.returncode == 0, captured.stderr
    assert json.loads(captured.stdout)["captures"][0]["pages"] == 2, "the key was accepted: pages were stored"
    assert "retrying" in captured.stderr, "the sandbox failed each page once: the retry path logged"
    one_page = ("--criteria", '{"records": 10}', "--max-pages", "1")
    refused = cli("refused", "capture", "--campaign", "secret-bad", *one_page, PROPERTY_API_KEY=WRONG_KEY)
    assert refused.returncode == 1 and "401" in refused.stderr and WRONG_KEY not in refused.stderr + refused.stdout
    in_url = cli(
        "key in url",
        "capture",
        "--campaign",
        "secret-url",
        *one_page,
        PROPERTY_API_BASE_URL=f"{base_url}/k/{API_SECRET}",
    )
    assert in_url.returncode == 1 and "404" in in_url.stderr, in_url.stderr
    assert cli("process", "process", "--json").returncode == 0
    assert cli("status", "status", "--json").returncode == 0
    assert cli("verify", "verify").returncode == 0
    demo = cli("demo", "demo", "--records", "60")
    assert demo.returncode == 0, demo.stderr

    caplog.set_level(logging.DEBUG)
    engine = create_db_engine(sqlite_url)
    with PropertySearchClient(base_url, API_SECRET, page_size=100, sleep=lambda _s: None) as client:
        capture_campaign(engine, root, client, Campaign("secret-core", {"records": 200}))
        outputs["client repr"] = repr(client)
    outputs["settings repr"] = repr(Settings.from_env().with_overrides(api_key=API_SECRET))

    dagster_ok, dagster_events, dagster_dir = _materialize_with_dagster(
        monkeypatch, sqlite_url, root, tmp_path, API_SECRET
    )
    assert dagster_ok, "the Dagster run captured and processed the month with the key"
    refused_ok, refused_events, refused_dir = _materialize_with_dagster(
        monkeypatch, sqlite_url, root, tmp_path, WRONG_KEY
    )
    assert not refused_ok and "401" in refused_events
    sandbox_process.terminate()
    sandbox_out, sandbox_err = sandbox_process.communicate(timeout=10)

    exposure = ExposureScan(API_SECRET)
    exposure.texts(outputs)
    exposure.texts(
        {
            "log records": caplog.text,
            "sandbox-api stdout": sandbox_out,
            "sandbox-api stderr": sandbox_err,
            "dagster events and run": dagster_events,
            "dagster events of the refused run": refused_events,
        }
    )
    for folder in (root.logs_dir, workdir, dagster_dir, refused_dir):
        exposure.folder(folder)
    for database_file in tmp_path.glob("secrets.db*"):
        exposure.text(str(database_file), database_file.read_bytes())  # SQLite file and its WAL, raw
    exposure.database(engine)
    engine.dispose()
    wrong = ExposureScan(WRONG_KEY)
    wrong.texts({**outputs, "dagster events of the refused run": refused_events})
    report_figure(
        "secrets_api_key",
        outputs_scanned=exposure.outputs,
        megabytes_scanned=round(exposure.bytes_scanned / 1e6, 1),
        leaks=len(exposure.leaks),
        wrong_key_leaks=len(wrong.leaks),
    )
    assert exposure.leaks == []
    assert wrong.leaks == []


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_sandbox_and_the_dagster_webserver_bind_to_loopback_by_default(
    sandbox_cli: tuple[str, subprocess.Popen[str]],
) -> None:
    assert inspect.signature(SandboxServer).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_forever).parameters["host"].default == "127.0.0.1"
    (host_option,) = [param for param in main.commands["sandbox-api"].params if param.name == "host"]
    assert host_option.default == "127.0.0.1"
    base_url, _process = sandbox_cli
    port = int(base_url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}, "the running sandbox-api listens on 127.0.0.1 only"
    outside_address = _a_non_loopback_address()
    with pytest.raises(OSError):
        socket.create_connection((outside_address, port), timeout=2).close()

    makefile = (REPO / "Makefile").read_text()
    # `make dagster` runs `dg dev` through the Makefile's $(DG) variable; comments are not commands.
    commands = [line for line in makefile.splitlines() if not line.lstrip().startswith("#")]
    dagster_lines = [line for line in commands if re.search(r"(\bdagster(-webserver)?|\bdg|\$\(DG\)) dev\b", line)]
    assert dagster_lines, "the Makefile starts the Dagster UI"
    assert all(re.search(r"\s(-h|--host)\s+127\.0\.0\.1\b", line) for line in dagster_lines), dagster_lines
    report_figure("loopback_binding", sandbox_listen="127.0.0.1", dagster_dev_host="127.0.0.1", violations=0)


def _a_non_loopback_address() -> str:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            address = probe.getsockname()[0]
        except OSError:
            pytest.skip("no non-loopback interface to test against")
    if address.startswith("127."):
        pytest.skip("no non-loopback interface to test against")
    return address


STRING_BUILT_SQL_EXAMPLES = """
from sqlalchemy import text
COLUMNS = ("a", "b")
SAFE = f"INSERT INTO t ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"

def load(conn, cursor, user_id, name, column, value):
    cursor.execute(SAFE)
    conn.execute(text(f"SELECT * FROM t WHERE id = {user_id}"))
    statement = "DELETE FROM t WHERE name = '%s'" % name
    conn.exec_driver_sql(statement)
    cursor.execute("SELECT " + column + " FROM t")
    conn.exec_driver_sql("SET search_path = {}".format(value))
"""


def test_the_sql_audit_catches_string_built_sql() -> None:
    """The audit below can fail: it flags exactly the four interpolations of runtime values here."""
    findings = audit_source(STRING_BUILT_SQL_EXAMPLES)
    assert [finding.line for finding in findings] == [8, 10, 11, 12]


def test_sql_is_parameterized_throughout_the_package() -> None:
    """No SQL text handed to execute/text/copy/exec_driver_sql interpolates anything but module constants."""
    modules, findings = audit_package(PACKAGE)
    report_figure("sql_parameterized", modules=modules, string_built_sql=len(findings), violations=len(findings))
    assert modules > 30
    assert findings == [], "\n".join(map(str, findings))
