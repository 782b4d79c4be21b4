"""Write the contract as JSON Schema for producers and consumers in other languages.

The files in ``schemas/json/`` are generated from the models and committed, so a change
to the contract shows up in review as a change to them. ``--check`` fails when they are
stale; the tests run the same comparison.

    python -m schemas.export            # write schemas/json/*.schema.json
    python -m schemas.export --check    # exit 1 if any file differs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from schemas.budget_events import BUDGET_EVENT_ADAPTER
from schemas.events import EVENT_ADAPTER
from schemas.jobs import CompletionJob

JSON_DIR: Final = Path(__file__).parent / "json"
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def completion_job_schema() -> dict[str, Any]:
    """What a producer may put on ``llm.jobs`` (validation view: defaults optional)."""
    schema = CompletionJob.model_json_schema(mode="validation")
    return _with_header(schema, "completion_job", "CompletionJob")


def terminal_event_schema() -> dict[str, Any]:
    """What a consumer reads from ``llm.results`` (serialization view: every field,
    the computed ``*_usd`` included, is always present)."""
    schema = EVENT_ADAPTER.json_schema(mode="serialization")
    schema["description"] = (
        "One terminal event per job; the field 'type' tells which. Consumers must ignore "
        "fields they do not know: new optional fields may appear within schema_version 1."
    )
    return _with_header(schema, "terminal_event", "TerminalEvent")


def budget_event_schema() -> dict[str, Any]:
    """What a consumer reads from the budget events topic (serialization view)."""
    schema = BUDGET_EVENT_ADAPTER.json_schema(mode="serialization")
    return _with_header(schema, "budget_event", "BudgetThresholdCrossed")


def _with_header(schema: dict[str, Any], name: str, title: str) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "$id": f"urn:budget-worker:schema:{name}:v1",
        **schema,
        "title": title,
    }


SCHEMAS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "completion_job.schema.json": completion_job_schema,
    "terminal_event.schema.json": terminal_event_schema,
    "budget_event.schema.json": budget_event_schema,
}


def render(schema: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """File name -> the text it should hold."""
    return {name: render(build()) for name, build in SCHEMAS.items()}


def stale_files(directory: Path = JSON_DIR) -> list[str]:
    """Names of the files in ``directory`` that are missing or differ from ``generated``."""
    stale = []
    for name, text in generated().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {JSON_DIR / name} (run python -m schemas.export)", file=sys.stderr)
        return 1 if stale else 0
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in generated().items():
        (JSON_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
