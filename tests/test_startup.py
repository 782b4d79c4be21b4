"""The start-up step: importing the worker changes nothing, neither the environment nor
litellm; ``prepare()`` sets both, once; and litellm's import never reaches the internet,
either because the environment says so or because ``prepare()`` ran first.

Each case runs in a fresh interpreter with a clean environment and every socket lookup
and connect recorded and refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker import startup
from worker.errors import ConfigError

ROOT = Path(__file__).parent.parent

NO_NETWORK = """
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:1]))
    raise OSError("network disabled in this test")
socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
"""

SNAPSHOT = """
LITELLM_GLOBALS = (
    "suppress_debug_info", "telemetry", "num_retries", "drop_params", "set_verbose",
    "callbacks", "success_callback", "failure_callback", "input_callback",
    "service_callback", "_async_success_callback", "_async_failure_callback",
)
def snapshot(litellm):
    return {name: repr(getattr(litellm, name, "<absent>")) for name in LITELLM_GLOBALS}
"""


def run(script: str, tmp_path: Path, **environment: str) -> dict[str, object]:
    """``script`` in a fresh interpreter whose environment holds only ``environment``
    and what Python needs; the JSON it printed on its ``RESULT`` line."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **environment}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK + SNAPSHOT + textwrap.dedent(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "fetch" not in result.stderr.lower()
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    found: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return found


def test_importing_every_worker_module_changes_nothing_and_prepare_sets_it_once(
    tmp_path: Path,
) -> None:
    defaults = run(
        """
        import json, litellm
        print("RESULT " + json.dumps({"globals": snapshot(litellm), "attempts": attempts}))
        """,
        tmp_path,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    found = run(
        """
        import importlib, json, os, pkgutil, threading
        before = dict(os.environ)
        import worker
        names = sorted(m.name for m in pkgutil.walk_packages(worker.__path__, "worker."))
        for name in names:
            importlib.import_module(name)
        import litellm
        imported = {"environ": dict(os.environ), "globals": snapshot(litellm)}

        import worker.provider as provider
        calls = []
        configure = provider.configure_litellm
        provider.configure_litellm = lambda: (calls.append(1), configure())
        from worker import startup
        threads = [threading.Thread(target=startup.prepare) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        startup.prepare()
        prepared = {"environ": dict(os.environ), "globals": snapshot(litellm)}
        print("RESULT " + json.dumps({
            "modules": names, "before": before, "imported": imported,
            "prepared": prepared, "configured": len(calls),
            "expected": startup.library_environment(), "attempts": attempts,
        }))
        """,
        tmp_path,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )

    assert {"worker.provider", "worker.compat", "worker.service", "worker.cli"} <= set(
        found["modules"]  # type: ignore[arg-type]
    )
    imported: dict[str, object] = found["imported"]  # type: ignore[assignment]
    prepared: dict[str, dict[str, str]] = found["prepared"]  # type: ignore[assignment]
    offline = found["expected"]  # worker.compat keeps litellm offline at import, only that
    assert imported["environ"] == {**found["before"], **offline}  # type: ignore[dict-item]
    assert imported["globals"] == defaults["globals"]
    assert prepared["environ"] == {**found["before"], **found["expected"]}  # type: ignore[dict-item]
    assert prepared["environ"]["TIKTOKEN_CACHE_DIR"].endswith("litellm_core_utils/tokenizers")
    assert prepared["globals"]["suppress_debug_info"] == "True"
    assert prepared["globals"]["telemetry"] == "False"
    assert prepared["globals"]["num_retries"] == "None"
    assert prepared["globals"]["callbacks"] == prepared["globals"]["success_callback"] == "[]"
    assert found["configured"] == 1
    assert found["attempts"] == defaults["attempts"] == []


def test_without_the_cost_map_setting_importing_litellm_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    found = run(
        """
        import json, sys
        from worker.errors import ConfigError
        refused = []
        for name in ("worker.provider", "worker.pricebook", "worker.service", "worker.spend"):
            try:
                __import__(name)
            except ConfigError as exc:
                refused.append(str(exc))
        print("RESULT " + json.dumps({
            "refused": refused, "litellm": "litellm" in sys.modules, "attempts": attempts,
        }))
        """,
        tmp_path,
    )

    refused: list[str] = found["refused"]  # type: ignore[assignment]
    assert len(refused) == 4
    assert all("LITELLM_LOCAL_MODEL_COST_MAP=True" in reason for reason in refused)
    assert "worker.startup.prepare()" in refused[0]
    assert found["litellm"] is False
    assert found["attempts"] == []


def test_a_budgetmanager_user_changes_only_the_import_and_litellm_stays_offline(
    tmp_path: Path,
) -> None:
    """The drop-in's promise: nothing set in the environment, no set-up call."""
    found = run(
        """
        import json, os, sys
        from worker.compat import BudgetManager, completion
        import litellm
        from litellm.litellm_core_utils.get_model_cost_map import _cost_map_source_info
        print("RESULT " + json.dumps({
            "variable": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP"),
            "tokenizers": os.environ.get("TIKTOKEN_CACHE_DIR", ""),
            "source": _cost_map_source_info.source,
            "suppress_debug_info": litellm.suppress_debug_info,
            "attempts": attempts,
        }))
        """,
        tmp_path,
    )

    assert found["variable"] == "True"
    assert str(found["tokenizers"]).endswith("litellm_core_utils/tokenizers")
    assert found["source"] == "local"
    assert found["suppress_debug_info"] is False  # litellm's own settings wait for a manager
    assert found["attempts"] == []


def test_after_prepare_the_cost_map_and_tiktoken_load_without_any_network(
    tmp_path: Path,
) -> None:
    found = run(
        """
        import json, os
        from worker import startup
        startup.prepare()
        import worker.compat
        import worker.pricebook as pricebook
        import tiktoken
        from litellm.litellm_core_utils.get_model_cost_map import _cost_map_source_info
        print("RESULT " + json.dumps({
            "variable": os.environ["LITELLM_LOCAL_MODEL_COST_MAP"],
            "source": _cost_map_source_info.source,
            "priced": pricebook.cost_map_price("gpt-4o-mini") is not None,
            "o200k": len(tiktoken.get_encoding("o200k_base").encode("hello world")),
            "cl100k": len(tiktoken.get_encoding("cl100k_base").encode("hello world")),
            "attempts": attempts,
        }))
        """,
        tmp_path,
    )

    assert found == {
        "variable": "True",
        "source": "local",
        "priced": True,
        "o200k": 2,
        "cl100k": 2,
        "attempts": [],
    }


def test_an_operators_own_settings_win(tmp_path: Path) -> None:
    found = run(
        """
        import json, os
        from worker import startup
        startup.prepare()
        print("RESULT " + json.dumps({"tiktoken": os.environ["TIKTOKEN_CACHE_DIR"],
                                      "attempts": attempts}))
        """,
        tmp_path,
        LITELLM_LOCAL_MODEL_COST_MAP="true",
        CUSTOM_TIKTOKEN_CACHE_DIR=str(tmp_path / "tokenizers"),
        TIKTOKEN_CACHE_DIR=str(tmp_path / "tokenizers"),
    )

    assert found == {"tiktoken": str(tmp_path / "tokenizers"), "attempts": []}


@pytest.mark.parametrize(
    "environ",
    [
        {"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        {"LITELLM_LOCAL_MODEL_COST_MAP": "true"},
        {"LITELLM_OFFLINE_MODE": "TRUE"},
    ],
)
def test_the_import_check_passes_when_the_environment_keeps_litellm_local(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "litellm", raising=False)

    startup.require_local_cost_map(environ)


@pytest.mark.parametrize(
    "environ", [{}, {"LITELLM_LOCAL_MODEL_COST_MAP": "False"}, {"LITELLM_OFFLINE_MODE": "1"}]
)
def test_the_import_check_refuses_an_environment_that_would_fetch_the_cost_map(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "litellm", raising=False)

    with pytest.raises(ConfigError, match="LITELLM_LOCAL_MODEL_COST_MAP=True"):
        startup.require_local_cost_map(environ)


def test_the_import_check_passes_once_litellm_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "litellm", sys)

    startup.require_local_cost_map({})
