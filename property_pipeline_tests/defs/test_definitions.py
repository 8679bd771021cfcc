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
        "quarantine_rate_acceptable",
    }
    assert all(
        repository.asset_graph.get_check_spec(key).partitions_def is not None
        for key in repository.asset_graph.asset_check_keys
    )  # one verdict per month
    assert {job.name for job in repository.get_all_jobs()} >= {
        "capture_payloads",
        "process_payloads",
        "retry_failed_months",
        "record_month_state",
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
        "month_state_sensor",
        "property_alerts_sensor",
        "property_run_failure_sensor",
    }
    keys = repository.assets_defs_by_key[dg.AssetKey("properties")].partitions_def.get_partition_keys()
    assert keys[0] == "2026-01" and all(len(key) == 7 and key[4] == "-" for key in keys)


@pytest.mark.slow
def test_dg_check_defs_accepts_the_definitions_without_any_warning(tmp_path: Path) -> None:
    """As the Makefile and the docs run it: the project's .venv as the active environment."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "VIRTUAL_ENV": str(BIN.parent)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [str(BIN / "dg"), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All definitions loaded successfully" in output
    for noise in ("property_pipeline/", "Warning", "does not match the virtual environment", "superseded"):
        assert noise not in output, output


def test_the_makefile_starts_the_ui_with_dg_dev() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipes = [line.strip() for line in makefile.splitlines() if "$(DG) dev" in line]
    assert len(recipes) == 2 and all(line.endswith("$(DG) dev -h 127.0.0.1 -p 3000") for line in recipes)
    assert "dagster dev" not in makefile and "VIRTUAL_ENV=$(CURDIR)/$(VENV)" in makefile


def test_assets_carry_owners_tags_kinds_code_references_and_the_first_month_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROPERTY_PIPELINE_DB_URL", "postgresql://pipeline@db.internal/pipeline")
    repository = defs().get_repository_def()
    specs = {key.to_user_string(): a.specs_by_key[key] for key, a in repository.assets_defs_by_key.items()}
    assert all(spec.owners == ["team:data-engineering"] and spec.tags.get("layer") for spec in specs.values())
    assert all("dagster/code_references" in spec.metadata for spec in specs.values())
    assert "pii" in specs["properties"].tags and "pii" in specs["quarantined_records"].tags
    assert specs["raw_property_payloads"].kinds == {"json", "file"}
    assert specs["properties"].kinds == {"postgres", "table"}
    assert specs["raw_property_payloads"].freshness_policy is not None
    monkeypatch.setenv("PROPERTY_PIPELINE_DB_URL", "sqlite:///somewhere.db")
    assert (
        "sqlite"
        in defs()
        .get_repository_def()
        .assets_defs_by_key[dg.AssetKey("properties")]
        .specs_by_key[dg.AssetKey("properties")]
        .kinds
    )


FIRST_MONTH_FROM_ENV = """
from property_pipeline.defs.partitions import monthly_partitions
print(monthly_partitions.get_first_partition_key())
"""


def test_the_first_partition_month_comes_from_the_setting(tmp_path: Path) -> None:
    def first(value: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "PROPERTY_PIPELINE_FIRST_MONTH"}
        if value is not None:
            env["PROPERTY_PIPELINE_FIRST_MONTH"] = value
        return subprocess.run(
            [sys.executable, "-c", FIRST_MONTH_FROM_ENV], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    assert first(None).stdout.strip() == "2026-01"
    assert first("2025-06").stdout.strip() == "2025-06"
    refused = first("June 2025")
    assert refused.returncode != 0 and "PROPERTY_PIPELINE_FIRST_MONTH" in refused.stderr
