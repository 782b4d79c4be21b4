"""docs/asyncapi.yaml: committed as generated, readable as YAML, consistent with itself,
with the exported JSON Schemas and with the worker's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from schemas import asyncapi
from schemas.export import JSON_DIR
from worker.settings import Settings

EXAMPLES = Path(__file__).parent.parent / "schemas" / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.json"))


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(asyncapi.DOCUMENT_PATH.read_text(encoding="utf-8"))
    return loaded


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def payload_validator(doc: dict[str, Any], schema: str) -> Draft7Validator:
    # AsyncAPI schemas are a superset of JSON Schema draft 07; refs point into the doc.
    return Draft7Validator({"$ref": f"#/components/schemas/{schema}", **doc})


def test_the_committed_document_is_what_the_generator_writes() -> None:
    assert not asyncapi.is_stale(), "run: python -m schemas.asyncapi"
    assert asyncapi.main(["--check"]) == 0


def test_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    assert asyncapi.main(["--check", "--output", str(stale)]) == 1
    assert asyncapi.main(["--output", str(stale)]) == 0
    assert asyncapi.main(["--check", "--output", str(stale)]) == 0


def test_the_yaml_reads_back_as_the_generated_document(doc: dict[str, Any]) -> None:
    assert doc == json.loads(json.dumps(asyncapi.document()))


@pytest.mark.parametrize(
    "text",
    ["yes", "No", "null", "~", "3.0.0", "1e-07", "a: b", "#x", "- x", "x #y", "'q'", '"q"',
     "line\nbreak", "tab\there", "\u2028", "emoji \U0001f600", "back\\slash", "", " lead",
     "trail ", "@at", "*star", "&amp", "!bang", "%pct", "[1]", "{a}", "|", ">", "?q"],
)  # fmt: skip
def test_every_string_survives_the_yaml_writer(text: str) -> None:
    data = {text or "k": [text, {"v": text}], "numbers": [1e-07, 0.0002, 51530.0, -3, True]}
    assert yaml.safe_load(asyncapi.to_yaml(data)) == data


def test_it_is_asyncapi_3_with_the_default_topics_as_channel_addresses(
    doc: dict[str, Any],
) -> None:
    defaults = Settings.model_fields
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"].startswith("1.")
    addresses = {name: channel["address"] for name, channel in doc["channels"].items()}
    assert addresses["jobs"] == defaults["jobs_topic"].default
    assert addresses["results"] == defaults["results_topic"].default
    assert addresses["deadLetters"] == defaults["dlq_topic"].default
    assert addresses["budgetEvents"] == defaults["budget_events_topic"].default
    assert addresses["replies"] == "llm.results.{suffix}"
    assert set(doc["channels"]["replies"]["parameters"]) == {"suffix"}


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref


def test_each_operation_sends_or_receives_only_its_channels_messages(
    doc: dict[str, Any],
) -> None:
    actions = {name: op["action"] for name, op in doc["operations"].items()}
    assert actions == {
        "receiveJobs": "receive",
        "sendResults": "send",
        "sendReplies": "send",
        "sendDeadLetters": "send",
        "sendBudgetEvents": "send",
    }
    for operation in doc["operations"].values():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/")


def test_keys_are_the_user_id_for_jobs_and_the_job_id_for_events(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    assert "user_id" in messages["CompletionJob"]["bindings"]["kafka"]["key"]["description"]
    for name in ("CompletionSucceeded", "CompletionRejected", "CompletionFailed"):
        assert "job_id" in messages[name]["bindings"]["kafka"]["key"]["description"]
        assert messages[name]["correlationId"]["location"] == "$message.payload#/job_id"


def test_dead_letters_carry_the_contracts_headers(doc: dict[str, Any]) -> None:
    headers = doc["components"]["messages"]["DeadLetter"]["headers"]
    assert headers["required"] == [
        "error.type",
        "error.message",
        "source.topic",
        "source.partition",
        "source.offset",
    ]


def test_no_schema_uses_openapis_discriminator_object(doc: dict[str, Any]) -> None:
    def discriminators(node: Any) -> list[Any]:
        if isinstance(node, dict):
            own = [node["discriminator"]] if "discriminator" in node else []
            return own + [d for value in node.values() for d in discriminators(value)]
        if isinstance(node, list):
            return [d for value in node for d in discriminators(value)]
        return []

    assert all(isinstance(d, str) for d in discriminators(doc["components"]["schemas"]))


def test_the_schemas_are_the_exported_json_schemas(doc: dict[str, Any]) -> None:
    components = doc["components"]["schemas"]
    for file_name in (
        "completion_job.schema.json",
        "terminal_event.schema.json",
        "budget_event.schema.json",
    ):
        text = (JSON_DIR / file_name).read_text(encoding="utf-8")
        exported = json.loads(text.replace('"#/$defs/', '"#/components/schemas/'))
        for name, schema in exported.pop("$defs", {}).items():
            assert components[name] == schema, name
    budget = json.loads((JSON_DIR / "budget_event.schema.json").read_text(encoding="utf-8"))
    for key in ("$schema", "$id"):
        budget.pop(key)
    assert components["BudgetThresholdCrossed"] == budget
    job = json.loads((JSON_DIR / "completion_job.schema.json").read_text(encoding="utf-8"))
    for key in ("$schema", "$id", "$defs"):
        job.pop(key)
    assert components["CompletionJob"] == json.loads(
        json.dumps(job).replace('"#/$defs/', '"#/components/schemas/')
    )


def test_every_message_example_matches_its_payload_schema(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    for name, message in messages.items():
        payload_ref = message["payload"].get("$ref")
        if payload_ref is None:
            continue
        validator = payload_validator(doc, payload_ref.rsplit("/", 1)[1])
        assert message["examples"], name
        for example in message["examples"]:
            assert list(validator.iter_errors(example["payload"])) == [], name
        terminal = payload_validator(doc, "TerminalEvent")
        if name not in ("CompletionJob", "BudgetThresholdCrossed"):
            for example in message["examples"]:
                assert terminal.is_valid(example["payload"])


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_the_job_schema_refuses_every_invalid_example(doc: dict[str, Any], path: Path) -> None:
    job = json.loads(path.read_text(encoding="utf-8"))
    assert not payload_validator(doc, "CompletionJob").is_valid(job)
