"""The definitions load cleanly: in process with every warning an error, and through Dagster's own CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from property_pipeline.definitions import defs

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A fresh interpreter, so that module-level code runs again under the filter.
LOAD_WITH_WARNINGS_AS_ERRORS = """
import warnings
import dagster as dg
warnings.simplefilter("error")
from property_pipeline.definitions import defs
definitions = defs()
dg.Definitions.validate_loadable(definitions)
print(sorted(job.name for job in definitions.get_repository_def().get_all_jobs()))
"""


def test_definitions_load_without_any_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_WARNINGS_AS_ERRORS],
        cwd=tmp_path,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "capture_payloads" in result.stdout and "Warning" not in result.stderr


def test_the_code_location_holds_every_object_of_the_design() -> None:
    definitions = defs()
    repository = definitions.get_repository_def()
    assert {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()} == {
        "raw_property_payloads",
        "properties",
        "quarantined_records",
        "pipeline_status_report",
        "property_market_summary",
    }
    assert {key.name for key in repository.asset_graph.asset_check_keys} == {
        "payload_files_intact",
        "row_counts_agree",
        "no_stuck_files",
        "no_failed_files",
    }
    assert {job.name for job in repository.get_all_jobs()} >= {
        "capture_payloads",
        "process_payloads",
        "retry_failed_months",
        "retention_job",
        "status_report",
    }
    assert {s.name for s in repository.schedule_defs} == {
        "daily_capture_schedule",
        "monthly_retention_schedule",
        "status_report_schedule",
    }
    assert {s.name for s in repository.sensor_defs} == {
        "payload_registration_sensor",
        "property_alerts_sensor",
        "property_run_failure_sensor",
    }
    keys = repository.assets_defs_by_key[dg.AssetKey("properties")].partitions_def.get_partition_keys()
    assert keys[0] == "2026-01" and all(len(key) == 7 and key[4] == "-" for key in keys)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["dagster", "definitions", "validate", "-w", "workspace.yaml"], ["dg", "check", "defs"]],
    ids=["dagster-definitions-validate", "dg-check-defs"],
)
def test_dagsters_own_commands_accept_the_definitions(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "VIRTUAL_ENV": str(BIN.parent)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "property_pipeline/" not in output  # no warning or error points into the project's code
