"""``CompletionJob``: what producing services put on ``llm.jobs``, and how it is parsed.

A job is inbound and untrusted, so its models are strict: unknown fields are rejected
(``extra="forbid"``), values are not coerced (``"10"`` is not an int, ``true`` is not
``1``), and NaN/infinity are not numbers. Being strict keeps the models in agreement
with the exported JSON Schema, which producers in other languages validate against.

``parse_job`` is the one entry point for bytes from Kafka. It tells apart the two
outcomes the worker must handle differently::

    JobError(ValueError)
    +-- UndecodableJob   no event can be addressed: to the dead-letter queue
    +-- InvalidJob       addressable but wrong: a ``completion.rejected`` event
                         with reason ``invalid_job``

Error messages name the field path and the broken rule, and never repeat a value:
a job's text is a user's prompt and must not leak into events, logs or the DLQ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ChatMessage",
    "CompletionJob",
    "FieldError",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "InvalidJob",
    "JobError",
    "JobId",
    "JobLimits",
    "JobParams",
    "JobRun",
    "TextPart",
    "ToolCall",
    "UndecodableJob",
    "UserId",
    "parse_job",
]

MAX_METADATA_BYTES: Final = 4096

_CONTROL_CHARS: Final = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_NOT_PRINTABLE: Final = re.compile(f"[{_CONTROL_CHARS}\ud800-\udfff]")


def _printable(value: str) -> str:
    if _NOT_PRINTABLE.search(value):
        raise PydanticCustomError(
            "printable_text", "must be printable text: no control characters or line breaks"
        )
    return value


JobId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
"""The idempotency key of a job, safe to use in logs and key names as it is."""

UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256),
    AfterValidator(_printable),
    Field(
        description=(
            "Any printable text. The worker never uses it raw in a Redis key: key names "
            "hold an encoding of it, so ':', '{' or '*' cannot reach another user's keys."
        ),
        json_schema_extra={"pattern": f"^[^{_CONTROL_CHARS}]+$"},
    ),
]


def _not_bool(value: Any) -> Any:
    # Literal[1] accepts True because True == 1 in Python; JSON Schema's const does not.
    if isinstance(value, bool):
        raise PydanticCustomError("literal_error", "Input should be 1")
    return value


SchemaVersion = Annotated[Literal[1], BeforeValidator(_not_bool)]


class _Inbound(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


# --- messages ------------------------------------------------------------------------

# Unions pick their member with a callable discriminator, so a value of the wrong type
# gets one plain error rather than one per member, and no error quotes the input (a
# field discriminator's error would repeat the unknown tag). Pydantic puts the chosen
# tag into an error's location; these tags are removed again when errors are reported.
_UNION_TAGS: Final = frozenset({"~text", "~parts", "~text_part", "~image_part", "~dict"})


class TextPart(_Inbound):
    type: Literal["text"]
    text: str


class ImageURL(_Inbound):
    url: str = Field(
        min_length=1,
        pattern=r"^(?:https://|data:image/)",
        description=(
            "An https URL or a data:image/ URL. Other schemes (http:, file:, gs:, s3:) are "
            "refused: the provider, or litellm in the worker, fetches the URL with its own "
            "network position and credentials."
        ),
    )
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Inbound):
    type: Literal["image_url"]
    image_url: ImageURL


_PART_TAGS: Final = {"text": "~text_part", "image_url": "~image_part"}


def _part_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _PART_TAGS.get(kind) if isinstance(kind, str) else None


ContentPart = Annotated[
    Annotated[TextPart, Tag("~text_part")] | Annotated[ImagePart, Tag("~image_part")],
    Discriminator(
        _part_kind,
        custom_error_type="content_part",
        custom_error_message="Input should be a text part or an image_url part",
    ),
]


def _text_or_list(value: Any) -> str | None:
    if isinstance(value, str):
        return "~text"
    return "~parts" if isinstance(value, list) else None


def _text_or_dict(value: Any) -> str | None:
    if isinstance(value, str):
        return "~text"
    return "~dict" if isinstance(value, dict) else None


Content = Annotated[
    Annotated[str, Tag("~text")] | Annotated[list[ContentPart], Tag("~parts"), Field(min_length=1)],
    Discriminator(
        _text_or_list,
        custom_error_type="content_type",
        custom_error_message="Input should be a string, a list of content parts, or null",
    ),
]


class FunctionCall(_Inbound):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(description="The arguments as JSON text, as the model produced it.")


class ToolCall(_Inbound):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Inbound):
    """One OpenAI chat message. Unknown message fields are rejected like everything else,
    so nothing reaches the provider that the contract does not name."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Content | None = Field(
        default=None,
        description="Null (or absent) only in an assistant message that has tool_calls.",
    )
    name: str | None = Field(default=None, min_length=1, max_length=256)
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1)
    tool_call_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="Required when role is tool."
    )

    @model_validator(mode="after")
    def _roles_fit(self) -> ChatMessage:
        # Errors carry the field they concern in ctx["at"] so reports can point at it.
        if self.tool_calls is not None and self.role != "assistant":
            raise PydanticCustomError(
                "role_mismatch", "only assistant messages may have tool_calls", {"at": "tool_calls"}
            )
        if self.content is None and self.tool_calls is None:
            raise PydanticCustomError(
                "content_missing",
                "content may be null only in an assistant message with tool_calls",
                {"at": "content"},
            )
        if self.role == "tool" and self.tool_call_id is None:
            raise PydanticCustomError(
                "tool_call_id_missing",
                "a tool message needs the tool_call_id it answers",
                {"at": "tool_call_id"},
            )
        return self

    def text_parts(self) -> Iterator[str]:
        """Every piece of text the provider will read, for bounding prompt tokens."""
        if self.name is not None:
            yield self.name
        if isinstance(self.content, str):
            yield self.content
        elif self.content is not None:
            for part in self.content:
                if isinstance(part, TextPart):
                    yield part.text
        for call in self.tool_calls or ():
            yield call.id
            yield call.function.name
            yield call.function.arguments
        if self.tool_call_id is not None:
            yield self.tool_call_id


# --- params --------------------------------------------------------------------------

Stop = Annotated[
    Annotated[str, Tag("~text")] | Annotated[list[str], Tag("~parts"), Field(max_length=4)],
    Discriminator(
        _text_or_list,
        custom_error_type="stop_type",
        custom_error_message="Input should be a string or a list of at most 4 strings",
    ),
]
ToolChoice = Annotated[
    Annotated[str, Tag("~text")] | Annotated[dict[str, Any], Tag("~dict")],
    Discriminator(
        _text_or_dict,
        custom_error_type="tool_choice_type",
        custom_error_message="Input should be a string or an object",
    ),
]


class JobParams(_Inbound):
    """The OpenAI parameters a job may set. It is an allow-list on purpose: litellm also
    takes ``api_base``, ``api_key``, ``mock_response`` or ``callbacks`` per call, and a job
    that could set those could redirect the call, steal the key or fake a free answer."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: Stop | None = None
    seed: int | None = None
    n: int | None = Field(
        default=None, ge=1, le=16, description="Choices to generate; each one is paid for."
    )
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = Field(default=None, max_length=256)


# --- the job -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobLimits:
    """Size limits the worker enforces beyond the contract's types; settings may change
    them, so they are passed to ``parse_job`` rather than fixed in the model."""

    max_job_bytes: int = 1_048_576
    max_messages: int = 256
    max_prompt_chars: int = 400_000

    def __post_init__(self) -> None:
        for name in ("max_job_bytes", "max_messages", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"JobLimits.{name} must be >= 1")


_DEFAULT_LIMITS: Final = JobLimits()


def _metadata_fits(value: dict[str, Any]) -> dict[str, Any]:
    if not value:
        return value
    try:
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        size = len(encoded.encode("utf-8"))
    except (TypeError, ValueError, RecursionError):  # not JSON, NaN, lone surrogate
        raise PydanticCustomError(
            "metadata_not_json", "metadata must hold JSON values only"
        ) from None
    if size > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            "{size} bytes as compact JSON; at most {limit} bytes are allowed",
            {"size": size, "limit": MAX_METADATA_BYTES},
        )
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_metadata_fits)]


def _message_texts(messages: Sequence[ChatMessage]) -> Iterator[str]:
    for message in messages:
        yield from message.text_parts()


class JobRun(_Inbound):
    """The run a job belongs to: every job naming the same run (of the same user) shares
    one cap, held out of the user's budget by the run's first job."""

    id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Names the run within its user, e.g. an agent's task id.",
    )
    cap_nanousd: int = Field(
        ge=1,
        le=10**15,
        strict=True,
        description=(
            "The most all of the run's jobs may spend together, in nano-USD. Its first job "
            "holds this much in the user's (and team's, and organisation's) budget, or is "
            "refused; later jobs' caps are ignored."
        ),
    )
    ttl_s: int = Field(
        default=3600,
        ge=1,
        le=86400,
        strict=True,
        description=(
            "How long the run stays open, from its first job; then it takes no new job "
            "and its unused hold flows back."
        ),
    )


class CompletionJob(_Inbound):
    """A chat completion to run for a user, within that user's budget."""

    schema_version: SchemaVersion
    job_id: JobId = Field(description="The idempotency key: one charge and one outcome per id.")
    user_id: UserId
    model: str = Field(
        min_length=1, max_length=256, description="A model_name from the worker's model list."
    )
    messages: list[ChatMessage] = Field(
        min_length=1,
        description=(
            "OpenAI chat messages. The worker also caps their number (256 by default) and "
            "their total characters of text (400,000 by default)."
        ),
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Output cap; absent means the default."
    )
    params: JobParams = Field(default_factory=JobParams)
    metadata: Metadata = Field(
        default_factory=dict,
        description=(
            "Echoed on every event. At most 4096 bytes as compact UTF-8 JSON; JSON Schema "
            "cannot express that limit, so only the worker enforces it."
        ),
    )
    created_at: AwareDatetime | None = None
    deadline: AwareDatetime | None = Field(
        default=None, description="A job still unstarted past this time is rejected 'expired'."
    )
    max_wait_s: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="How long the job may wait on a rate limit before it is rejected.",
    )
    on_budget_exceeded: Literal["reject", "wait"] = Field(
        default="reject",
        description=(
            "What a job the budget cannot hold now gets: reject (a completion.rejected "
            "budget_exceeded at once) or wait (parked until the budget can hold it: a "
            "period reset, a grant, reservations freed; bounded by deadline and the "
            "worker's BW_PARK_MAX_WAIT_S)."
        ),
    )
    reply_to: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="A topic for the job's event; the worker honours only allow-listed names.",
    )
    run: JobRun | None = Field(
        default=None,
        description="A run with a cap of its own that this job spends from (per-run budgets).",
    )

    @field_validator("messages", mode="before")
    @classmethod
    def _few_enough(cls, value: Any, info: ValidationInfo) -> Any:
        # Checked before the items are validated, so a flood of messages costs nothing.
        limit = _limits(info).max_messages
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError(
                "too_many_messages",
                "at most {limit} messages are allowed, got {count}",
                {"limit": limit, "count": len(value)},
            )
        return value

    @field_validator("messages")
    @classmethod
    def _short_enough(cls, value: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        limit = _limits(info).max_prompt_chars
        chars = sum(len(text) for text in _message_texts(value))
        if chars > limit:
            raise PydanticCustomError(
                "prompt_too_long",
                "the messages hold {chars} characters of text; at most {limit} are allowed",
                {"chars": chars, "limit": limit},
            )
        return value

    def text_parts(self) -> Iterator[str]:
        """Every piece of text the provider will count as prompt: the messages' text,
        names and tool calls, then the tool definitions and response format as JSON.
        Images are not text; an estimate must bound them separately."""
        yield from _message_texts(self.messages)
        for extra in (self.params.tools, self.params.response_format):
            if extra:
                yield json.dumps(extra, ensure_ascii=False, separators=(",", ":"))


def _limits(info: ValidationInfo) -> JobLimits:
    return info.context if isinstance(info.context, JobLimits) else _DEFAULT_LIMITS


# --- parsing -------------------------------------------------------------------------


class JobError(ValueError):
    """A job that cannot be run as sent. The message never holds the job's text."""


class UndecodableJob(JobError):
    """No event can be addressed: too big, not UTF-8 JSON, not an object, or without a
    valid job_id and user_id. The worker sends the original bytes to the DLQ."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule: ``loc`` is the dot-joined field path (``messages.0.content``)."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


_MAX_ERRORS_SHOWN: Final = 10


class InvalidJob(JobError):
    """The job is addressable but breaks the contract; the worker answers it with
    ``completion.rejected`` (``invalid_job``). ``model`` and ``metadata`` are the job's
    own when usable (``model`` cut to 256 characters), else ``""`` and ``{}``."""

    def __init__(
        self,
        *,
        job_id: str,
        user_id: str,
        model: str,
        metadata: dict[str, Any],
        errors: Sequence[FieldError],
    ) -> None:
        shown = "; ".join(str(error) for error in errors[:_MAX_ERRORS_SHOWN])
        hidden = len(errors) - _MAX_ERRORS_SHOWN
        super().__init__(f"{shown}; and {hidden} more" if hidden > 0 else shown)
        self.job_id = job_id
        self.user_id = user_id
        self.model = model
        self.metadata = metadata
        self.errors = tuple(errors)


def parse_job(raw: bytes, limits: JobLimits = _DEFAULT_LIMITS) -> CompletionJob:
    """Decode and validate one job from the wire; raise ``UndecodableJob`` or
    ``InvalidJob`` (both ``JobError``) when it cannot be run."""
    if len(raw) > limits.max_job_bytes:
        raise UndecodableJob(
            f"the job is {len(raw)} bytes; at most {limits.max_job_bytes} are allowed"
        )
    try:
        return CompletionJob.model_validate_json(raw, context=limits)
    except ValidationError as exc:
        error = _explain(raw, exc)
    # Raised outside the handler so the ValidationError, whose text quotes the input,
    # is not chained onto it and printed with a traceback.
    raise error


_JOB_ID: Final[TypeAdapter[str]] = TypeAdapter(JobId, config=ConfigDict(strict=True))
_USER_ID: Final[TypeAdapter[str]] = TypeAdapter(UserId, config=ConfigDict(strict=True))
_METADATA: Final[TypeAdapter[dict[str, Any]]] = TypeAdapter(
    Metadata, config=ConfigDict(strict=True, allow_inf_nan=False)
)
_JSON_TYPE_NAMES: Final = {list: "an array", str: "a string", bool: "a boolean", int: "a number"}


def _explain(raw: bytes, exc: ValidationError) -> JobError:
    """The slow path, taken only for bad jobs: work out which kind of bad."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as decode_error:
        return UndecodableJob(f"the job is not valid UTF-8 (at byte {decode_error.start})")
    try:
        data = pydantic_core.from_json(raw)
    except ValueError as json_error:
        return UndecodableJob(f"the job is not JSON: {json_error}")
    if not isinstance(data, dict):
        kind = _JSON_TYPE_NAMES.get(type(data), "a number" if isinstance(data, float) else "null")
        return UndecodableJob(f"the job is {kind}, not a JSON object")
    job_id = _addressing_field(data, "job_id", _JOB_ID)
    user_id = _addressing_field(data, "user_id", _USER_ID)
    if isinstance(job_id, UndecodableJob):
        return job_id
    if isinstance(user_id, UndecodableJob):
        return user_id
    model = data.get("model")
    return InvalidJob(
        job_id=job_id,
        user_id=user_id,
        model=model[:256] if isinstance(model, str) else "",
        metadata=_usable_metadata(data.get("metadata")),
        errors=[
            _field_error(error) for error in exc.errors(include_url=False, include_input=False)
        ],
    )


def _addressing_field(
    data: dict[str, Any], name: str, adapter: TypeAdapter[str]
) -> str | UndecodableJob:
    if name not in data:
        return UndecodableJob(f"{name}: Field required")
    try:
        return adapter.validate_python(data[name])
    except ValidationError as exc:
        return UndecodableJob(f"{name}: {exc.errors(include_input=False)[0]['msg']}")


def _usable_metadata(value: Any) -> dict[str, Any]:
    try:
        return _METADATA.validate_python(value)
    except ValidationError:
        return {}


def _field_error(error: pydantic_core.ErrorDetails) -> FieldError:
    loc = [part for part in error["loc"] if part not in _UNION_TAGS]
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("at"), str):
        loc.append(ctx["at"])
    if error["type"] == "extra_forbidden":
        allowed = len(loc) == 2 and loc[0] == "params"
        message = "not an allowed parameter" if allowed else "not a field of this object"
    else:
        message = error["msg"]
    return FieldError(".".join(_loc_part(part) for part in loc), message)


def _loc_part(part: str | int) -> str:
    # Unknown keys are chosen by the sender: keep them short and on one line.
    text = str(part)
    if len(text) > 64:
        text = text[:61] + "..."
    return text if text.isprintable() else repr(text)[1:-1]
