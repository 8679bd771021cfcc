"""The benchmark runner: each target in its own process, then one table of medians, ratios and min-max.

    python -m benchmarks              # full mode (`make bench`): the full sizes, 3 repeats each
    python -m benchmarks --quick      # CI smoke (`make bench-quick`): tiny sizes, 1 repeat, no timing goals
    python -m benchmarks --only processing,sqlite

Results go to benchmarks/results/<mode>-<time>.json (and latest-<mode>.json), the printed table included.
Exit status: 1 when a target could not run or a correctness check failed (in quick mode that is all it
checks); timing goals are reported as met or not, and only fail the run with --require-goals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine_facts, python_child, server_facts, sizes_for
from benchmarks.run_target import TARGETS


def _number(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table: every method's median and min-max, every ratio against its goal."""
    lines = [
        "| target / method | median | min-max | unit | goal | met |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| **{result['target']}**: did not run ({result['error']}) | | | | | |")
            continue
        lines.append(f"| **{result['title']}** | | | | | |")
        for method in result["methods"].values():
            unit = method["unit"]
            lines.append(
                f"| {method['label']} | {_number(method['median'], unit)} | "
                f"{_number(method['min'], unit)}-{_number(method['max'], unit)} | {unit} | | |"
            )
        for ratio in result["ratios"]:
            unit = ratio.get("unit", "x")
            label = f"ratio: {ratio['label']}" if unit == "x" else ratio["label"]
            lines.append(
                f"| {label} | **{_number(ratio['median'], 'x')}** | "
                f"{_number(ratio['min'], 'x')}-{_number(ratio['max'], 'x')} | {unit} | "
                f"{ratio['goal']} | {'yes' if ratio['met'] else 'NO'} |"
            )
        for check in result["checks"]:
            if not check["ok"]:
                lines.append(f"| CHECK FAILED: {check['name']}: {check['detail']} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the machinery runs")
    parser.add_argument("--only", help=f"comma-separated targets out of: {', '.join(TARGETS)}")
    parser.add_argument("--repeats", type=int, help="repeats per method (default: 3 in full mode, 1 in quick)")
    parser.add_argument(
        "--output", type=Path, help="JSON file to write (default: benchmarks/results/<mode>-<time>.json)"
    )
    parser.add_argument("--require-goals", action="store_true", help="exit 1 when a timing goal is not met")
    arguments = parser.parse_args(argv)
    mode = "quick" if arguments.quick else "full"
    names = arguments.only.split(",") if arguments.only else list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    env = {"PROPERTY_PIPELINE_BENCH_REPEATS": str(arguments.repeats)} if arguments.repeats else {}
    sizes = sizes_for(mode) if not arguments.repeats else None
    started = time.time()
    document: dict[str, Any] = {
        "mode": mode,
        "repeats": arguments.repeats or (sizes.repeats if sizes else None),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_facts(),
        "database": server_facts(),
        "results": [],
    }
    failed = False
    with tempfile.TemporaryDirectory(prefix="pp_bench_results_") as scratch:
        for name in names:
            print(f"== {name} ({mode})", file=sys.stderr, flush=True)
            output = Path(scratch) / f"{name}.json"
            child = python_child("benchmarks.run_target", name, mode, str(output), env=env)
            sys.stderr.write(child.stderr[-20000:])
            if child.returncode != 0 or not output.exists():
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                document["results"].append({"target": name, "error": f"exit {child.returncode}: {last}"})
                failed = True
                continue
            result = json.loads(output.read_text())
            result["seconds"] = round(child.wall_seconds, 1)
            document["results"].append(result)
            failed = failed or any(not check["ok"] for check in result["checks"])
    document["seconds"] = round(time.time() - started, 1)
    table = render_table(document["results"])
    goals = [ratio for result in document["results"] for ratio in result.get("ratios", [])]
    unmet = [ratio["label"] for ratio in goals if not ratio["met"]]
    notes = [f"- {result['target']}: {note}" for result in document["results"] for note in result.get("notes", [])]
    broken = [result["target"] for result in document["results"] if "error" in result]
    verdict = "every goal met" if not unmet else f"goals NOT met: {', '.join(unmet)}"
    if broken:
        verdict = f"targets that did not run: {', '.join(broken)}; " + verdict
    if mode == "quick":
        verdict = "quick mode: sizes too small for the goals to mean anything; checks " + (
            "FAILED" if failed else "passed"
        )
    document["table"] = table
    document["verdict"] = verdict
    print(table)
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\n{verdict} ({document['seconds']:.0f}s)")
    output = arguments.output or RESULTS_DIR / f"{mode}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str))
    (output.parent / f"latest-{mode}.json").write_text(json.dumps(document, indent=2, default=str))
    print(f"results written to {os.path.relpath(output)}")
    if failed:
        return 1
    return 1 if arguments.require_goals and unmet and mode == "full" else 0
