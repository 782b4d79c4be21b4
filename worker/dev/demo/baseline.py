"""BudgetManager's check-then-spend bookkeeping, in memory, with litellm's float
arithmetic: the half of the demo that shows what budget-worker prevents."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class CheckThenSpend:
    """LiteLLM ``BudgetManager``'s bookkeeping, in memory: the same ``user_dict`` and the
    same float arithmetic as ``litellm/budget_manager.py`` (``client_type="local"``
    without its JSON file). The loop around it is BudgetManager's documented one::

        if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
            response = await litellm.acompletion(...)
            budget_manager.update_cost(completion_obj=response, user=user)
        else:
            response = "Sorry - no budget!"

    ``update_cost`` takes the cost that ``litellm.completion_cost`` computes from the
    response (:func:`litellm_float_cost`), since the check and the charge are what matter.
    """

    def __init__(self) -> None:
        self.user_dict: dict[str, dict[str, Any]] = {}

    def create_budget(self, total_budget: float, user: str, created_at: float) -> dict[str, Any]:
        """``create_budget(total_budget, user, duration="daily")``."""
        self.user_dict[user] = {
            "total_budget": total_budget,
            "duration": 1,
            "created_at": created_at,
            "last_updated_at": created_at,
        }
        return self.user_dict[user]

    def get_total_budget(self, user: str) -> float:
        total: float = self.user_dict[user]["total_budget"]
        return total

    def get_current_cost(self, user: str) -> float:
        current: float = self.user_dict[user].get("current_cost", 0)
        return current

    def update_cost(self, user: str, cost: float, model: str) -> dict[str, Any]:
        self.user_dict[user]["current_cost"] = cost + self.user_dict[user].get("current_cost", 0)
        if "model_cost" in self.user_dict[user]:
            model_cost = self.user_dict[user]["model_cost"]
            model_cost[model] = cost + model_cost.get(model, 0)
        else:
            self.user_dict[user]["model_cost"] = {model: cost}
        return {"user": self.user_dict[user]}


def litellm_float_cost(
    input_usd_per_token: Decimal,
    output_usd_per_token: Decimal,
    prompt_tokens: int,
    completion_tokens: int,
) -> float:
    """A call's cost as ``litellm.completion_cost`` computes it: float price per token
    times tokens, prompt plus completion."""
    prompt_cost = float(prompt_tokens) * float(input_usd_per_token)
    completion_cost = float(completion_tokens) * float(output_usd_per_token)
    return prompt_cost + completion_cost
