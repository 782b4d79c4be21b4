"""LiteLLM's ``BudgetManager`` API over the Redis ledger.

Code written for ``litellm.BudgetManager`` runs with its import line changed::

    from worker.compat import BudgetManager, completion   # was: from litellm import ...

and its budgets then live in the ledger: durable, shared by every process that points
at the same Redis, rolled over by the ledger itself, and the same budgets the worker
enforces on jobs. Amounts are floats of USD at this API, as in ``BudgetManager``;
inside they are integers of nano-USD. What differs from LiteLLM, and why, is in
``docs/contract.md`` ("The BudgetManager-compatible API") and ``docs/migration.md``.

**The safe path.** ``BudgetManager``'s own pattern (check ``get_current_cost`` against
the budget, call the model, then ``update_cost``) overspends, by up to the cost of every
call that passed the check at the same time. The safe path estimates an upper bound,
reserves it atomically, calls, and settles the actual cost (or releases on error), so a
budget is never spent past, however many processes share it (as far as the estimate
bounds the call: ``docs/estimation.md``). It is reached two ways:

- ``budget_manager.completion(user, model, messages, ...)`` (``acompletion`` on
  ``AsyncBudgetManager``);
- the module's :func:`completion` (and :func:`acompletion`), stand-ins for litellm's,
  so the notebook pattern needs only its import changed: they charge the user whose
  budget the calling thread (or task) last checked with ``get_current_cost``,
  ``get_total_budget`` or ``projected_cost``, and the ``update_cost`` that follows
  records nothing more, since the call is already charged.

Both raise :class:`BudgetExceeded` when the reservation is refused. Their admission
policy is ``clamp`` unless ``BW_ADMISSION_POLICY`` says otherwise: a call without
``max_tokens`` gets what the budget has left instead of being refused for the 1,024
tokens of the default bound.

``AsyncBudgetManager`` is the API as coroutines; ``BudgetManager`` wraps it for
synchronous code (and notebooks, whose event loop is already running) by running the
coroutines on an event loop of its own, in a background thread, and adds
``user_dict``, a read-only view of the ledger.

The package's modules, one job each: ``manager`` (:class:`AsyncBudgetManager`),
``wrapper`` (:class:`BudgetManager` and :func:`completion`), ``records`` (``user_dict``
and its read-only records), ``usage`` (what a charge is priced from, a completion or
text), ``safe_path`` (a call reserved, made and settled), ``checked`` (the user a thread
last checked) and ``errors``.
"""

from worker import startup

# The one import with an effect, on purpose (worker.startup says why): litellm, imported
# below, reads at its own import where its cost map comes from.
startup.keep_offline()

# isort: split

from worker.compat.errors import BudgetExceeded, UnknownUser
from worker.compat.manager import AsyncBudgetManager, acompletion
from worker.compat.records import BudgetRecord, Duration, UserDict
from worker.compat.safe_path import ChargedCompletion
from worker.compat.wrapper import BudgetManager, completion

__all__ = [
    "AsyncBudgetManager",
    "BudgetExceeded",
    "BudgetManager",
    "BudgetRecord",
    "ChargedCompletion",
    "Duration",
    "UnknownUser",
    "UserDict",
    "acompletion",
    "completion",
]
