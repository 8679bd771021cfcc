"""Capture commands: capture, the sandbox API, and the end-to-end demo."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from property_pipeline.cli.app import (
    EXIT_FAILED,
    EXIT_OK,
    PipelineUsageError,
    json_option,
    main,
    pipeline_command,
    print_json,
)
from property_pipeline.settings import Settings

if TYPE_CHECKING:
    from property_pipeline.api.client import PropertySearchClient
    from property_pipeline.capture import Campaign, CaptureReport
    from property_pipeline.runtime import Pipeline

DEMO_CAMPAIGN = "demo-sandbox"
DEMO_RECORDS = 3000


def _client(pipeline: Pipeline, base_url: str | None = None, api_key: str | None = None) -> PropertySearchClient:
    from property_pipeline.api.client import PropertySearchClient

    settings = pipeline.settings
    return PropertySearchClient(
        base_url or settings.api_base_url,
        api_key or settings.api_key,
        page_size=settings.page_size,
        max_attempts=settings.api_max_attempts,
        max_page_bytes=settings.max_payload_bytes,
        page_deadline=settings.api_page_deadline_seconds,
    )


def _report_json(report: CaptureReport) -> dict[str, object]:
    return {
        "campaign": report.campaign_id,
        "run_id": report.run_id,
        "resumed_from_index": report.resumed_from_index,
        "pages": report.pages,
        "records": report.records,
        "bytes": report.bytes,
        "retries": report.retries,
        "duplicates": report.duplicates,
        "complete": report.complete,
        "files": [stored.relative_path for stored in report.files],
    }


def _echo_report(report: CaptureReport) -> None:
    for stored in report.files:
        click.echo(f"stored  {stored.relative_path}  {stored.size_bytes} bytes  sha256 {stored.sha256[:12]}…")
    resumed = f", resumed at result index {report.resumed_from_index}" if report.resumed_from_index else ""
    click.echo(
        f"campaign {report.campaign_id}: {report.pages} pages, {report.records} records, {report.bytes:,} bytes, "
        f"{report.retries} retries, {report.duplicates} duplicate pages{resumed}"
        + ("" if report.complete else " (not finished: rerun with --resume to continue)")
    )


def _campaigns_to_capture(
    pipeline: Pipeline, campaign_id: str | None, criteria: str | None, capture_all: bool, allow_unfiltered: bool
) -> list[Campaign]:
    """The campaigns a `capture` command asked for, each checked before anything is fetched (usage errors exit 2)."""
    from property_pipeline.capture import Campaign, CampaignConfigError, load_campaigns
    from property_pipeline.store.layout import PayloadPathError, validate_campaign_id

    if capture_all == (campaign_id is not None):
        raise PipelineUsageError("give either --campaign ID or --all (the enabled campaigns of the campaigns file)")
    campaigns_file = pipeline.settings.campaigns_file
    try:
        if capture_all:
            if criteria is not None:
                raise PipelineUsageError("--criteria goes with --campaign, not --all")
            chosen = [c for c in load_campaigns(campaigns_file) if c.enabled]
        elif criteria is not None:
            chosen = [Campaign(validate_campaign_id(campaign_id or ""), _criteria(criteria))]
        else:
            validate_campaign_id(campaign_id or "")
            configured = {c.campaign_id: c for c in load_campaigns(campaigns_file)}
            if campaign_id not in configured:
                raise PipelineUsageError(
                    f"campaign {campaign_id} is not in the campaigns file {campaigns_file} and no --criteria was "
                    "given: add it to the file, or give its search criteria with --criteria JSON"
                )
            chosen = [configured[campaign_id or ""]]
        if allow_unfiltered:
            chosen = [replace(campaign, allow_unfiltered=True) for campaign in chosen]
        for campaign in chosen:
            campaign.check_filtered()
    except (CampaignConfigError, PayloadPathError) as error:
        raise PipelineUsageError(str(error)) from None
    return chosen


def _criteria(text: str) -> dict[str, object]:
    import orjson

    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise PipelineUsageError(f"--criteria is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise PipelineUsageError('--criteria must be a JSON object, for example \'{"state": "TX"}\'')
    return parsed


@main.command()
@click.option("--campaign", "campaign_id", help="Campaign id (letters, digits, '-', '_'; at most 64).")
@click.option("--criteria", help="Search criteria as a JSON object (default: the campaign's, from the campaigns file).")
@click.option("--all", "capture_all", is_flag=True, help="Every enabled campaign of the campaigns file.")
@click.option("--max-pages", type=click.IntRange(min=1), help="Stop after N pages.")
@click.option("--resume", is_flag=True, help="Continue the campaign's last unfinished capture from its next page.")
@click.option(
    "--allow-unfiltered",
    is_flag=True,
    help="Allow empty search criteria: the provider's whole dataset (refused without this flag).",
)
@json_option
@pipeline_command
def capture(
    pipeline: Pipeline,
    campaign_id: str | None,
    criteria: str | None,
    capture_all: bool,
    max_pages: int | None,
    resume: bool,
    allow_unfiltered: bool,
    as_json: bool,
) -> None:
    """Fetch a campaign's pages and store each, byte for byte, as a PENDING payload file (no property rows)."""
    from property_pipeline.capture import capture_campaigns

    campaigns = _campaigns_to_capture(pipeline, campaign_id, criteria, capture_all, allow_unfiltered)
    with _client(pipeline) as client:
        done = capture_campaigns(pipeline.engine, pipeline.store, client, campaigns, max_pages=max_pages, resume=resume)
    reports, failures = done.reports, done.failures
    if as_json:
        print_json({"captures": [_report_json(r) for r in reports], "errors": failures})
    else:
        for report in reports:
            _echo_report(report)
        for failure in failures:
            click.echo(f"ERROR {failure}", err=True)
    sys.exit(EXIT_FAILED if failures else EXIT_OK)


@main.command("sandbox-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--records", default=DEMO_RECORDS, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--rate-limit", default=0.0, type=click.FloatRange(0, 1), help="Chance of a 429 with Retry-After.")
@click.option("--server-errors", default=0.0, type=click.FloatRange(0, 1), help="Chance of a 5xx.")
@click.option("--slow", default=0.0, type=click.FloatRange(0, 1), help="Chance of a slow response.")
@click.option("--slow-seconds", default=2.0, type=click.FloatRange(min=0))
@click.option("--truncate", default=0.0, type=click.FloatRange(0, 1), help="Chance of a 200 with a truncated body.")
@click.option("--fail-first", default=0, type=click.IntRange(min=0), help="Fail the first N requests of every page.")
@click.pass_obj
def sandbox_api(
    settings: Settings,
    host: str,
    port: int,
    records: int,
    seed: int,
    rate_limit: float,
    server_errors: float,
    slow: float,
    slow_seconds: float,
    truncate: float,
    fail_first: int,
) -> None:
    """Serve the bundled property-search sandbox API (deterministic data, optional faults).

    It requires the key in PROPERTY_API_KEY when that is set.
    """
    from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, serve_forever

    try:
        faults = FaultConfig(rate_limit, server_errors, slow, slow_seconds, truncate, fail_first, seed)
    except ValueError as error:
        raise PipelineUsageError(str(error)) from None
    serve_forever(SandboxConfig(records=records, seed=seed, api_key=settings.api_key, faults=faults), host, port)


@main.command()
@click.option("--records", default=DEMO_RECORDS, show_default=True, type=click.IntRange(min=1, max=100_000))
@pipeline_command
def demo(pipeline: Pipeline, records: int) -> None:
    """Run the whole pipeline on the bundled sandbox API: capture, register, process, and show the result."""
    import secrets

    from sqlalchemy import select

    from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
    from property_pipeline.capture import Campaign, CaptureError, capture_campaign
    from property_pipeline.cli.core import print_status
    from property_pipeline.db.schema import batch_file_status
    from property_pipeline.processing.processor import PayloadProcessor
    from property_pipeline.states import FileStatus

    key = pipeline.settings.api_key or secrets.token_urlsafe(24)
    click.echo(f"1. starting the sandbox API with {records} properties on 127.0.0.1")
    with SandboxServer(SandboxConfig(records=records, seed=42, api_key=key)) as server:
        click.echo(f"   listening at {server.base_url}")
        click.echo(f"2. capturing campaign {DEMO_CAMPAIGN} (pages of {pipeline.settings.page_size})")
        with _client(pipeline, server.base_url, key) as client:
            try:
                # The sandbox's whole (synthetic) dataset is the demo: unfiltered on purpose.
                demo_campaign = Campaign(DEMO_CAMPAIGN, allow_unfiltered=True)
                report = capture_campaign(pipeline.engine, pipeline.store, client, demo_campaign)
            except CaptureError as error:
                click.echo(f"ERROR {error}", err=True)
                sys.exit(EXIT_FAILED)
    _echo_report(report)
    click.echo("3. processing the pending files")
    processed = PayloadProcessor(
        pipeline.engine,
        pipeline.store,
        lease_seconds=pipeline.settings.lease_seconds,
        max_payload_bytes=pipeline.settings.max_payload_bytes,
        statement_timeout_seconds=pipeline.settings.statement_timeout_seconds,
    ).run()
    click.echo(
        f"   {processed.completed} files completed, {processed.failed} failed; {processed.records_loaded} records "
        f"loaded, {processed.records_quarantined} quarantined ({processed.rows_per_second:,.0f} rows/s)"
    )
    paths = [stored.relative_path for stored in report.files]
    with pipeline.engine.connect() as conn:
        states = dict(
            conn.execute(
                select(batch_file_status.c.file_path, batch_file_status.c.status).where(
                    batch_file_status.c.file_path.in_(paths)
                )
            ).all()
        )
    landed = len(paths) > 0 and all(states.get(path) == FileStatus.COMPLETED for path in paths)
    click.echo("4. status of every month\n")
    print_status(pipeline)
    settings = pipeline.settings
    root = pipeline.store.folder
    marker_folders = f"{root.pending} and {root.processed}" if root is not None else "none (object storage)"
    click.echo(
        "\nWhere to look:\n"
        f"  payload files   {pipeline.store.describe()}\n"
        f"  markers         {marker_folders}\n"
        f"  database        {pipeline.engine.url.render_as_string(hide_password=True)}\n"
        "  status          .venv/bin/property-pipeline status\n"
        "  Dagster UI      make dagster, then open http://127.0.0.1:3000"
    )
    if not landed:
        missing = [path for path in paths if states.get(path) != FileStatus.COMPLETED]
        click.echo(f"\nNOT everything landed: {len(missing)} captured files are not COMPLETED: {missing[:5]}", err=True)
        sys.exit(EXIT_FAILED)
    where = Path(settings.logs_dir) if root is not None else pipeline.store.describe()
    click.echo(f"\nDemo complete: {len(paths)} files captured and COMPLETED in {where}.")
