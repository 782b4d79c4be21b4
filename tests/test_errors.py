"""The error tree: each class says whether it is retryable, carries its facts as fields,
and is drawn in the module's docstring."""

from __future__ import annotations

import inspect

import pytest

from worker import errors
from worker.errors import (
    BudgetWorkerError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)

CLASSES = [
    value
    for value in vars(errors).values()
    if inspect.isclass(value) and issubclass(value, BudgetWorkerError)
]


@pytest.mark.parametrize("cls", CLASSES, ids=[cls.__name__ for cls in CLASSES])
def test_every_error_class_is_drawn_in_the_tree(cls: type[BudgetWorkerError]) -> None:
    assert errors.__doc__ is not None
    assert f"+-- {cls.__name__} " in errors.__doc__ or cls is BudgetWorkerError


def test_provider_errors_carry_type_status_and_attempts_as_fields() -> None:
    error = RetryableProviderError("rate_limited", "RateLimitError", status_code=429, attempts=3)

    assert (error.error_type, error.status_code, error.attempts) == ("rate_limited", 429, 3)
    assert error.retryable
    assert str(error) == "RateLimitError"


def test_a_provider_error_made_without_attempts_counts_one_call() -> None:
    error = PermanentProviderError("bad_request", "BadRequestError (status 400)")

    assert error.attempts == 1
    assert error.status_code is None
    assert not error.retryable
    assert isinstance(error, ProviderError)
