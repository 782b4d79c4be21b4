"""litellm's pricing, read once per model at start-up into ``worker.prices``, and litellm's
usage, read per call into ``TokenUsage``.

This module and ``worker.provider`` are the only ones that import litellm. Everything here
stays offline: prices come from litellm's bundled cost map (``worker.startup`` sees to
that before litellm's first import), and providers whose price litellm asks a running
server for (Ollama, Lemonade) are refused rather than asked.

**Which price.** A model-list entry is priced from the cost map's entry of
``model_info.base_model`` when it is set (LiteLLM's way of pricing an Azure deployment
with a name of its own), else of ``litellm_params.model``: ``provider/name`` as given,
then ``name`` when that entry belongs to the same provider, so an OpenAI-compatible server
under another prefix is never priced as OpenAI's model of the same name. ``model_info``
may set any of the cost map's price keys over that entry (``input_cost_per_token``,
``cache_read_input_token_cost``, ``output_cost_per_reasoning_token``,
``input_cost_per_token_above_200k_tokens``, ``tiered_pricing``, ...), or ``null`` to
drop one; litellm then prices the call from that merged entry (its per-deployment custom
pricing), and so does the worker.

**How it is priced.** litellm's chat pricing is ``generic_cost_per_token`` plus, per
provider, a few rules of its own; ``rates`` restates them in ``Decimal`` for one prompt
size, and the price is those rates on every stretch of prompt sizes between the entry's
thresholds. Each price is then checked against ``litellm.cost_per_token`` on a handful
of usages (plain, cached, cache writes by lifetime, reasoning, audio, a mix, each side of
every threshold); a model the worker cannot price exactly is refused with a
``ConfigError`` that says why and what to set, never priced approximately.

The modules, in that order: ``entry`` (which cost-map entry, merged with
``model_info``), ``refusal`` (what cannot be priced by tokens), ``rates`` (the
``Decimal`` rates and the ``ModelPrice``), ``verification`` (the check against litellm)
and ``usage`` (litellm's usage read into ``TokenUsage`` and back).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from worker import startup

# A check, not a setting: litellm reads its cost map when imported, and must read its own.
startup.require_local_cost_map()

# isort: split

from worker.errors import ConfigError
from worker.pricebook.entry import Pricing, pricing_of
from worker.pricebook.rates import rated_price
from worker.pricebook.refusal import refusal_of
from worker.pricebook.usage import litellm_usage, usage_of
from worker.pricebook.verification import verify
from worker.prices import ModelPrice

__all__ = ["cost_map_price", "litellm_usage", "price_of", "usage_of"]


def price_of(litellm_params: Mapping[str, Any], model_info: Mapping[str, Any]) -> ModelPrice:
    """The price of a model-list entry, checked against litellm's own cost function.

    Raises ``ConfigError`` naming the model and what to set when the cost map has no price
    for it and ``model_info`` gives none, when it is priced in a way the worker does not
    model, or when the worker's price and litellm's disagree on any checked usage.
    """
    pricing = pricing_of(litellm_params, model_info)
    if pricing is None:
        model = litellm_params.get("model")
        raise ConfigError(
            f"litellm's cost map has no price for {model!r}; add model_info."
            "input_cost_per_token and model_info.output_cost_per_token (USD per token, "
            "e.g. 0.00000015) to this entry, or model_info.base_model naming the model "
            "it is priced as (e.g. azure/gpt-4o)"
        )
    return _checked_price(pricing)


@functools.lru_cache(maxsize=1024)
def cost_map_price(litellm_model: str) -> ModelPrice | None:
    """The price of ``litellm_model`` from litellm's bundled cost map, or None when the map
    has no entry for it (see the module docstring for the lookup). Raises ``ConfigError``
    when it has one that the worker cannot price exactly. Remembered per model: the map
    does not change while the process runs, and callers outside a model list (``compat``)
    ask once per call."""
    try:
        pricing = pricing_of({"model": litellm_model}, {})
    except ConfigError:  # litellm knows no provider of that name: no entry either
        return None
    return None if pricing is None else _checked_price(pricing)


def _checked_price(pricing: Pricing) -> ModelPrice:
    refusal = refusal_of(pricing)
    if refusal is not None:
        raise ConfigError(f"model {pricing.litellm_model!r}: {refusal}")
    price = rated_price(pricing)
    verify(pricing, price)
    return price
