"""The wire contract of budget-worker (v1), for the worker and for producing services.

This package depends on pydantic and the standard library only, so a service that
sends jobs or reads events can install it without the worker's dependencies.
``schemas/json/`` holds the same contract as JSON Schema for other languages.
"""

from schemas.budget_events import (
    BUDGET_EVENT_ADAPTER,
    BudgetThresholdCrossed,
    encode_budget_event,
    parse_budget_event,
)
from schemas.events import (
    EVENT_ADAPTER,
    BudgetSnapshot,
    CompletionFailed,
    CompletionRejected,
    CompletionSucceeded,
    EventBase,
    RejectReason,
    TerminalEvent,
    UnknownEventType,
    Usage,
    encode_event,
    parse_event,
)
from schemas.jobs import (
    ChatMessage,
    CompletionJob,
    FieldError,
    FunctionCall,
    ImagePart,
    ImageURL,
    InvalidJob,
    JobError,
    JobId,
    JobLimits,
    JobParams,
    JobRun,
    TextPart,
    ToolCall,
    UndecodableJob,
    UserId,
    parse_job,
)
from schemas.money import MAX_NANOUSD, NANOUSD_PER_USD, NanoUSD, nanousd_to_usd, usd_to_nanousd

__all__ = [
    "BUDGET_EVENT_ADAPTER",
    "EVENT_ADAPTER",
    "MAX_NANOUSD",
    "NANOUSD_PER_USD",
    "BudgetSnapshot",
    "BudgetThresholdCrossed",
    "ChatMessage",
    "CompletionFailed",
    "CompletionJob",
    "CompletionRejected",
    "CompletionSucceeded",
    "EventBase",
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
    "NanoUSD",
    "RejectReason",
    "TerminalEvent",
    "TextPart",
    "ToolCall",
    "UndecodableJob",
    "UnknownEventType",
    "Usage",
    "UserId",
    "encode_budget_event",
    "encode_event",
    "nanousd_to_usd",
    "parse_budget_event",
    "parse_event",
    "parse_job",
    "usd_to_nanousd",
]
