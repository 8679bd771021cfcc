"""A test-only validation rule, standing for a rule fixed or a mapping added after files were loaded.

Records that carry `extras.replayRule` are affected, the others not, so a test decides which records
(and so which months) a rule change touches: "reject" sends the record to quarantine, "upper" maps
`address.city` to upper case. `install` puts the rule into the parser of this process; a subprocess
calls it first thing (see `RULE_PRELUDE`).
"""

from __future__ import annotations

from typing import Any

from property_pipeline.processing import parse
from property_pipeline.processing.records import COLUMNS, PropertyRecord, RecordRejected, validate_record

REJECTED_REASON = "test rule: a record the new rule refuses"
CITY = COLUMNS.index("city")


def validate_with_new_rule(record: Any) -> PropertyRecord:
    typed = validate_record(record)
    flag = (record.get("extras") or {}).get("replayRule")
    if flag == "reject":
        raise RecordRejected(REJECTED_REASON)
    if flag == "upper":
        values = list(typed.values)
        values[CITY] = str(values[CITY]).upper()
        return PropertyRecord(typed.property_id, tuple(values), typed.raw_json)
    return typed


def install() -> None:
    parse.validate_record = validate_with_new_rule  # type: ignore[assignment]


def uninstall() -> None:
    parse.validate_record = validate_record  # type: ignore[assignment]


RULE_PRELUDE = "from property_pipeline_tests import replay_rules; replay_rules.install()\n"
