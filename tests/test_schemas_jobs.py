import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.jobs import (
    CompletionJob,
    FieldError,
    InvalidJob,
    JobError,
    JobLimits,
    TextPart,
    UndecodableJob,
    parse_job,
)

EXAMPLE = Path(__file__).parent.parent / "schemas" / "examples" / "completion_job.json"
SECRET = "sk-live-PLANTED-SECRET-7f3a9c"


def job(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "job_id": "job-1",
        "user_id": "alice",
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello"}],
    }
    base.update(changes)
    return base


def encode(data: Any) -> bytes:
    return json.dumps(data).encode()


def invalid(data: Any, limits: JobLimits | None = None) -> InvalidJob:
    with pytest.raises(InvalidJob) as caught:
        parse_job(encode(data), limits or JobLimits())
    return caught.value


def locs(error: InvalidJob) -> list[str]:
    return [field.loc for field in error.errors]


def undecodable(raw: bytes, limits: JobLimits | None = None) -> str:
    with pytest.raises(UndecodableJob) as caught:
        parse_job(raw, limits or JobLimits())
    return str(caught.value)


# --- valid jobs ------------------------------------------------------------------------


def test_example_job_parses_with_every_field() -> None:
    parsed = parse_job(EXAMPLE.read_bytes())
    assert parsed.job_id == "support-bot:ticket-48213:reply-1"
    assert parsed.params.temperature == 0.2
    assert parsed.params.stop == ["\n\n"]
    assert parsed.deadline is not None and parsed.deadline.utcoffset() is not None
    assert parsed.metadata["ticket"] == 48213
    assert parsed.reply_to == "llm.results.support-bot"


def test_minimal_job_gets_empty_defaults() -> None:
    parsed = parse_job(encode(job()))
    assert parsed.max_tokens is None
    assert parsed.metadata == {}
    assert parsed.params.model_dump(exclude_none=True) == {}


def test_user_id_may_be_any_printable_text() -> None:
    user_id = "acme:{team}/José 🙂 *"
    assert parse_job(encode(job(user_id=user_id))).user_id == user_id


def test_assistant_message_with_tool_calls_may_have_null_content() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    assert len(parse_job(encode(job(messages=messages))).messages) == 3


def test_metadata_of_exactly_4096_bytes_is_accepted() -> None:
    padding = "x" * (4096 - len('{"k":""}'))
    assert parse_job(encode(job(metadata={"k": padding}))).metadata["k"] == padding


def test_text_parts_yields_every_text_the_provider_reads() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "alice", "content": [{"type": "text", "text": "Look:"}, image]},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    ]
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    parsed = parse_job(encode(job(messages=messages, params={"tools": tools})))
    texts = list(parsed.text_parts())
    for text in ["Be brief.", "alice", "Look:", "lookup", "{}", "call_1", "found"]:
        assert text in texts
    assert json.loads(texts[-1]) == tools
    assert "https://example.com/a.png" not in texts


def test_content_parts_are_typed_models() -> None:
    parsed = parse_job(
        encode(job(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}]))
    )
    content = parsed.messages[0].content
    assert isinstance(content, list) and isinstance(content[0], TextPart)


# --- undecodable jobs -----------------------------------------------------------------


def test_oversize_job_is_undecodable_before_it_is_decoded() -> None:
    message = undecodable(b"\xff" * 101, JobLimits(max_job_bytes=100))
    assert "101 bytes" in message and "100" in message


def test_invalid_utf8_is_undecodable() -> None:
    assert "UTF-8" in undecodable(encode(job())[:-1] + b'"\xff"}')


def test_text_that_is_not_json_is_undecodable() -> None:
    assert "not JSON" in undecodable(b'{"job_id": ')


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1]", "an array"), (b'"job"', "a string"), (b"null", "null"), (b"7", "a number")],
)
def test_json_that_is_not_an_object_is_undecodable(raw: bytes, kind: str) -> None:
    assert undecodable(raw) == f"the job is {kind}, not a JSON object"


def test_missing_job_id_is_undecodable() -> None:
    data = job()
    del data["job_id"]
    assert undecodable(encode(data)) == "job_id: Field required"


def test_missing_user_id_is_undecodable() -> None:
    data = job()
    del data["user_id"]
    assert undecodable(encode(data)) == "user_id: Field required"


def test_job_id_with_forbidden_characters_is_undecodable() -> None:
    assert undecodable(encode(job(job_id="job 1/2"))).startswith("job_id: String should match")


def test_job_id_of_129_characters_is_undecodable() -> None:
    message = undecodable(encode(job(job_id="j" * 129)))
    assert message == "job_id: String should have at most 128 characters"


def test_job_id_of_128_characters_is_accepted() -> None:
    assert parse_job(encode(job(job_id="j" * 128))).job_id == "j" * 128


def test_user_id_of_257_characters_is_undecodable() -> None:
    message = undecodable(encode(job(user_id="u" * 257)))
    assert message == "user_id: String should have at most 256 characters"


@pytest.mark.parametrize("user_id", ["alice\nbob", "a\x00", "a\u2028b", "a\x7f"])
def test_user_id_with_a_control_character_is_undecodable(user_id: str) -> None:
    assert undecodable(encode(job(user_id=user_id))).startswith("user_id: must be printable text")


def test_job_id_of_the_wrong_type_is_undecodable() -> None:
    assert undecodable(encode(job(job_id=17))) == "job_id: Input should be a valid string"


# --- invalid jobs ---------------------------------------------------------------------


def test_empty_messages_are_invalid() -> None:
    assert locs(invalid(job(messages=[]))) == ["messages"]


def test_unknown_role_is_invalid() -> None:
    error = invalid(job(messages=[{"role": "robot", "content": "Hi"}]))
    assert locs(error) == ["messages.0.role"]
    assert "'user'" in error.errors[0].message


def test_content_of_the_wrong_type_is_one_error_at_the_content() -> None:
    error = invalid(job(messages=[{"role": "user", "content": 42}]))
    assert error.errors == (
        FieldError(
            "messages.0.content", "Input should be a string, a list of content parts, or null"
        ),
    )


def test_error_inside_a_content_part_names_its_path() -> None:
    content = [{"type": "text", "text": "ok"}, {"type": "text", "text": 5}]
    error = invalid(job(messages=[{"role": "user", "content": content}]))
    assert locs(error) == ["messages.0.content.1.text"]


def test_null_content_outside_assistant_tool_calls_is_invalid() -> None:
    assert locs(invalid(job(messages=[{"role": "user", "content": None}]))) == [
        "messages.0.content"
    ]


def test_tool_message_without_tool_call_id_is_invalid() -> None:
    error = invalid(job(messages=[{"role": "tool", "content": "42"}]))
    assert locs(error) == ["messages.0.tool_call_id"]


def test_tool_calls_outside_assistant_messages_are_invalid() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    error = invalid(job(messages=[{"role": "user", "content": "x", "tool_calls": [call]}]))
    assert locs(error) == ["messages.0.tool_calls"]


def test_metadata_of_4097_bytes_is_invalid() -> None:
    padding = "x" * (4097 - len('{"k":""}'))
    error = invalid(job(metadata={"k": padding}))
    assert locs(error) == ["metadata"]
    assert "4097 bytes" in error.errors[0].message
    assert error.metadata == {}


@pytest.mark.parametrize(
    "name", ["api_base", "api_key", "mock_response", "callbacks", "base_url", "extra_body"]
)
def test_parameter_outside_the_allow_list_is_invalid(name: str) -> None:
    error = invalid(job(params={name: "x"}))
    assert error.errors == (FieldError(f"params.{name}", "not an allowed parameter"),)


def test_unknown_top_level_field_is_invalid() -> None:
    error = invalid(job(priority="high"))
    assert error.errors == (FieldError("priority", "not a field of this object"),)


def test_unknown_message_field_is_invalid() -> None:
    error = invalid(job(messages=[{"role": "user", "content": "x", "cache_control": {}}]))
    assert locs(error) == ["messages.0.cache_control"]


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_schema_version_other_than_1_is_invalid(version: Any) -> None:
    assert locs(invalid(job(schema_version=version))) == ["schema_version"]


def test_naive_deadline_is_invalid() -> None:
    error = invalid(job(deadline="2025-03-01T09:35:00"))
    assert error.errors == (FieldError("deadline", "Input should have timezone info"),)


def test_max_tokens_given_as_text_is_invalid() -> None:
    assert locs(invalid(job(max_tokens="100"))) == ["max_tokens"]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"temperature": 2.5}, "params.temperature"),
        ({"top_p": -0.1}, "params.top_p"),
        ({"n": 17}, "params.n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "params.stop"),
        ({"stop": 3}, "params.stop"),
        ({"logit_bias": {"50256": 101}}, "params.logit_bias.50256"),
        ({"top_logprobs": 21}, "params.top_logprobs"),
        ({"tool_choice": 1}, "params.tool_choice"),
        ({"logprobs": "yes"}, "params.logprobs"),
    ],
)
def test_parameter_out_of_range_is_invalid(params: dict[str, Any], loc: str) -> None:
    assert locs(invalid(job(params=params))) == [loc]


def test_nan_temperature_is_invalid() -> None:
    raw = encode(job())[:-1] + b', "params": {"temperature": NaN}}'
    with pytest.raises(InvalidJob) as caught:
        parse_job(raw)
    assert locs(caught.value) == ["params.temperature"]


@pytest.mark.parametrize("reply_to", ["results/alice", "", "t" * 250])
def test_reply_to_that_is_not_a_topic_name_is_invalid(reply_to: str) -> None:
    assert locs(invalid(job(reply_to=reply_to))) == ["reply_to"]


def test_too_many_messages_are_invalid() -> None:
    messages = [{"role": "user", "content": "x"}] * 4
    error = invalid(job(messages=messages), JobLimits(max_messages=3))
    assert error.errors == (FieldError("messages", "at most 3 messages are allowed, got 4"),)


def test_too_much_prompt_text_is_invalid() -> None:
    messages = [{"role": "user", "content": "x" * 6}, {"role": "user", "content": "y" * 5}]
    error = invalid(job(messages=messages), JobLimits(max_prompt_chars=10))
    assert locs(error) == ["messages"]
    assert "11 characters" in error.errors[0].message


def test_invalid_job_carries_what_an_event_needs() -> None:
    error = invalid(job(job_id="j-9", user_id="bob", model="m", metadata={"t": 1}, max_tokens=0))
    assert (error.job_id, error.user_id, error.model, error.metadata) == (
        "j-9",
        "bob",
        "m",
        {"t": 1},
    )


def test_invalid_job_with_a_non_string_model_reports_an_empty_model() -> None:
    error = invalid(job(model=["gpt"]))
    assert error.model == ""
    assert locs(error) == ["model"]


def test_invalid_job_message_is_one_line_of_path_and_rule() -> None:
    error = invalid(job(messages=[{"role": "user", "content": 1}], params={"api_base": "x"}))
    assert str(error) == (
        "messages.0.content: Input should be a string, a list of content parts, or null; "
        "params.api_base: not an allowed parameter"
    )


def test_invalid_job_message_shows_ten_errors_and_counts_the_rest() -> None:
    error = invalid(job(messages=[{"role": "robot", "content": "x"}] * 12))
    assert len(error.errors) == 12
    assert str(error).endswith("; and 2 more")
    assert "\n" not in str(error)


def test_unknown_key_chosen_by_the_sender_is_shortened_and_kept_on_one_line() -> None:
    error = invalid(job(**{"bad\nkey" + "k" * 100: 1}))
    assert "\n" not in str(error)
    assert error.errors[0].loc.startswith("bad\\nkey")
    assert error.errors[0].loc.endswith("...")


def test_errors_never_quote_prompt_text() -> None:
    messages = [
        {"role": "user", "content": [{"type": SECRET, "text": SECRET}]},
        {"role": SECRET, "content": SECRET},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}], "x": SECRET},
        {"role": "user", "content": SECRET, "name": SECRET * 20},
        {"role": "tool", "content": SECRET},
    ]
    error = invalid(job(messages=messages, params={"stop": [SECRET] * 5, "user": SECRET * 20}))
    assert len(error.errors) >= 6
    assert SECRET not in str(error)
    assert all(SECRET not in f"{e.loc} {e.message}" for e in error.errors)
    assert error.__cause__ is None and error.__context__ is None


def test_undecodable_job_never_quotes_prompt_text() -> None:
    message = undecodable(encode(job(job_id=SECRET + " x", messages=[{"content": SECRET}])))
    assert SECRET not in message


def test_job_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        JobLimits(max_messages=0)


def test_job_errors_are_value_errors() -> None:
    assert issubclass(InvalidJob, JobError) and issubclass(UndecodableJob, JobError)
    assert issubclass(JobError, ValueError)


def test_parsed_job_is_immutable() -> None:
    parsed = parse_job(encode(job()))
    with pytest.raises(ValueError, match="frozen"):
        parsed.max_tokens = 5  # type: ignore[misc]


def test_job_can_be_built_in_python_and_round_trips_through_json() -> None:
    built = CompletionJob.model_validate(job(params={"temperature": 0.5}))
    assert parse_job(built.model_dump_json(exclude_none=True).encode()) == built


# --- properties -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [*job().keys(), "max_tokens", "params", "metadata", "deadline", "max_wait_s", "reply_to"]
)


def outcome_of(raw: bytes) -> str:
    try:
        parse_job(raw)
    except JobError as error:
        return type(error).__name__
    return "ok"


@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_a_job_or_a_job_error(raw: bytes) -> None:
    assert outcome_of(raw) in {"ok", "UndecodableJob", "InvalidJob"}


@given(json_values)
def test_arbitrary_json_gives_a_job_or_a_job_error(value: Any) -> None:
    assert outcome_of(encode(value)) in {"ok", "UndecodableJob", "InvalidJob"}


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(field_names, json_values)
def test_a_job_with_one_field_replaced_gives_a_job_or_a_job_error(name: str, value: Any) -> None:
    assert outcome_of(encode(job(**{name: value}))) in {"ok", "UndecodableJob", "InvalidJob"}


@given(st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), json_values))
def test_a_job_with_an_arbitrary_message_is_invalid_or_valid_never_undecodable(
    message: dict[str, Any],
) -> None:
    assert outcome_of(encode(job(messages=[message]))) in {"ok", "InvalidJob"}
