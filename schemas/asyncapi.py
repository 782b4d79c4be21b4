"""Write the wire contract as an AsyncAPI 3.0 document: ``docs/asyncapi.yaml``.

The document describes budget-worker as an application: it receives ``CompletionJob``
messages on ``llm.jobs`` and sends one terminal event per job to ``llm.results`` (or the
job's ``reply_to`` topic), undecodable records to ``llm.jobs.dlq`` and budget events to
``llm.budget-events``. Its message
schemas are generated from the same pydantic models as ``schemas/json/`` (jobs in
validation mode, events in serialization mode), moved under ``components/schemas``;
its examples are the files in ``schemas/examples/``. The output is committed, so a
change to the contract shows up in review; ``--check`` fails when it is stale, and the
tests run the same comparison.

    python -m schemas.asyncapi            # write docs/asyncapi.yaml
    python -m schemas.asyncapi --check    # exit 1 if it differs from what is generated

Only the standard library and pydantic are used, so the YAML is written here: a small
emitter for JSON-like data that quotes every string YAML could read as something else.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from schemas.budget_events import BUDGET_EVENT_ADAPTER
from schemas.events import EVENT_ADAPTER
from schemas.jobs import CompletionJob

DOCUMENT_PATH: Final = Path(__file__).parent.parent / "docs" / "asyncapi.yaml"
EXAMPLES_DIR: Final = Path(__file__).parent / "examples"
CONTRACT_VERSION: Final = "1.0.0"
"""The contract's version: major = ``schema_version``; minor grows with optional fields."""

KAFKA_BINDING_VERSION: Final = "0.5.0"
_REF: Final = "#/components/schemas/{model}"
_HEADER: Final = (
    "# The wire contract of budget-worker as AsyncAPI 3.0. Generated from the pydantic\n"
    "# models in schemas/ by `python -m schemas.asyncapi`; do not edit by hand.\n"
)

_EVENTS: Final = {
    "completionSucceeded": (
        "CompletionSucceeded",
        "The model answered; the job was charged its actual cost.",
        "completion_succeeded.json",
    ),
    "completionRejected": (
        "CompletionRejected",
        "The job was not run and nothing was charged (budget, rate limit, invalid job, ...).",
        "completion_rejected.json",
    ),
    "completionFailed": (
        "CompletionFailed",
        "The job was started but no answer came (provider errors after bounded retries).",
        "completion_failed.json",
    ),
}


# --- the document ----------------------------------------------------------------------


def document() -> dict[str, Any]:
    """The AsyncAPI document as plain data."""
    event_refs = {
        message_id: {"$ref": f"#/components/messages/{name}"}
        for message_id, (name, _, _) in _EVENTS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "budget-worker",
            "version": CONTRACT_VERSION,
            "description": (
                "Hard per-user LLM spend budgets in front of LLM calls. Producing services "
                "put a CompletionJob on the jobs topic, keyed by user id; worker processes "
                "(one consumer group) reserve the job's estimated cost in Redis, call the "
                "model, settle the actual cost and publish exactly one terminal event per "
                "job (at least once: de-duplicate on job_id), keyed by job id. Money is "
                "integers of nano-USD (1 USD = 1,000,000,000). Topic names are settings; "
                "the addresses here are their defaults. The contract in prose: "
                "docs/contract.md."
            ),
            "license": {"name": "MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": (
                    "Any Kafka-protocol broker (BW_KAFKA_BOOTSTRAP; TLS and SASL by "
                    "BW_KAFKA_SECURITY_PROTOCOL and BW_KAFKA_SASL_*). No idempotent or "
                    "transactional producer is required."
                ),
            }
        },
        "channels": {
            "jobs": {
                "address": "llm.jobs",
                "title": "Jobs",
                "description": (
                    "Completion jobs from producing services, keyed by user_id so one "
                    "user's jobs keep their order. Read by the workers' consumer group."
                ),
                "messages": {"completionJob": {"$ref": "#/components/messages/CompletionJob"}},
                "x-setting": "BW_JOBS_TOPIC",
            },
            "results": {
                "address": "llm.results",
                "title": "Results",
                "description": (
                    "One terminal event per job, keyed by job_id; the field 'type' tells "
                    "which. An event may be delivered more than once: the first one for a "
                    "job_id is the outcome."
                ),
                "messages": event_refs,
                "x-setting": "BW_RESULTS_TOPIC",
            },
            "replies": {
                "address": "llm.results.{suffix}",
                "title": "Reply topics",
                "description": (
                    "A job's events go to its reply_to topic instead of the results topic "
                    "when it names one the worker allows (BW_REPLY_TO_PATTERN, by default "
                    "llm.results or llm.results.<suffix>); a job naming another topic is "
                    "rejected as invalid_job on the results topic."
                ),
                "parameters": {
                    "suffix": {
                        "description": "1-100 characters of [A-Za-z0-9_-] (default pattern).",
                        "examples": ["support-bot", "billing_service-2"],
                    }
                },
                "messages": event_refs,
                "x-setting": "BW_REPLY_TO_PATTERN",
            },
            "deadLetters": {
                "address": "llm.jobs.dlq",
                "title": "Dead letters",
                "description": (
                    "Records of the jobs topic that cannot be answered with an event "
                    "(too large, not UTF-8 JSON, not an object, or without a valid job_id "
                    "and user_id): the original key and bytes, untouched, with headers "
                    "saying why and where from."
                ),
                "messages": {"deadLetter": {"$ref": "#/components/messages/DeadLetter"}},
                "x-setting": "BW_DLQ_TOPIC",
            },
            "budgetEvents": {
                "address": "llm.budget-events",
                "title": "Budget events",
                "description": (
                    "What happened to a budget, keyed by scope so one scope's events keep "
                    "their order: budget.threshold_crossed once per scope, period and "
                    "threshold, delivered at least once; copies share the event_id."
                ),
                "messages": {
                    "budgetThresholdCrossed": {
                        "$ref": "#/components/messages/BudgetThresholdCrossed"
                    }
                },
                "x-setting": "BW_BUDGET_EVENTS_TOPIC",
            },
        },
        "operations": {
            "receiveJobs": {
                "action": "receive",
                "channel": {"$ref": "#/channels/jobs"},
                "summary": "Workers consume jobs in one consumer group, at least once.",
                "messages": [{"$ref": "#/channels/jobs/messages/completionJob"}],
                "bindings": {
                    "kafka": {
                        "groupId": {
                            "type": "string",
                            "default": "budget-worker",
                            "description": "BW_GROUP_ID",
                        },
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            },
            "sendResults": {
                "action": "send",
                "channel": {"$ref": "#/channels/results"},
                "summary": "One terminal event per job read, acknowledged before its offset "
                "is committed.",
                "messages": [
                    {"$ref": f"#/channels/results/messages/{message_id}"} for message_id in _EVENTS
                ],
            },
            "sendReplies": {
                "action": "send",
                "channel": {"$ref": "#/channels/replies"},
                "summary": "The same events, for jobs that name an allowed reply_to topic.",
                "messages": [
                    {"$ref": f"#/channels/replies/messages/{message_id}"} for message_id in _EVENTS
                ],
            },
            "sendDeadLetters": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "summary": "Undecodable records, each with the reason in its headers.",
                "messages": [{"$ref": "#/channels/deadLetters/messages/deadLetter"}],
            },
            "sendBudgetEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/budgetEvents"},
                "summary": "Each threshold crossing, decided in the ledger's settle step and "
                "published from its outbox until acknowledged.",
                "messages": [{"$ref": "#/channels/budgetEvents/messages/budgetThresholdCrossed"}],
            },
        },
        "components": {
            "schemas": component_schemas(),
            "messages": _messages(),
        },
    }


def _correlation_id() -> dict[str, Any]:
    return {
        "description": "A job and its events share the job_id, the idempotency key.",
        "location": "$message.payload#/job_id",
    }


def _kafka_key(description: str) -> dict[str, Any]:
    return {
        "kafka": {
            "key": {"type": "string", "description": description},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


def _example(file_name: str, name: str, summary: str) -> dict[str, Any]:
    payload = json.loads((EXAMPLES_DIR / file_name).read_text(encoding="utf-8"))
    return {"name": name, "summary": summary, "payload": payload}


def _messages() -> dict[str, Any]:
    messages: dict[str, Any] = {
        "CompletionJob": {
            "name": "CompletionJob",
            "title": "Completion job",
            "summary": "A chat completion to run for a user, within that user's budget.",
            "description": (
                "Inbound and strict: unknown fields are rejected, values are not coerced. "
                "The worker also enforces what JSON Schema cannot express: metadata at most "
                "4096 bytes as compact JSON, at most 256 messages and 400,000 characters of "
                "text (settings), and the whole record at most BW_MAX_JOB_BYTES (1 MiB). A "
                "job that breaks a rule gets a completion.rejected event with reason "
                "invalid_job; a record with no valid job_id and user_id goes to the "
                "dead-letter topic."
            ),
            "contentType": "application/json",
            "payload": {"$ref": "#/components/schemas/CompletionJob"},
            "correlationId": _correlation_id(),
            "bindings": _kafka_key("The job's user_id, UTF-8."),
            "examples": [
                _example("completion_job.json", "support-reply", "A job with every field set.")
            ],
        }
    }
    for message_id, (name, summary, example_file) in _EVENTS.items():
        messages[name] = {
            "name": name,
            "title": name,
            "summary": summary,
            "description": (
                "Consumers must ignore fields they do not know: new optional fields may "
                "appear within schema_version 1. Each *_usd float is *_nanousd / 1e9, for "
                "display only."
            ),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "correlationId": _correlation_id(),
            "bindings": _kafka_key("The job_id, UTF-8."),
            "examples": [_example(example_file, message_id, summary)],
        }
    messages["BudgetThresholdCrossed"] = {
        "name": "BudgetThresholdCrossed",
        "title": "Budget threshold crossed",
        "summary": "A scope's spend in a period reached a percent of its USD limit.",
        "description": (
            "Thresholds are per scope (default 50, 80, 95 and 100). De-duplicate on "
            "event_id: every copy of one crossing has the same. Consumers must ignore "
            "fields they do not know. Each *_usd float is *_nanousd / 1e9, for display only."
        ),
        "contentType": "application/json",
        "payload": {"$ref": "#/components/schemas/BudgetThresholdCrossed"},
        "correlationId": {
            "description": "Copies of one crossing share the event_id.",
            "location": "$message.payload#/event_id",
        },
        "bindings": _kafka_key("The scope, e.g. user:alice, UTF-8."),
        "examples": [
            _example(
                "budget_threshold_crossed.json",
                "eighty-percent",
                "alice's daily budget is 80% spent.",
            )
        ],
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": "An undecodable record of the jobs topic, untouched.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "description": "Header values are UTF-8 text.",
            "required": [
                "error.type",
                "error.message",
                "source.topic",
                "source.partition",
                "source.offset",
            ],
            "properties": {
                "error.type": {
                    "type": "string",
                    "description": "Why the record could not be answered.",
                    "examples": ["undecodable"],
                },
                "error.message": {
                    "type": "string",
                    "maxLength": 1000,
                    "description": "What was wrong; it never quotes the record.",
                },
                "source.topic": {"type": "string", "description": "The jobs topic."},
                "source.partition": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "The record's partition, as decimal text.",
                },
                "source.offset": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "The record's offset, as decimal text.",
                },
                "value.truncated_from": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": (
                        "Present when the record was too large to forward whole: its "
                        "original size in bytes; the value is then its first "
                        "BW_MAX_JOB_BYTES bytes."
                    ),
                },
            },
        },
        "payload": {"description": "The original record's value: any bytes."},
        "bindings": {
            "kafka": {
                "key": {"description": "The original record's key, untouched (may be absent)."},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    return messages


def component_schemas() -> dict[str, Any]:
    """Every model's schema by name, references pointing into ``components/schemas``."""
    job = CompletionJob.model_json_schema(mode="validation", ref_template=_REF)
    events = EVENT_ADAPTER.json_schema(mode="serialization", ref_template=_REF)
    # AsyncAPI's discriminator is a property name on an inheritance parent, not
    # OpenAPI's object; the oneOf of schemas with a const 'type' says the same exactly.
    events.pop("discriminator", None)
    events["title"] = "TerminalEvent"
    events["description"] = (
        "One terminal event per job; the field 'type' tells which. Consumers must ignore "
        "fields they do not know: new optional fields may appear within schema_version 1."
    )
    budget = BUDGET_EVENT_ADAPTER.json_schema(mode="serialization", ref_template=_REF)
    schemas: dict[str, Any] = {}
    for source in (job, events, budget):
        for name, schema in source.pop("$defs", {}).items():
            _add(schemas, name, schema)
    _add(schemas, "CompletionJob", job)
    _add(schemas, "TerminalEvent", events)
    _add(schemas, "BudgetThresholdCrossed", budget)
    return {name: schemas[name] for name in sorted(schemas)}


def _add(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    if name in schemas and schemas[name] != schema:
        raise ValueError(f"two different models are both named {name!r}")
    schemas[name] = schema


# --- YAML --------------------------------------------------------------------------------

# A plain scalar that every YAML 1.1 and 1.2 reader reads back as this very string:
# no indicator first, no ': ' or ' #' inside, nothing a resolver takes for a bool,
# null, number or date (those start with a digit, a sign or a dot, or are words below).
_PLAIN: Final = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$ ./()+,=<>'-]*$")
_NOT_STRINGS: Final = frozenset(
    {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf"}
)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"  # YAML 1.1 floats need the dot
        return text
    if isinstance(value, str):
        plain = (
            _PLAIN.match(value) is not None
            and not value.endswith(" ")
            and ": " not in value
            and " #" not in value
            and value.lower() not in _NOT_STRINGS
        )
        return value if plain else _quoted(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


_SHORT_ESCAPES: Final = {"\n": "\\n", "\t": "\\t"}


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar: printable ASCII as it is, everything else escaped
    (``\\uXXXX`` or, beyond the BMP, ``\\UXXXXXXXX``), so no character can break a line."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _lines(value: Any, indent: int) -> list[str]:
    """``value`` (a non-empty mapping or sequence) as block YAML lines at ``indent``."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_scalar(str(key))}:")
                lines.extend(_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{_scalar(str(key))}: {_inline(item)}")
        return lines
    for item in value:
        if isinstance(item, dict) and item:
            nested = _lines(item, indent + 2)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
        elif isinstance(item, list) and item:
            lines.append(f"{pad}-")
            lines.extend(_lines(item, indent + 2))
        else:
            lines.append(f"{pad}- {_inline(item)}")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(data: dict[str, Any]) -> str:
    """Block-style YAML of JSON-like ``data`` (mappings keep their order)."""
    return "\n".join(_lines(data, 0)) + "\n"


def render() -> str:
    return _HEADER + to_yaml(document())


def is_stale(path: Path = DOCUMENT_PATH) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.asyncapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--output", type=Path, default=DOCUMENT_PATH, help="the YAML file")
    args = parser.parse_args(argv)
    if args.check:
        if is_stale(args.output):
            print(f"stale: {args.output} (run python -m schemas.asyncapi)", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
