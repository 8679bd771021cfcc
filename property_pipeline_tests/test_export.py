"""`property-pipeline export`: the DataFrame's columns in CSV, JSON lines and Parquet, written atomically."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from property_pipeline import exports, frames
from property_pipeline.cli import export as export_command
from property_pipeline.cli import main
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import make_page, make_record, write_page

MARCH = datetime(2026, 3, 3, 8, 0, 0, 250_000, tzinfo=UTC)
Invoke = Callable[..., Result]


@pytest.fixture
def run(db_url: str, root: PayloadRoot) -> Invoke:
    env = {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir)}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return invoke


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where the exports go: a folder of their own (the database and data root live in tmp_path)."""
    path = tmp_path / "exports"
    path.mkdir()
    return path


@pytest.fixture
def loaded(engine: Engine, root: PayloadRoot) -> None:
    """March: two campaigns, nulls, unicode, commas and quotes in text, a quarantined record; April: one more."""
    write_page(
        root,
        [
            make_record("m-1"),
            make_record(
                "m-2",
                bedrooms=None,
                bathrooms=None,
                lastSaleDate=None,
                ownerOccupied=None,
                mailAddress=None,
                owner1LastName='O\'Brien, "Jr."',
            ),
            make_record(4242, address={"city": "Zürich", "state": "TX", "zip": "01234"}),
        ],
        batch=1,
        captured_at=MARCH,
    )
    write_page(root, [make_record("m-3", yearBuilt=None)], campaign="camp-2", batch=1, captured_at=MARCH)
    bad = [make_record("m-4"), make_record("bad-zip", address={"zip": "ABCDE"})]
    (root.month_dir("2026-03") / "camp-3_batch1_20260304T000000Z.json").write_bytes(make_page(bad))
    write_page(root, [make_record("a-1")], batch=2, captured_at=MARCH + timedelta(days=31))
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()


def read_back(path: Path, fmt: str, dtypes: dict[str, Any]) -> pd.DataFrame:
    """An export read with plain pandas, as the README shows it."""
    if fmt == "parquet":
        return pd.read_parquet(path)
    times = {c: d for c, d in dtypes.items() if isinstance(d, pd.DatetimeTZDtype) or getattr(d, "kind", "") == "M"}
    others = {c: d for c, d in dtypes.items() if c not in times}
    if fmt == "csv":
        frame = pd.read_csv(path, dtype=others, keep_default_na=False, na_values=[""])
    else:
        frame = pd.read_json(path, lines=True, dtype=False).astype(others)
    for column, dtype in times.items():
        utc = isinstance(dtype, pd.DatetimeTZDtype)
        frame[column] = pd.to_datetime(frame[column], format="ISO8601", utc=utc).astype(dtype)
    return frame


@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_format_reads_back_equal_to_the_dataframe(run: Invoke, engine: Engine, folder: Path, fmt: str) -> None:
    output = folder / f"march.{fmt}"

    result = run("export", "--month", "2026-03", "--format", fmt, "--output", str(output))

    assert result.exit_code == 0, result.output
    expected = frames.read_properties(engine, "2026-03")
    assert list(expected["property_id"]) == ["4242", "m-1", "m-2", "m-3", "m-4"]
    pd.testing.assert_frame_equal(read_back(output, fmt, frames.property_dtypes()), expected)
    summary = f"exported 5 properties of 2026-03 to {output} ({fmt}, {output.stat().st_size:,} bytes) in "
    assert result.stdout.startswith(summary) and result.stdout.count("\n") == 1
    assert sorted(path.name for path in folder.iterdir()) == [output.name]  # no temporary left beside it


@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_campaign_with_raw_records_reads_back_equal_too(run: Invoke, engine: Engine, folder: Path, fmt: str) -> None:
    output = folder / f"camp-1.{fmt}"

    result = run(
        "export", "--month", "2026-03", "--campaign", "camp-1", "--raw", "--format", fmt, "--output", str(output)
    )

    assert result.exit_code == 0, result.output
    expected = frames.read_properties(engine, "2026-03", campaign="camp-1", include_raw=True)
    back = read_back(output, fmt, frames.property_dtypes(include_raw=True))
    pd.testing.assert_frame_equal(back, expected)
    assert orjson.loads(back.set_index("property_id").loc["m-2", "raw"])["owner1LastName"] == 'O\'Brien, "Jr."'
    assert "campaign camp-1" in result.stdout


@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_quarantined_records_export_with_their_reasons(run: Invoke, engine: Engine, folder: Path, fmt: str) -> None:
    output = folder / f"quarantine.{fmt}"

    result = run("export", "--month", "2026-03", "--quarantine", "--format", fmt, "--output", str(output))

    assert result.exit_code == 0, result.output
    back = read_back(output, fmt, frames.quarantine_dtypes())
    pd.testing.assert_frame_equal(back, frames.read_quarantine(engine, "2026-03"))
    assert list(back["property_id"]) == ["bad-zip"] and "zip" in back.loc[0, "reason"]
    assert "exported 1 quarantined records of 2026-03" in result.stdout


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_empty_month_exports_its_columns_and_no_row(run: Invoke, folder: Path, fmt: str) -> None:
    output = folder / f"empty.{fmt}"
    result = run("export", "--month", "2026-09", "--format", fmt, "--output", str(output))
    assert result.exit_code == 0, result.output
    back = read_back(output, fmt, frames.property_dtypes())
    pd.testing.assert_frame_equal(back, frames.empty_frame(frames.property_dtypes()))


@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("interruption", [RuntimeError("disk on fire"), KeyboardInterrupt()])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_an_interrupted_export_leaves_no_partial_file_and_the_previous_one_intact(
    run: Invoke, folder: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, interruption: BaseException
) -> None:
    output = folder / f"march.{fmt}"
    output.write_bytes(b"the previous export")
    writer = exports.WRITERS[fmt]
    original_write = writer.write
    written = []

    def write_then_fail(self: Any, chunk: pd.DataFrame) -> None:
        original_write(self, chunk)  # some bytes are in the temporary file by now
        written.append(len(chunk))
        raise interruption

    monkeypatch.setattr(writer, "write", write_then_fail)

    result = run("export", "--month", "2026-03", "--format", fmt, "--output", str(output))

    assert written == [5]
    assert result.exit_code == (130 if isinstance(interruption, KeyboardInterrupt) else 1), result.output
    assert output.read_bytes() == b"the previous export"
    assert sorted(path.name for path in folder.iterdir()) == [output.name]


def test_parquet_without_pyarrow_says_how_to_install_it_and_exits_2(
    run: Invoke, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    output = folder / "march.parquet"

    result = run("export", "--month", "2026-03", "--format", "parquet", "--output", str(output))

    assert result.exit_code == 2
    assert "pip install 'property_pipeline[parquet]'" in result.stderr
    assert list(folder.iterdir()) == []


def test_the_command_offers_the_formats_the_exports_write_and_loads_no_pandas_for_other_commands() -> None:
    assert export_command.FORMATS == exports.FORMATS == tuple(exports.WRITERS)
    probe = "import sys, property_pipeline.cli; print('pandas' in sys.modules, 'pyarrow' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == ["False", "False"]


def test_misuse_exits_2_and_writes_nothing(run: Invoke, folder: Path) -> None:
    no_month = run("export", "--format", "csv", "--output", str(folder / "x.csv"))
    bad_month = run("export", "--month", "2026-3", "--format", "csv", "--output", str(folder / "x.csv"))
    bad_format = run("export", "--month", "2026-03", "--format", "xlsx", "--output", str(folder / "x.xlsx"))
    no_folder = run("export", "--month", "2026-03", "--format", "csv", "--output", str(folder / "none" / "x.csv"))
    a_folder = run("export", "--month", "2026-03", "--format", "csv", "--output", str(folder))

    for result in (no_month, bad_month, bad_format, no_folder, a_folder):
        assert result.exit_code == 2, result.output
    assert "Missing option '--month'" in no_month.stderr and "YYYY-MM" in bad_month.stderr
    assert "does not exist" in no_folder.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.usefixtures("loaded")
def test_a_terminal_sees_a_progress_bar_on_stderr(run: Invoke, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_command, "stderr_is_terminal", lambda: True)
    result = run("export", "--month", "2026-03", "--format", "csv", "--output", str(folder / "m.csv"))
    assert result.exit_code == 0
    assert "\r[##############################] 5/5 properties" in result.stderr
    assert "exported 5 properties" in result.stdout and "[#" not in result.stdout
