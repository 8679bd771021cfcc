"""The capture phase: fetch a campaign's pages and store each one, byte for byte, as a PENDING payload file.

No property row is written here. Each page is written atomically through the payload store and
registered in the same step; the capture run's position advances in the same transaction as the
registration, so an interrupted capture can resume from the next page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml
from sqlalchemy import Engine, func, insert, select, update

from property_pipeline.api.client import PropertyApiError, PropertySearchClient
from property_pipeline.db import locks
from property_pipeline.db.schema import batch_file_status, capture_runs, utcnow
from property_pipeline.db.status import NewPayloadFile, Registration, register_files
from property_pipeline.errors import ConfigurationError, PipelineError
from property_pipeline.processing.memory import fewer_garbage_collections
from property_pipeline.registration import register_unregistered
from property_pipeline.states import CaptureRunState
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.layout import month_of, validate_campaign_id
from property_pipeline.store.writer import StoredPayload, remove_stale_temporaries

log = logging.getLogger(__name__)
T = TypeVar("T")


def read_ahead(items: Iterator[T]) -> Iterator[T]:  # T is never None: None marks the end
    """Yield from `items` while a thread already takes the next one: the next page is fetched while this
    one is written, fsynced and registered.

    One item at a time is in flight, taken in order, so the API still sees one request after the
    other. An error taking an item is raised where that item would have been yielded, after every
    item before it was handled. When the caller stops early, the item in flight is awaited (its
    request ends within the client's timeouts) and dropped: nothing was stored of it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-read-ahead") as pool:
        upcoming: Future[T | None] = pool.submit(next, items, None)
        while (item := upcoming.result()) is not None:
            upcoming = pool.submit(next, items, None)
            yield item


class CaptureError(PipelineError):
    """A capture stopped before its last page; what was stored so far is registered and kept."""

    def __init__(self, message: str, report: CaptureReport) -> None:
        super().__init__(message)
        self.report = report


class CampaignConfigError(ConfigurationError, ValueError):
    """The campaigns file is missing or malformed."""


@dataclass(frozen=True)
class Campaign:
    """A campaign: its id, the search criteria sent with every page, and whether the schedule captures it.

    Empty criteria search the provider's whole dataset (billed per record): only with `allow_unfiltered`.
    """

    campaign_id: str
    criteria: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    max_pages: int | None = None
    allow_unfiltered: bool = False

    def check_filtered(self) -> None:
        """CampaignConfigError unless the campaign has criteria or is explicitly allowed to fetch everything."""
        if not self.criteria and not self.allow_unfiltered:
            raise CampaignConfigError(
                f"campaign {self.campaign_id} has no search criteria: it would capture the provider's whole dataset. "
                "Give its criteria (--criteria, or `criteria:` in the campaigns file), or allow it explicitly "
                "(--allow-unfiltered, or `allow_unfiltered: true`)"
            )


@dataclass
class CaptureReport:
    campaign_id: str
    run_id: int
    resumed_from_index: int = 0
    pages: int = 0
    records: int = 0
    bytes: int = 0
    retries: int = 0
    result_count: int | None = None
    files: list[StoredPayload] = field(default_factory=list)
    duplicates: int = 0
    complete: bool = False


def load_campaigns(path: Path) -> list[Campaign]:
    """Read `campaigns.yaml`: a list under `campaigns:` of `{id, criteria, enabled, max_pages, allow_unfiltered}`.

    Every problem is a CampaignConfigError naming the file and the line.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CampaignConfigError(
            f"campaigns file {path} not found; create it or set PROPERTY_PIPELINE_CAMPAIGNS_FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CampaignConfigError(f"campaigns file {path} cannot be read: {error}") from None
    try:
        tree = yaml.compose(text)  # the node tree keeps each entry's line
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark, context_mark = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        if context and context_mark is not None:
            problem += f"; {context} that starts on line {context_mark.line + 1}"
        raise CampaignConfigError(f"campaigns file {path}{where}: not valid YAML ({problem})") from None
    entries = document.get("campaigns") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CampaignConfigError(f"campaigns file {path} needs a top-level `campaigns:` list")
    lines = _entry_lines(tree)
    campaigns: list[Campaign] = []
    for position, entry in enumerate(entries):
        where = f"campaigns file {path} line {lines[position]}" if position < len(lines) else f"campaigns file {path}"
        campaigns.append(_campaign_entry(entry, where))
    ids = [campaign.campaign_id for campaign in campaigns]
    twice = sorted({campaign_id for campaign_id in ids if ids.count(campaign_id) > 1})
    if twice:
        raise CampaignConfigError(f"campaigns file {path} lists the campaign id {twice[0]} twice")
    return campaigns


def _entry_lines(tree: Any) -> list[int]:
    """The 1-based line of each entry of the `campaigns:` list, from the YAML node tree."""
    if not isinstance(tree, yaml.MappingNode):
        return []
    for key, value in tree.value:
        if getattr(key, "value", None) == "campaigns" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _campaign_entry(entry: Any, where: str) -> Campaign:
    if not isinstance(entry, dict) or "id" not in entry:
        raise CampaignConfigError(f"{where}: each campaign needs an `id`")
    try:
        campaign_id = validate_campaign_id(str(entry["id"]))
    except ValueError as error:
        raise CampaignConfigError(f"{where}: {error}") from None
    criteria = entry.get("criteria") or {}
    max_pages = entry.get("max_pages")
    if not isinstance(criteria, dict):
        raise CampaignConfigError(f"{where}: criteria of {campaign_id!r} must be a mapping")
    if max_pages is not None and (not isinstance(max_pages, int) or isinstance(max_pages, bool) or max_pages < 1):
        raise CampaignConfigError(f"{where}: max_pages of {campaign_id!r} must be a positive integer")
    for flag in ("enabled", "allow_unfiltered"):
        if not isinstance(entry.get(flag, False), bool):
            raise CampaignConfigError(f"{where}: {flag} of {campaign_id!r} must be true or false")
    unknown = sorted(set(entry) - {"id", "criteria", "enabled", "max_pages", "allow_unfiltered"})
    if unknown:
        raise CampaignConfigError(f"{where}: unknown key {unknown[0]!r} in campaign {campaign_id!r}")
    return Campaign(campaign_id, criteria, entry.get("enabled", True), max_pages, entry.get("allow_unfiltered", False))


def canonical_criteria(criteria: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(criteria), option=orjson.OPT_SORT_KEYS).decode()


@contextmanager
def campaign_lock(engine: Engine, campaign_id: str) -> Iterator[None]:
    """One capture per campaign at a time, on every node that shares the database, so batch numbers never
    collide (a lock in the database: see db/locks.py)."""
    try:
        with locks.exclusive(engine, f"capture:{validate_campaign_id(campaign_id)}", wait=False):
            yield
    except locks.LockHeld:
        raise CaptureError(
            f"another capture of campaign {campaign_id} is running against this database; wait for it to finish",
            CaptureReport(campaign_id, run_id=0),
        ) from None


def next_batch_number(engine: Engine, campaign_id: str) -> int:
    with engine.connect() as conn:
        highest = conn.execute(
            select(func.max(batch_file_status.c.batch_number)).where(batch_file_status.c.campaign_id == campaign_id)
        ).scalar()
    return int(highest or 0) + 1


def resumable_run(engine: Engine, campaign_id: str, criteria: Mapping[str, Any]) -> Any:
    """The newest unfinished run of this campaign with the same criteria, or None."""
    with engine.connect() as conn:
        return conn.execute(
            select(capture_runs)
            .where(
                capture_runs.c.campaign_id == campaign_id,
                capture_runs.c.criteria == canonical_criteria(criteria),
                capture_runs.c.state != CaptureRunState.COMPLETED,
            )
            .order_by(capture_runs.c.run_id.desc())
            .limit(1)
        ).first()


def _start_run(engine: Engine, campaign: Campaign, resume: bool) -> tuple[int, int]:
    previous = resumable_run(engine, campaign.campaign_id, campaign.criteria) if resume else None
    now = utcnow()
    with engine.begin() as conn:
        if previous is not None:
            conn.execute(
                update(capture_runs)
                .where(capture_runs.c.run_id == previous.run_id)
                .values(state=CaptureRunState.RUNNING, updated_at=now, error=None)
            )
            return previous.run_id, previous.next_result_index
        run_id = conn.execute(
            insert(capture_runs)
            .values(
                campaign_id=campaign.campaign_id,
                criteria=canonical_criteria(campaign.criteria),
                state=CaptureRunState.RUNNING,
                started_at=now,
                updated_at=now,
            )
            .returning(capture_runs.c.run_id)
        ).scalar_one()
        return run_id, 0


def _finish_run(engine: Engine, run_id: int, state: str, error: str | None) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(capture_runs)
            .where(capture_runs.c.run_id == run_id)
            .values(
                state=state,
                updated_at=now,
                finished_at=now if state == CaptureRunState.COMPLETED else None,
                error=error,
            )
        )


def capture_campaign(
    engine: Engine,
    store: PayloadStore,
    client: PropertySearchClient,
    campaign: Campaign,
    *,
    max_pages: int | None = None,
    resume: bool = False,
    clock: Callable[[], datetime] = utcnow,
    on_page: Callable[[StoredPayload], None] | None = None,
) -> CaptureReport:
    """Capture one campaign; every page stored and registered PENDING. Raises CaptureError when it stops early.

    With `resume=True` an unfinished earlier run of the same campaign and criteria continues from
    the page after the last one it registered.
    """
    validate_campaign_id(campaign.campaign_id)
    # Each page is parsed whole (the client checks its shape): collect garbage less often meanwhile.
    with campaign_lock(engine, campaign.campaign_id), fewer_garbage_collections():
        # A crash between a page's rename and its registration leaves a complete, unregistered
        # file: register it first so batch numbers continue after it.
        month = month_of(clock())
        for stale in remove_stale_temporaries(store.folder, month, campaign.campaign_id) if store.folder else ():
            log.warning("removed %s, a partial page left by an interrupted capture", stale.name)
        register_unregistered(engine, store, f"capture:{campaign.campaign_id}", month, campaign=campaign.campaign_id)
        run_id, start_index = _start_run(engine, campaign, resume)
        report = CaptureReport(campaign.campaign_id, run_id, resumed_from_index=start_index)
        batch_number = next_batch_number(engine, campaign.campaign_id)
        retries_before = client.total_retries
        limit = max_pages if max_pages is not None else campaign.max_pages
        try:
            pages = client.iter_pages(campaign.criteria, start_index=start_index, max_pages=limit)
            for page in read_ahead(pages):
                stored = store.write_payload(campaign.campaign_id, batch_number, page.body, clock())
                registration = _register_page(
                    engine,
                    run_id,
                    stored,
                    page.record_count,
                    page.result_count,
                    page.result_index + page.record_count,
                    page.attempts - 1,
                    page.plain_json,
                )
                if registration.duplicate_of is not None:
                    report.duplicates += 1
                store.follow(
                    stored.relative_path,
                    registration.status,
                    file_id=registration.file_id,
                    duplicate_of=registration.duplicate_of,
                )
                batch_number += 1
                report.pages += 1
                report.records += page.record_count
                report.bytes += stored.size_bytes
                report.result_count = page.result_count
                report.files.append(stored)
                if on_page is not None:
                    on_page(stored)
        except (PropertyApiError, OSError) as error:
            report.retries = client.total_retries - retries_before
            message = (
                f"capture of campaign {campaign.campaign_id} stopped after {report.pages} new pages: "
                f"{str(error).rstrip('.')}. "
                f"The {report.pages} pages stored are registered; rerun with --resume to continue "
                f"from result index {start_index + report.records}."
            )
            _finish_run(engine, run_id, CaptureRunState.INTERRUPTED, str(error)[:4000])
            raise CaptureError(message, report) from error
        except BaseException:
            _finish_run(engine, run_id, CaptureRunState.INTERRUPTED, "interrupted")
            raise
        report.retries = client.total_retries - retries_before
        finished = limit is None or report.pages < limit or _is_last(report)
        report.complete = finished
        _finish_run(
            engine,
            run_id,
            CaptureRunState.COMPLETED if finished else CaptureRunState.INTERRUPTED,
            None if finished else f"stopped after --max-pages {limit}",
        )
        return report


@dataclass
class CaptureRound:
    """Several campaigns captured one after the other: each one's report, and the errors of those that stopped."""

    reports: list[CaptureReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def capture_campaigns(
    engine: Engine,
    store: PayloadStore,
    client: PropertySearchClient,
    campaigns: list[Campaign],
    *,
    max_pages: int | None = None,
    resume: bool = False,
    on_report: Callable[[CaptureReport], None] | None = None,
) -> CaptureRound:
    """Capture each campaign in turn; one campaign's failure (or missing criteria) does not stop the others."""
    done = CaptureRound()
    for campaign in campaigns:
        try:
            campaign.check_filtered()
        except CampaignConfigError as error:
            done.failures.append(str(error))
            continue
        try:
            report = capture_campaign(engine, store, client, campaign, max_pages=max_pages, resume=resume)
        except CaptureError as error:
            report = error.report
            done.failures.append(str(error))
        done.reports.append(report)
        if on_report is not None:
            on_report(report)
    return done


def _is_last(report: CaptureReport) -> bool:
    return report.result_count is not None and report.resumed_from_index + report.records >= report.result_count


def _register_page(
    engine: Engine,
    run_id: int,
    stored: StoredPayload,
    record_count: int,
    result_count: int,
    next_index: int,
    retries: int,
    plain_json: bool,
) -> Registration:
    """Register the page and advance the run in one transaction."""
    with engine.begin() as conn:
        (registration,) = register_files(
            conn,
            [
                NewPayloadFile(
                    file_path=stored.relative_path,
                    campaign_id=stored.name.campaign_id,
                    batch_number=stored.name.batch_number,
                    month=stored.month,
                    checksum_sha256=stored.sha256,
                    file_size_bytes=stored.size_bytes,
                    captured_at=stored.name.captured_at,
                    properties_count=record_count,
                    plain_json=plain_json,
                )
            ],
            actor=f"capture-run:{run_id}",
        )
        conn.execute(
            update(capture_runs)
            .where(capture_runs.c.run_id == run_id)
            .values(
                next_result_index=next_index,
                result_count=result_count,
                pages=capture_runs.c.pages + 1,
                records=capture_runs.c.records + record_count,
                bytes=capture_runs.c.bytes + stored.size_bytes,
                retries=capture_runs.c.retries + retries,
                updated_at=datetime.now(UTC),
            )
        )
    return registration
