"""The install split and the console script's entry point.

A producing service installs ``budget-worker`` alone: the client and the contract's
models. These tests build that install without a network: an interpreter started
with ``-S`` (no site-packages) that sees only the distributions the core dependencies
of ``pyproject.toml`` pull in, linked from this environment, plus the source tree.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SERVICE_ONLY = {
    "litellm",
    "redis",
    "aiohttp",
    "typer",
    "rich",
    "prometheus-client",
    "pyyaml",
    "openai",
    "tiktoken",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> set[str]:
    """Every distribution ``requirements`` install (markers evaluated here), by name."""
    environment = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate(environment)):
            continue
        seen.add(name)
        pending += [Requirement(text) for text in metadata.requires(name) or []]
        for extra in requirement.extras:  # e.g. redis[hiredis]
            for text in metadata.requires(name) or []:
                nested = Requirement(text)
                if nested.marker and nested.marker.evaluate({**environment, "extra": extra}):
                    pending.append(nested)
    return seen


@pytest.fixture(scope="module")
def core_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding links to the core install's packages, and nothing else."""
    site = tmp_path_factory.mktemp("core-site")
    for name in closure(PYPROJECT["dependencies"]):
        dist = metadata.distribution(name)
        tops = {
            Path(str(file)).parts[0]
            for file in dist.files or []
            if not str(file).startswith("..") and ".dist-info" not in str(file)
        }
        for top in tops - {"__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


def run_core(core_site: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in an interpreter that has the core install and the source tree only."""
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{core_site}{os.pathsep}{ROOT}"},
        check=False,
    )


def test_the_core_install_is_the_client_and_schemas_without_the_worker() -> None:
    core = {canonical(Requirement(text).name) for text in PYPROJECT["dependencies"]}
    assert core == {"aiokafka", "pydantic", "pydantic-settings"}
    assert not closure(PYPROJECT["dependencies"]) & SERVICE_ONLY
    service = {
        canonical(Requirement(t).name) for t in PYPROJECT["optional-dependencies"]["service"]
    }
    assert service >= SERVICE_ONLY
    dev = [Requirement(t) for t in PYPROJECT["optional-dependencies"]["dev"]]
    extras = {e for r in dev if r.name == "budget-worker" for e in r.extras}
    assert {"service", "embedded", "tracing"} <= extras, "make test installs every extra"


def test_a_producer_imports_the_client_and_schemas_with_the_core_install(
    core_site: Path,
) -> None:
    result = run_core(
        core_site,
        "import sys\n"
        "import schemas.events, schemas.jobs\n"
        "from worker.client import JobClient, ResultWaiter, SyncJobClient, build_job\n"
        "from worker.connections import kafka_options\n"
        "from worker.settings import Settings\n"
        "job = build_job('alice', 'gpt-4o-mini', 'Hello', max_tokens=8)\n"
        "JobClient(Settings())\n"
        "loaded = {name.partition('.')[0] for name in sys.modules}\n"
        "print(sorted(loaded & {'litellm', 'redis', 'aiohttp', 'typer', 'prometheus_client'}))\n"
        "for name in ('litellm', 'redis', 'aiohttp'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        print(exc.name, 'is not installed')\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[]",
        "litellm is not installed",
        "redis is not installed",
        "aiohttp is not installed",
    ]


@pytest.mark.parametrize(
    "argv",
    [["run"], ["submit", "--user", "u", "--model", "m", "--prompt", "hi"], ["budget", "list"]],
    ids=lambda argv: argv[0],
)
def test_a_command_without_the_service_extra_says_what_to_install(
    core_site: Path, argv: list[str]
) -> None:
    result = run_core(
        core_site,
        f"import sys; sys.argv = ['budget-worker', *{argv!r}]\n"
        "from worker.console import main\n"
        "main()\n",
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: this command needs the service extra (module 'typer' is not installed): "
        "install budget-worker[service], e.g. pip install 'budget-worker[service]'\n"
    )


def test_a_module_of_an_extra_missing_inside_a_command_is_named_too() -> None:
    """typer is there but litellm is not: ``run`` imports the service when it runs."""
    code = (
        "import sys; sys.modules['litellm'] = None\n"
        "sys.argv = ['budget-worker', 'run']\n"
        "from worker.console import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BW_MODELS_FILE": "/nonexistent.yaml"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: this command needs the service extra (module ")
    assert "litellm" in result.stderr and result.stderr.count("\n") == 1


def test_the_console_script_is_the_guarded_entry_point() -> None:
    assert PYPROJECT["scripts"] == {"budget-worker": "worker.console:main"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("budget-worker")), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("run", "dev", "topics", "budget", "submit"):
        assert command in result.stdout
