"""E-mail a budget's owner when its spend reaches 80%: a consumer of budget-worker's
``budget.threshold_crossed`` events.

    pip install aiokafka 'budget-worker @ git+https://<git-host>/<owner>/budget-worker.git@<tag>'
    BW_KAFKA_BOOTSTRAP=localhost:9092 python docs/examples/threshold_mailer.py

Events are delivered at least once, so the mailer de-duplicates on ``event_id`` (every
copy of one crossing has the same) before it sends. Here the ids seen are kept in
memory: a real service keeps them where it records that the mail went out (a unique
key in its database), so a restart does not mail twice. It reads in its own consumer
group and commits after handling, so a crash re-reads, and the id check drops what was
already mailed.
"""

from __future__ import annotations

import asyncio
import os

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from schemas import BudgetThresholdCrossed, parse_budget_event

NOTIFY_AT_PCT = 80
OWNERS = {"team:eng": "eng-leads@example.com", "user:alice": "alice@example.com"}


def send_mail(to: str, subject: str, body: str) -> None:
    """A stand-in for the mail service: it prints instead of sending."""
    print(f"to {to}: {subject}\n{body}\n")


def notify(event: BudgetThresholdCrossed) -> None:
    owner = OWNERS.get(event.scope)
    if owner is None or event.threshold_pct != NOTIFY_AT_PCT:
        return
    resets = event.period_end.isoformat() if event.period_end else "never (a lifetime budget)"
    send_mail(
        owner,
        f"{event.scope} has spent {event.threshold_pct}% of its budget",
        f"Spent USD {event.spent_usd:.6f} of USD {event.cap_usd:.6f} in period "
        f"{event.period_id} (USD {event.reserved_usd:.6f} more held by calls in flight). "
        f"The budget resets {resets}.",
    )


async def main() -> None:
    consumer = AIOKafkaConsumer(
        os.environ.get("BW_BUDGET_EVENTS_TOPIC", "llm.budget-events"),
        bootstrap_servers=os.environ.get("BW_KAFKA_BOOTSTRAP", "localhost:9092"),
        group_id="threshold-mailer",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    seen: set[str] = set()
    await consumer.start()
    try:
        async for record in consumer:
            try:
                event = parse_budget_event(record.value)
            except ValidationError:
                continue  # another type of budget event, or a newer version: not ours
            if event.event_id not in seen:
                seen.add(event.event_id)
                notify(event)
            await consumer.commit()
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
