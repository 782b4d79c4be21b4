import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas.budget_events import encode_budget_event, parse_budget_event
from schemas.events import encode_event, parse_event
from schemas.export import DIALECT, JSON_DIR, generated, main, stale_files
from schemas.jobs import InvalidJob, JobError, parse_job

EXAMPLES = Path(__file__).parent.parent / "schemas" / "examples"

# invalid example -> (where JSON Schema reports it, where parse_job reports it)
INVALID_JOBS = {
    "job_id_bad_chars": ("job_id", "job_id"),
    "job_id_too_long": ("job_id", "job_id"),
    "user_id_too_long": ("user_id", "user_id"),
    "user_id_control_char": ("user_id", "user_id"),
    "schema_version_2": ("schema_version", "schema_version"),
    "messages_empty": ("messages", "messages"),
    "role_unknown": ("messages.0.role", "messages.0.role"),
    "content_wrong_type": ("messages.0.content", "messages.0.content"),
    "max_tokens_zero": ("max_tokens", "max_tokens"),
    "param_api_base": ("params", "params.api_base"),
    "param_temperature_too_high": ("params.temperature", "params.temperature"),
    "unknown_field": ("", "priority"),
    "reply_to_bad_topic": ("reply_to", "reply_to"),
}


def committed(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((JSON_DIR / name).read_text(encoding="utf-8"))
    return schema


def job_validator() -> Draft202012Validator:
    return Draft202012Validator(committed("completion_job.schema.json"))


def event_validator() -> Draft202012Validator:
    return Draft202012Validator(committed("terminal_event.schema.json"))


def error_paths(validator: Draft202012Validator, instance: Any) -> set[str]:
    return {".".join(map(str, error.absolute_path)) for error in validator.iter_errors(instance)}


def example(name: str) -> Any:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def test_committed_schemas_are_what_export_generates() -> None:
    assert stale_files() == [], "run: python -m schemas.export"


def test_export_check_passes_on_the_committed_schemas() -> None:
    assert main(["--check"]) == 0


def test_stale_schema_file_is_detected(tmp_path: Path) -> None:
    for name, text in generated().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "completion_job.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "terminal_event.schema.json").unlink()
    assert stale_files(tmp_path) == ["completion_job.schema.json", "terminal_event.schema.json"]


def test_schema_files_are_sorted_pretty_json_with_a_trailing_newline() -> None:
    for name in generated():
        text = (JSON_DIR / name).read_text(encoding="utf-8")
        assert (
            text
            == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )


@pytest.mark.parametrize(
    "name", ["completion_job.schema.json", "terminal_event.schema.json", "budget_event.schema.json"]
)
def test_schema_is_valid_draft_2020_12_with_id_and_title(name: str) -> None:
    schema = committed(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DIALECT
    assert schema["$id"].startswith("urn:budget-worker:schema:")
    assert schema["title"]


def test_job_schema_says_the_metadata_limit_is_not_expressible() -> None:
    description = committed("completion_job.schema.json")["properties"]["metadata"]["description"]
    assert "4096 bytes" in description and "cannot express" in description


def test_job_schema_forbids_unknown_fields_and_parameters() -> None:
    schema = committed("completion_job.schema.json")
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["JobParams"]["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == 1


def test_job_schema_accepts_the_valid_example() -> None:
    assert error_paths(job_validator(), example("completion_job")) == set()


def test_every_invalid_example_is_listed() -> None:
    assert {path.stem for path in (EXAMPLES / "invalid").glob("*.json")} == set(INVALID_JOBS)


@pytest.mark.parametrize("name", sorted(INVALID_JOBS))
def test_job_schema_rejects_invalid_example_at_the_field(name: str) -> None:
    schema_path, _ = INVALID_JOBS[name]
    assert error_paths(job_validator(), example(f"invalid/{name}")) == {schema_path}


@pytest.mark.parametrize("name", sorted(INVALID_JOBS))
def test_parse_job_rejects_invalid_example_at_the_same_field(name: str) -> None:
    _, loc = INVALID_JOBS[name]
    with pytest.raises(JobError) as caught:
        parse_job((EXAMPLES / "invalid" / f"{name}.json").read_bytes())
    if isinstance(caught.value, InvalidJob):
        assert [error.loc for error in caught.value.errors] == [loc]
    else:
        assert str(caught.value).startswith(f"{loc}: ")


@pytest.mark.parametrize(
    "name", ["completion_succeeded", "completion_rejected", "completion_failed"]
)
def test_event_schema_accepts_the_example_event(name: str) -> None:
    assert error_paths(event_validator(), example(name)) == set()


@pytest.mark.parametrize(
    "name", ["completion_succeeded", "completion_rejected", "completion_failed"]
)
def test_event_schema_accepts_what_encode_event_writes(name: str) -> None:
    event = parse_event((EXAMPLES / f"{name}.json").read_bytes())
    assert error_paths(event_validator(), json.loads(encode_event(event))) == set()


def test_event_schema_rejects_an_event_missing_a_common_field() -> None:
    event = example("completion_failed")
    del event["job_id"]
    assert not event_validator().is_valid(event)


def test_event_schema_allows_unknown_fields() -> None:
    event = example("completion_failed") | {"region": "eu-west-1"}
    assert event_validator().is_valid(event)


def test_schemas_package_imports_only_pydantic_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"pydantic", "pydantic_core", "schemas"}
    package = Path(__file__).parent.parent / "schemas"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{module.name} imports {name}"


def test_budget_event_schema_accepts_the_example_and_what_encode_writes() -> None:
    validator = Draft202012Validator(committed("budget_event.schema.json"))
    assert error_paths(validator, example("budget_threshold_crossed")) == set()
    event = parse_budget_event((EXAMPLES / "budget_threshold_crossed.json").read_bytes())
    assert error_paths(validator, json.loads(encode_budget_event(event))) == set()
    assert event.threshold_pct == 80 and event.spent_usd == 0.0001665


def test_budget_event_schema_refuses_a_threshold_out_of_range() -> None:
    validator = Draft202012Validator(committed("budget_event.schema.json"))
    broken = {**example("budget_threshold_crossed"), "threshold_pct": 101}
    assert error_paths(validator, broken) == {"threshold_pct"}
