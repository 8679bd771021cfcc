"""A test-only validation rule, standing for a rule fixed or a mapping added after files were loaded.

Records that carry `extras.replayRule` are affected, the others not, so a test decides which records
(and so which months) a rule change touches: "reject" sends the record to quarantine, "upper" maps
`address.city` to upper case. `install` puts the rule into the parser of this process, on both of
its validation paths (a record read from its bytes, a record decoded with its page), and changes the
rules' fingerprint as a change to records.py would; a subprocess calls it first thing (see
`RULE_PRELUDE`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from property_pipeline.processing import parse, records
from property_pipeline.processing.records import COLUMNS, PropertyRecord, RecordRejected, read_record, validate_record

REJECTED_REASON = "test rule: a record the new rule refuses"
CITY = COLUMNS.index("city")


def _with_new_rule(record: Any, typed: PropertyRecord) -> PropertyRecord:
    flag = (record.get("extras") or {}).get("replayRule")
    if flag == "reject":
        raise RecordRejected(REJECTED_REASON)
    if flag == "upper":
        values = list(typed.values)
        values[CITY] = str(values[CITY]).upper()
        return replace(typed, values=tuple(values))
    return typed


def validate_with_new_rule(record: Any, raw: bytes | memoryview | None = None) -> PropertyRecord:
    return _with_new_rule(record, validate_record(record, raw))


def read_with_new_rule(raw: bytes | memoryview, *, may_hold_nul: bool = True) -> PropertyRecord:
    typed = read_record(raw, may_hold_nul=may_hold_nul)
    return _with_new_rule(orjson.loads(bytes(raw)), typed)


# A real rule change is a change to records.py, which changes the rules' fingerprint in every content hash.
_FINGERPRINT = records.RULES_FINGERPRINT


def install() -> None:
    parse.validate_record = validate_with_new_rule  # type: ignore[assignment]
    parse.read_record = read_with_new_rule  # type: ignore[assignment]
    records.RULES_FINGERPRINT = _FINGERPRINT ^ 1


def uninstall() -> None:
    parse.validate_record = validate_record  # type: ignore[assignment]
    parse.read_record = read_record  # type: ignore[assignment]
    records.RULES_FINGERPRINT = _FINGERPRINT


RULE_PRELUDE = "from property_pipeline_tests import replay_rules; replay_rules.install()\n"
