"""Monitoring in the Dagster UI: the status report asset, the alert sensor and the run-failure sensor.

`pipeline_status_report` is not automatic. It is materialized by hand ("Materialize" in the UI) or by
`status_report_schedule` every 15 minutes, which is STOPPED by default: every materialization adds an
event to Dagster's storage (96 a day at that rate), which a production instance on PostgreSQL carries
easily but a one-person SQLite instance should not collect unasked. Turn the schedule on where the
trend plots matter: `dagster schedule start status_report_schedule`.

The alert sensor runs by default: alerts for FAILED and stuck files and an old backlog are the part
nobody should have to remember to switch on. Each tick is bounded: alerts are recorded first (a few
queries), then delivered to the webhook within a time budget; what is left is delivered next tick.
"""

import time

import dagster as dg

from property_pipeline.defs.jobs import record_month_state_job
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import GROUP, OWNERS, raw_property_payloads
from property_pipeline.defs.resources import PipelineDatabase
from property_pipeline.monitoring.alerts import Alert, WebhookNotifier, current_alerts, raise_alerts
from property_pipeline.monitoring.report import build_status_report, render_markdown

ALERT_SENSOR_NAME = "property_alerts_sensor"
RUN_FAILURE_SENSOR_NAME = "property_run_failure_sensor"
REPORT_CRON = "*/15 * * * *"
DEFAULT_PENDING_ALERT_SECONDS = 24 * 3600  # as Settings.pending_alert_age_seconds
# Sensor ticks time out after 60 s: stop starting deliveries after this many seconds. One delivery
# takes at most attempts x timeout + backoff (3 x 5 s + 1.5 s), so a tick ends well within the limit.
DELIVERY_BUDGET_SECONDS = 25.0
DEFAULT_UI_BASE_URL = "http://127.0.0.1:3000"  # as Settings.ui_base_url
# Its runs fail by design while a month holds FAILED files, and each such file has its own alert already.
NOT_ALERTED_JOBS = frozenset({record_month_state_job.name})


@dg.asset(
    group_name=GROUP,
    deps=[raw_property_payloads, properties],
    owners=OWNERS,
    tags={"layer": "monitoring"},
    kinds={"markdown"},  # and the database's kind, added in definitions.py: it reads the status table
    description=(
        "Processing status at a glance, for every month and campaign: files by status, records loaded and "
        "quarantined, the oldest PENDING file's age, the latest errors and the slowest files (the `report` "
        "metadata). Numbers recorded on every materialization plot the trend. Not automatic: materialize it "
        "by hand or turn on `status_report_schedule` (every 15 min). The same picture as `property-pipeline status`."
    ),
)
def pipeline_status_report(context: dg.AssetExecutionContext, database: PipelineDatabase) -> dg.MaterializeResult:
    report = build_status_report(database.engine)
    context.log.info(
        f"{len(report.months())} months; {report.backlog_files} files pending, {report.failed_files} failed; "
        f"{report.records_loaded} records loaded"
    )
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(render_markdown(report)),
            "backlog_files": report.backlog_files,
            "oldest_pending_age_seconds": round(report.oldest_pending_age_seconds, 1),
            "failed_files": report.failed_files,
            "records_loaded": report.records_loaded,
            "records_quarantined": report.records_quarantined,
            "rows_per_second": float(report.rows_per_second),
            "months": ", ".join(report.months()) or "none",
        }
    )


status_report_job = dg.define_asset_job(
    "status_report",
    selection=dg.AssetSelection.assets(pipeline_status_report),
    description="Materialize the status report (reads the status table only; changes nothing).",
)

status_report_schedule = dg.ScheduleDefinition(
    name="status_report_schedule",
    job=status_report_job,
    cron_schedule=REPORT_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Materializes the status report every 15 minutes, so its plots show trends. Stopped until turned "
    "on (each run adds to Dagster's storage): in the UI, or `dagster schedule start status_report_schedule`.",
)


class _OutOfTime(Exception):
    """The tick's delivery budget is spent: the remaining alerts are delivered next tick."""


class _BudgetedNotifier(WebhookNotifier):
    """A WebhookNotifier that refuses to start a delivery after its deadline (the alert stays undelivered)."""

    def __init__(self, url: str, deadline: float) -> None:
        super().__init__(url)
        self.deadline = deadline

    def deliver(self, alert: Alert) -> bool:
        if time.monotonic() > self.deadline:
            raise _OutOfTime
        return super().deliver(alert)


def build_alert_sensor(
    *,
    webhook_url: str | None,
    pending_max_age_seconds: int = DEFAULT_PENDING_ALERT_SECONDS,
    delivery_budget_seconds: float = DELIVERY_BUDGET_SECONDS,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """The alert sensor: one alert per FAILED or stuck file and per old backlog, to the log and the webhook."""

    @dg.sensor(
        name=ALERT_SENSOR_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Raises one alert per file that lands in FAILED or is stuck in PROCESSING past its lease, and one when "
            f"the oldest PENDING file is older than {pending_max_age_seconds / 3600:g} h; logs each here and POSTs "
            f"it to the webhook ({'set' if webhook_url else 'not set: PROPERTY_PIPELINE_ALERT_WEBHOOK_URL'})."
        ),
    )
    def property_alerts_sensor(context: dg.SensorEvaluationContext, database: PipelineDatabase) -> dg.SkipReason:
        engine = database.engine
        candidates = current_alerts(engine, pending_max_age_seconds=pending_max_age_seconds)
        raised = raise_alerts(engine, candidates, None).raised  # recorded once per key, before any delivery
        for alert in raised:
            context.log.warning(f"ALERT {alert.kind} (month {alert.month}): {alert.message}")
        delivery = ""
        if webhook_url:
            notifier = _BudgetedNotifier(webhook_url, time.monotonic() + delivery_budget_seconds)
            try:
                sent = raise_alerts(engine, [], notifier)
                if sent.delivered or sent.undelivered:
                    delivery = f"; webhook: {sent.delivered} delivered, {sent.undelivered} not delivered"
                if sent.undelivered:
                    context.log.warning(f"alert webhook unreachable or refusing: {sent.undelivered} alert(s) wait")
            except _OutOfTime:
                delivery = "; webhook: time budget spent, the rest is delivered next tick"
                context.log.warning("alert webhook slow: the remaining alerts are delivered next tick")
        return dg.SkipReason(
            f"{len(raised)} new alert(s) of {len(candidates)} current condition(s){delivery}"
            if raised or delivery
            else f"no new alerts ({len(candidates)} current condition(s) already raised)"
        )

    return property_alerts_sensor


def build_run_failure_sensor(
    *,
    webhook_url: str | None,
    ui_base_url: str = DEFAULT_UI_BASE_URL,
    delivery_budget_seconds: float = DELIVERY_BUDGET_SECONDS,
) -> dg.SensorDefinition:
    """A run-failure sensor for every job of the code location, the implicit asset job included.

    No `monitored_jobs`: Dagster then watches every run of this code location, including `__ASSET_JOB`
    (the UI's Materialize button and asset backfills), which a list of named jobs cannot name. Each
    failure is recorded once in the `alerts` table (key `run_failure:<run id>`), then delivered with
    the other waiting alerts; the message links to the run under PROPERTY_PIPELINE_UI_BASE_URL.
    """
    base = ui_base_url.rstrip("/")

    @dg.run_failure_sensor(
        name=RUN_FAILURE_SENSOR_NAME,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts once for every failed run of this code location (named jobs, the UI's Materialize "
        f"button and backfills), with a link to the run under {base}; logged here and POSTed to the webhook "
        f"({'set' if webhook_url else 'not set: PROPERTY_PIPELINE_ALERT_WEBHOOK_URL'}). record_month_state runs "
        "are left out: their month's FAILED files have their own alerts.",
    )
    def property_run_failure_sensor(context: dg.RunFailureSensorContext, database: PipelineDatabase) -> None:
        run = context.dagster_run
        if run.job_name in NOT_ALERTED_JOBS:
            return
        month = run.tags.get("dagster/partition", "")
        error = context.failure_event.message or "run failed"
        what = "a Materialize or backfill run" if run.job_name == "__ASSET_JOB" else f"job {run.job_name}"
        message = (
            f"run {run.run_id[:8]} ({what}){f' of month {month}' if month else ''} failed: {error[:300]} "
            f"See the run: {base}/runs/{run.run_id}"
        )
        alert = Alert(f"run_failure:{run.run_id}", "run_failure", None, month, message)
        engine = database.engine
        if not raise_alerts(engine, [alert], None).raised:
            return  # alerted already (a tick that ran again after a crash)
        context.log.warning(f"ALERT run_failure: {message}")
        if webhook_url:
            notifier = _BudgetedNotifier(webhook_url, time.monotonic() + delivery_budget_seconds)
            try:
                sent = raise_alerts(engine, [], notifier)
                if sent.undelivered:
                    context.log.warning("alert webhook unreachable: the alert sensor delivers it later")
            except _OutOfTime:
                context.log.warning("alert webhook slow: the alert sensor delivers the rest later")

    return property_run_failure_sensor
