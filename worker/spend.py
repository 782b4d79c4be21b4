"""The one spend path: admit -> call under a live lease -> settle or release.

The worker's job path and the BudgetManager-compatible safe path (``worker.compat``)
spend money only through :meth:`SpendPath.run`, so every money rule holds for both:

- **No call outside a live reservation.** The estimate (an upper bound) is reserved
  atomically first; the call runs inside its lease's fence (``worker.leases``) and is
  stopped, never retried, when the lease is lost or cannot be renewed in time. While
  Redis is unreachable nothing is reserved and nothing is called (``worker.gate``).
- **Every call that answered is charged, once**: at the cost of the usage the
  provider reported, or at its reservation when the response reported none. The
  settle is shielded from cancellation: once the model answered, the charge lands.
- **A call that failed is released**, with the job's failure as its outcome.
- **A call cut off mid-flight** (lease lost, shutdown) is released, charged nothing,
  and counted (``bw_model_calls_cut_off``): the provider may still bill it, by at most
  its reservation. The job is admitted again (a fresh lease) up to
  ``MAX_LEASE_LOSSES`` times.
- **Another delivery of the same job** (a rebalance handed it over while its old
  owner still runs it) is waited for, never run twice at once: its outcome answers.

One module of about 420 lines on purpose: these rules are one sequence over one
reservation, and apart the lease, fence and shielded-settle decisions would no longer
be read beside the steps they guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from worker import admission, ledger, tracing
from worker.errors import LeaseLost, ProviderError
from worker.estimate import Estimate
from worker.gate import LedgerGate
from worker.leases import Lease, LeaseKeeper
from worker.metrics import Metrics
from worker.models import ModelEntry
from worker.provider import Completion
from worker.settings import AdmissionPolicy

log = logging.getLogger("budget_worker.spend")
T = TypeVar("T")

MAX_LEASE_LOSSES = 2
HOLDER_POLL_S = 0.5
"""How often a delivery waiting for another delivery of its job asks the ledger."""

IdleHook = Callable[[], contextlib.AbstractAsyncContextManager[None]]
"""What the caller does while a job waits holding nothing (the consumer lends its
in-flight slot back)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One model call to pay for."""

    user_id: str
    job_id: str
    entry: ModelEntry
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    estimate: Estimate
    max_wait_s: float = 0.0
    """How long a rate-limited request may wait for its allowance."""
    run: ledger.RunRequest | None = None
    """The run whose cap the call spends from, if any."""


@dataclass(frozen=True, slots=True)
class Charge:
    """What a call that answered is charged."""

    cost_nanousd: int
    prompt_tokens: int
    completion_tokens: int
    basis: Literal["usage", "reservation"]


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a call produced no answer."""

    error_type: str
    message: str
    retryable: bool
    attempts: int


class ModelCaller(Protocol):
    """What the spend path needs of a provider (``worker.provider.Provider``; tests use
    ``worker.dev.doubles.ScriptedProvider``)."""

    async def complete(
        self,
        entry: ModelEntry,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        max_tokens: int,
        *,
        before_retry: Callable[[int, float], Awaitable[None]] | None = None,
    ) -> Completion: ...


class Outcomes(Protocol):
    """The outcomes the spend path stores for the job, in the same step that moves the
    money (the first outcome stored is the job's answer)."""

    def succeeded(self, completion: Completion, charge: Charge) -> bytes: ...

    def failed(self, failure: Failure) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Charged:
    """The call answered and is charged. ``settled.first`` is False when this holder's
    charge had already landed (a retried settle): then its outcome is the stored one."""

    completion: Completion
    charge: Charge
    settled: ledger.Settled
    estimate: Estimate
    model_ms: float


@dataclass(frozen=True, slots=True)
class Ended:
    """The job had already ended: republish its stored outcome (None once expired)."""

    outcome: bytes | None
    snapshot: ledger.PeriodSnapshot | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """No reservation: nothing was spent and no call made."""

    reason: Literal["budget_exceeded", "rate_limited", "no_budget"]
    estimate: Estimate
    refused: ledger.Refused | None
    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call failed (or kept losing its lease); released with ``outcome``."""

    failure: Failure
    outcome: bytes
    model_ms: float = 0.0
    error: ProviderError | None = None
    """The provider's error, when one ended the call."""


SpendResult = Charged | Ended | Refusal | CallFailed


@dataclass(frozen=True, slots=True)
class _Admitted:
    reservation: ledger.Reserved
    estimate: Estimate
    lease: Lease
    holder: str


class SpendPath:
    """Admission, the fenced call and its settlement, shared by every caller."""

    def __init__(
        self,
        ledger_: ledger.Ledger,
        provider: ModelCaller,
        leases: LeaseKeeper,
        gate: LedgerGate,
        metrics: Metrics,
        *,
        holder_prefix: str,
        admission_policy: AdmissionPolicy = "reject",
        clamp_min_tokens: int = 16,
        on_thresholds: Callable[[str], None] | None = None,
    ) -> None:
        self.ledger = ledger_
        self.provider = provider
        self.leases = leases
        self.gate = gate
        self.metrics = metrics
        self.holder_prefix = holder_prefix
        self.admission_policy = admission_policy
        self.clamp_min_tokens = clamp_min_tokens
        self.on_thresholds = on_thresholds
        """Called with the user id after a settle that crossed spend thresholds (their
        events wait in the ledger's outbox: see ``worker.relay``)."""

    async def run(
        self, request: Request, outcomes: Outcomes, *, idle: IdleHook | None = None
    ) -> SpendResult:
        """Reserve, call, settle or release; one of the four results. Raises only
        CancelledError (after giving back what it held) and defects."""
        for _ in range(MAX_LEASE_LOSSES + 1):
            holder = f"{self.holder_prefix}:{uuid.uuid4().hex[:12]}"
            admitted = await self._admit(request, holder, idle)
            if not isinstance(admitted, _Admitted):
                return admitted
            try:
                return await self._call_and_settle(request, admitted, outcomes)
            except LeaseLost as exc:
                self.metrics.cut_off.labels(f"lease_{exc.reason}").inc()
                log.warning(
                    "model call stopped: lease %s", exc.reason, extra={"job_id": request.job_id}
                )
                await _shielded(self._release(request, holder))
            except BaseException:
                # Cancelled (a shutdown past its grace) or broken: give the money back
                # now rather than at lease expiry (a settled job stays settled); the job
                # is redelivered.
                await quietly(self.ledger.release(request.user_id, request.job_id, holder=holder))
                raise
            finally:
                self.leases.drop(admitted.lease)
        failure = Failure(
            "lease_lost",
            f"the job's reservation was lost {MAX_LEASE_LOSSES + 1} times while its model "
            "was called (the ledger was unreachable for longer than the lease)",
            retryable=True,
            attempts=0,
        )
        outcome = outcomes.failed(failure)
        await self.gate.call(
            lambda: self.ledger.finish(request.user_id, request.job_id, outcome=outcome)
        )
        return CallFailed(failure, outcome)

    # --- admission ------------------------------------------------------------------

    async def _admit(
        self, request: Request, holder: str, idle: IdleHook | None
    ) -> _Admitted | Ended | Refusal:
        """Reserve the estimate, waiting out rate limits and other deliveries; or refuse."""
        loop = asyncio.get_running_loop()
        wait_until = loop.time() + request.max_wait_s
        current = request.estimate
        while True:
            result, sent_at = await self._reserve(request, current, holder)
            if isinstance(result, ledger.Reserved):
                if not result.existing or result.holder == holder:
                    ref = ledger.LeaseRef(request.user_id, request.job_id, holder)
                    return _Admitted(result, current, self.leases.hold(ref, sent_at), holder)
                await self.pause(HOLDER_POLL_S, idle)  # another delivery runs this job
                continue
            if isinstance(result, ledger.Finished):
                return Ended(result.outcome, result.snapshot)
            if isinstance(result, ledger.NoBudget):
                return Refusal("no_budget", current, None, None)
            if result.limit == "usd":
                clamped = (
                    None
                    if _carving(request, result)
                    else self._clamp(current, result, request.entry)
                )
                if clamped is not None and clamped != current:
                    current = clamped
                    continue
                retry_s = None if result.retry_after_ms is None else result.retry_after_ms / 1000
                return Refusal("budget_exceeded", current, result, retry_s)
            delay_s = (result.retry_after_ms or 1000) / 1000
            if loop.time() + delay_s > wait_until:
                return Refusal("rate_limited", current, result, delay_s)
            self.metrics.waiting.inc()
            try:
                await self.pause(delay_s, idle)
            finally:
                self.metrics.waiting.dec()

    async def _reserve(
        self, request: Request, wanted: Estimate, holder: str
    ) -> tuple[ledger.ReserveResult, float]:
        """The reserve's answer and the loop time its lease surely started after: the
        send of the attempt that answered, or, when the answer is this holder's own
        earlier reservation (a reply lost to an outage), the first attempt's send."""
        loop = asyncio.get_running_loop()
        first_sent = sent = loop.time()

        async def reserve() -> ledger.ReserveResult:
            nonlocal sent
            sent = loop.time()
            return await self.ledger.reserve(
                request.user_id,
                request.job_id,
                cost_nanousd=wanted.cost_nanousd,
                tokens=wanted.tokens,
                lease_ms=self.leases.lease_ms,
                holder=holder,
                model=request.entry.name,
                run=request.run,
            )

        started = time.perf_counter()
        with tracing.span("bw.reserve", cost_nanousd=wanted.cost_nanousd):
            result = await self.gate.call(reserve)
        self.metrics.reserve_seconds.observe(time.perf_counter() - started)
        if isinstance(result, ledger.Reserved) and result.existing:
            sent = first_sent
        return result, sent

    def _clamp(
        self, current: Estimate, refused: ledger.Refused, entry: ModelEntry
    ) -> Estimate | None:
        if self.admission_policy != "clamp" or refused.remaining <= 0:
            return None
        return admission.admit(
            current, refused.remaining, entry.price, self.admission_policy, self.clamp_min_tokens
        )

    # --- the call -------------------------------------------------------------------

    async def _call_and_settle(
        self, request: Request, admitted: _Admitted, outcomes: Outcomes
    ) -> Charged | CallFailed:
        entry, holder = request.entry, admitted.holder
        started = time.perf_counter()
        try:
            with tracing.span("bw.model_call", model=entry.name):
                async with admitted.lease.fenced():
                    completion = await self.provider.complete(
                        entry,
                        request.messages,
                        request.params,
                        admitted.estimate.max_output_tokens,
                        before_retry=self._count_retry(entry),
                    )
        except ProviderError as exc:
            model_ms = self._call_ended(entry, started)
            failure = Failure(exc.error_type, str(exc), exc.retryable, exc.attempts)
            outcome = outcomes.failed(failure)
            await _shielded(self._release(request, holder, outcome))
            return CallFailed(failure, outcome, model_ms, exc)
        except BaseException as exc:
            self._call_ended(entry, started)
            if isinstance(exc, asyncio.CancelledError):
                self.metrics.cut_off.labels("cancelled").inc()
            raise
        model_ms = self._call_ended(entry, started)
        charge = self._charge(completion, admitted.estimate, entry)
        outcome = outcomes.succeeded(completion, charge)
        settled = await _shielded(self._settle(request, holder, charge, outcome))
        if settled.thresholds_crossed and self.on_thresholds is not None:
            self.on_thresholds(request.user_id)
        if settled.first:
            self.metrics.charged(entry.name, settled.charged_nanousd)
        return Charged(completion, charge, settled, admitted.estimate, model_ms)

    def _call_ended(self, entry: ModelEntry, started: float) -> float:
        """Record the model call's time (retries included); its milliseconds."""
        elapsed_s = time.perf_counter() - started
        self.metrics.model_seconds.labels(entry.name).observe(elapsed_s)
        return round(elapsed_s * 1000, 1)

    def _charge(self, completion: Completion, estimate: Estimate, entry: ModelEntry) -> Charge:
        """The provider's reported usage at the model's price; with no usage reported, the
        cost is unknown and the reservation (an upper bound of it) is charged."""
        usage = completion.usage
        if usage is None:
            completion_tokens = estimate.max_output_tokens * estimate.n
            return Charge(
                estimate.cost_nanousd,
                estimate.prompt_tokens_bound,
                completion_tokens,
                "reservation",
            )
        cost = entry.price.cost_nanousd(usage)
        return Charge(cost, usage.prompt_tokens, usage.completion_tokens, "usage")

    def _count_retry(self, entry: ModelEntry) -> Callable[[int, float], Awaitable[None]]:
        async def count(attempt: int, delay_s: float) -> None:
            self.metrics.model_retries.labels(entry.name).inc()

        return count

    # --- ledger steps -----------------------------------------------------------------

    async def _settle(
        self, request: Request, holder: str, charge: Charge, outcome: bytes
    ) -> ledger.Settled:
        started = time.perf_counter()
        with tracing.span("bw.settle", cost_nanousd=charge.cost_nanousd):
            settled = await self.gate.call(
                lambda: self.ledger.settle(
                    request.user_id,
                    request.job_id,
                    holder=holder,
                    cost_nanousd=charge.cost_nanousd,
                    tokens=charge.prompt_tokens + charge.completion_tokens,
                    model=request.entry.name,
                    outcome=outcome,
                )
            )
        self.metrics.settle_seconds.observe(time.perf_counter() - started)
        return settled

    async def _release(self, request: Request, holder: str, outcome: bytes | None = None) -> None:
        await self.gate.call(
            lambda: self.ledger.release(
                request.user_id, request.job_id, holder=holder, outcome=outcome
            )
        )

    async def pause(self, delay_s: float, idle: IdleHook | None) -> None:
        """Sleep, holding nothing (``idle`` lends the caller's in-flight slot back)."""
        if idle is None:
            await asyncio.sleep(delay_s)
            return
        async with idle():
            await asyncio.sleep(delay_s)


async def quietly(awaitable: Awaitable[object]) -> None:
    """Best-effort clean-up that never hides the error being handled (and never blocks
    a cancellation for long): the lease expires anyway if it does not land."""
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(awaitable)), 2.0)
    except Exception as exc:
        log.warning("clean-up failed", extra={"error": type(exc).__name__})


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Finish ``awaitable`` even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _carving(request: Request, refused: ledger.Refused) -> bool:
    """Whether a USD refusal is of a run's cap, not of this call: a scope above the run
    could not hold the cap (a smaller call would not fit either)."""
    return request.run is not None and not refused.scope.startswith("run:")
