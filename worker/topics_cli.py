"""``budget-worker topics create``: make the worker's topics on any Kafka-protocol broker.

Idempotent: a topic that exists is left as it is and reported with its partition count,
so the command is safe to run on every deploy. Exit codes: 0 every topic exists now;
1 the broker could not be reached; 2 a bad option or setting, or the broker refused (the
message says why). Kafka settings come from the ``BW_`` environment, as for the worker.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, NoReturn

import typer

from worker import topics
from worker.errors import ConfigError, KafkaUnavailable
from worker.logs import quiet_kafka_client
from worker.settings import load_settings

app = typer.Typer(
    help="Create the worker's Kafka topics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("create")
def create(
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            min=1,
            help=(
                "Partitions of the jobs and results topics; the dead-letter topic gets 1. "
                "Jobs partitions cap how many workers share the work."
            ),
        ),
    ] = topics.DEFAULT_PARTITIONS,
    replication_factor: Annotated[
        int | None,
        typer.Option(
            "--replication-factor",
            min=1,
            help="Copies of each partition (default: 3, or the broker count when fewer).",
            show_default=False,
        ),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option("--kafka-bootstrap", help="Kafka bootstrap servers (default: BW_ setting)."),
    ] = None,
) -> None:
    """Create the jobs, results and dead-letter topics (names from BW_*_TOPIC).

    Topics that exist already are left as they are.
    """
    try:
        overrides = {} if kafka_bootstrap is None else {"kafka_bootstrap": kafka_bootstrap}
        settings = load_settings(**overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)
    try:
        with quiet_kafka_client():
            states = asyncio.run(
                topics.create_topics(
                    settings, partitions=partitions, replication_factor=replication_factor
                )
            )
    except ConfigError as exc:
        _fail(str(exc), 2)
    except KafkaUnavailable as exc:
        _fail(str(exc), 1)
    for state in states:
        typer.echo(describe_state(state, partitions))


def describe_state(state: topics.TopicState, asked_partitions: int) -> str:
    """One line per topic: created, or there already, with what it has."""
    topic = state.topic
    shape = (
        f"{state.partitions} partition{'s' if state.partitions != 1 else ''}, "
        f"replication factor {state.replication_factor}"
    )
    if state.created:
        return f"created {topic.name!r} ({topic.setting}): {shape}"
    line = f"{topic.name!r} ({topic.setting}) exists: {shape}"
    if topic.setting == "BW_JOBS_TOPIC" and state.partitions < asked_partitions:
        line += (
            f"; fewer than the {asked_partitions} asked for: partitions can be added "
            "(kafka-topics.sh --alter --partitions N), never removed"
        )
    return line


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
