"""The worker's exception tree. Expected outcomes (a refused reservation, a rejected
job) are return values; exceptions are for broken things.

    BudgetWorkerError            base; ``retryable`` says whether trying again may help
    +-- ConfigError              bad settings or model list (not retryable: fix and restart)
    +-- KafkaUnavailable         the broker could not be reached (retryable)
        +-- SubmitFailed         (worker.client) a job was not acknowledged
    +-- LedgerUnavailable        Redis unreachable or timed out (retryable)
    +-- LedgerError              a script answered something impossible (not retryable)
    +-- LedgerRefusal            the ledger refused an administrative step as things stand
        |                        (also a ``ValueError``, as these refusals were before)
        +-- UnknownScope         the step names a scope the ledger does not know
        |   +-- NoBudgetRecord   ... or one without a budget record (credits need one)
        +-- ScopeConflict        the step contradicts what is stored (a team's org)
        +-- LimitReached         a scope holds as many of something as it may (grants)
    +-- LeaseLost                a reservation's lease was lost or could not be renewed in
                                 time: its call is stopped (retryable: admit again)
    +-- ProviderError            a model call failed; ``error_type``, ``status_code`` and
        |                        ``attempts`` (calls made) are fields, for events and metrics
        +-- RetryableProviderError   429, 5xx, timeouts, connection errors
        +-- PermanentProviderError   400, auth, context length, unknown model at provider

Foreign exceptions (redis, litellm, aiokafka) are translated once, at the boundary
module that imports that library, into the most specific class here (litellm's by the
table in ``worker.provider``). What callers need to know is a field of that class, never
an attribute added to a foreign exception.
"""

from __future__ import annotations


class BudgetWorkerError(Exception):
    """Base of every error the worker raises on purpose."""

    retryable: bool = False


class ConfigError(BudgetWorkerError):
    """The settings or the model list are wrong; the message says which and how."""


class KafkaUnavailable(BudgetWorkerError):
    """The Kafka broker could not be reached or did not answer; the message names the
    bootstrap servers and protocol, so a wrong address reads as one."""

    retryable = True


class LedgerUnavailable(BudgetWorkerError):
    """Redis could not be reached in time; no money moved (fail closed)."""

    retryable = True


class LedgerError(BudgetWorkerError):
    """The ledger answered something the protocol does not allow."""


class LedgerRefusal(BudgetWorkerError, ValueError):
    """The ledger refused an administrative step as things stand; nothing changed.
    ``kind`` and ``name`` are the scope the refusal is about (``team``, ``eng``), so a
    caller can say which of its inputs was at fault. A ``ValueError`` too: callers that
    caught the plain refusals of earlier versions still catch these."""

    def __init__(self, message: str, *, kind: str, name: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


class UnknownScope(LedgerRefusal):
    """The step names a scope the ledger does not know (a team never created)."""


class NoBudgetRecord(UnknownScope):
    """The scope has no budget record, which credits are kept in: set its budget first."""


class ScopeConflict(LedgerRefusal):
    """The step contradicts what is stored: a team created again in another
    organisation (a team's organisation is fixed)."""


class LimitReached(LedgerRefusal):
    """A scope already holds as many of something as it may (active grants)."""


class LeaseLost(BudgetWorkerError):
    """A reservation's lease ended under its holder: the ledger reclaimed it (``lost``)
    or the holder could not renew it in time (``expired``). No call may run outside a
    live reservation, so the holder stops its call and starts no new attempt."""

    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(f"the reservation's lease was {reason}")
        self.reason = reason


class ProviderError(BudgetWorkerError):
    """A model call failed. ``error_type`` is a stable short name for events and metrics;
    ``status_code`` the provider's HTTP status when one arrived; ``attempts`` how many
    calls were made before giving up (the failed event reports it). The message never
    holds prompt text or secrets."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status_code: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status_code = status_code
        self.attempts = attempts


class RetryableProviderError(ProviderError):
    """Trying again later may succeed (429, 5xx, timeout, connection reset)."""

    retryable = True


class PermanentProviderError(ProviderError):
    """Trying again cannot succeed (bad request, auth, context window)."""
