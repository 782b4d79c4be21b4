"""The files under ``deploy/`` agree with the code they deploy.

Nothing here needs Docker or a cluster: the YAML and JSON are read as data and checked
against the worker itself (its settings class, its console script, its health server,
and the metrics a real ``budget-worker run`` process exposes). ``kubectl kustomize``
is used when it is installed.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support import Topics, in_process_workers, worker_env, write_models_file
from worker.dev.servers import EmbeddedKafka
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"
JOBS_TOPIC = "llm.jobs"

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))
BW_NAME = re.compile(r"\bBW_[A-Z0-9_]*[A-Z0-9]\b")
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")

# PromQL words that are not metric names.
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
NON_WORKER_METRICS = {"up"}  # Prometheus' own, per scrape target
COMMAND_GROUPS = {"budget", "topics"}  # `budget-worker GROUP COMMAND ...`

# Metrics the dashboard must chart: what an operator looks at first.
DASHBOARD_MUST_SHOW = {
    "bw_jobs_total",
    "bw_jobs_in_flight",
    "bw_reserve_seconds_bucket",
    "bw_settle_seconds_bucket",
    "bw_model_call_seconds_bucket",
    "bw_spend_usd_total",
    "bw_consumer_lag",
    "bw_redis_up",
    "bw_dlq_records_total",
}
ALERTS_REQUIRED = {
    "BudgetWorkerDown",
    "BudgetWorkerLagGrowing",
    "BudgetWorkerRedisUnreachable",
    "BudgetWorkerFailureRateHigh",
    "BudgetWorkerDLQGrowing",
}


# --- reading the files ---------------------------------------------------------------------


def load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def compose_default(value: Any) -> str:
    """``value`` as docker compose would see it with no variables set (defaults only)."""
    text = str(value)
    text = COMPOSE_VARIABLE.sub(lambda m: m.group(2) or "", text)
    return text.replace("$$", "$")


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): compose_default(v) for k, v in env.items()}


def env_example(include_commented: bool) -> dict[str, str]:
    values = {}
    for raw in (DEPLOY / "env.example").read_text().splitlines():
        line = raw.strip()
        if include_commented:
            line = line.lstrip("#").strip()
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def k8s_docs(directory: Path = K8S) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(directory.rglob("*.yaml")):
        for doc in load_yaml(path):
            if isinstance(doc, dict) and "kind" in doc:
                yield path, doc


def k8s_kind(kind: str, directory: Path = K8S / "base") -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs(directory) if doc["kind"] == kind]


def one(kind: str, directory: Path = K8S / "base") -> dict[str, Any]:
    (doc,) = k8s_kind(kind, directory)
    return doc


def by_component(kind: str, component: str, directory: Path = K8S / "base") -> dict[str, Any]:
    """The one manifest of ``kind`` for ``component`` (``worker``, ``admin``)."""
    (doc,) = [
        d
        for d in k8s_kind(kind, directory)
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return doc


def deployment_of(component: str = "worker") -> dict[str, Any]:
    return by_component("Deployment", component)


def service_of(component: str = "worker") -> dict[str, Any]:
    return by_component("Service", component)


def settings_configmap(docs: list[dict[str, Any]]) -> dict[str, str]:
    (doc,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("budget-worker-settings")
    ]
    return {str(k): str(v) for k, v in doc["data"].items()}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def dockerfile(instruction: str) -> list[str]:
    return [args for name, args in dockerfile_instructions() if name == instruction]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for args in dockerfile("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def settings_from(env: dict[str, str]) -> Settings:
    fields = {k[3:].lower(): v for k, v in env.items() if k.startswith("BW_")}
    return Settings(**fields)


def metrics_port(env: dict[str, str]) -> int:
    return int(env.get("BW_METRICS_PORT", Settings.model_fields["metrics_port"].default))


def jobs_partitions_k8s() -> int:
    (job,) = [
        d for d in k8s_kind("Job") if any("kafka-topics.sh" in json.dumps(c) for c in containers(d))
    ]
    (container,) = containers(job)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    script = " ".join(container.get("args", []) + container.get("command", []))
    assert '--topic "$BW_JOBS_TOPIC" --partitions "$JOBS_PARTITIONS"' in script
    return int(env["JOBS_PARTITIONS"])


def jobs_partitions_compose() -> int:
    topics = compose()["services"]["topics"]
    script = " ".join(str(part) for part in topics["command"])
    match = re.search(rf"--topic {re.escape(JOBS_TOPIC)} --partitions (\S+)", script)
    assert match, "the topics service must create llm.jobs with --partitions"
    return int(compose_default(match.group(1)))


@functools.cache
def cli_help(*command: str) -> str:
    """``budget-worker <command> --help`` through the installed console script (once
    per command: several doc lines name the same one)."""
    script = Path(sys.executable).with_name("budget-worker")
    assert script.exists(), f"console script not installed beside {sys.executable}"
    result = subprocess.run(
        [str(script), *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "200"},
        check=False,
    )
    assert result.returncode == 0, f"budget-worker {' '.join(command)} --help:\n{result.stderr}"
    return result.stdout


def cli_options(*command: str) -> set[str]:
    """The long options ``budget-worker <command>`` accepts, read from its help."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cli_help(*command)))


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, ranges, groupings dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*+)(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def dashboard_expressions() -> list[str]:
    (path,) = [p for p in JSON_FILES if p.name == "budget-worker.json"]
    dashboard = json.loads(path.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            yield from walk(panel.get("panels", []))

    return list(walk(dashboard["panels"]))


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def exposed_metric_names(exposition: str) -> set[str]:
    """Every sample name a Prometheus scrape of this text can select.

    Families come from the ``# TYPE`` lines, which prometheus_client prints for every
    registered family even before a labelled one has its first sample.
    """
    names = set()
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            family, kind = parts[2], parts[3]
            names.add(family)
            if kind == "counter":
                names.add(family if family.endswith("_total") else f"{family}_total")
            if kind in {"histogram", "summary"}:
                names.update(f"{family}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def assert_metrics_exist(exposed: set[str]) -> None:
    expressions = [*dashboard_expressions(), *(rule["expr"] for rule in alert_rules())]
    used = set().union(*(promql_metric_names(expr) for expr in expressions))
    unknown = used - exposed - NON_WORKER_METRICS
    assert not unknown, f"dashboard/alerts use metrics the worker does not expose: {unknown}"
    shown = set().union(*(promql_metric_names(expr) for expr in dashboard_expressions()))
    assert shown >= DASHBOARD_MUST_SHOW, DASHBOARD_MUST_SHOW - shown


# --- every file parses ---------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    assert load_yaml(path), f"{path} is empty"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_json_file_under_deploy_parses(path: Path) -> None:
    assert json.loads(path.read_text())


# --- settings ------------------------------------------------------------------------------


def test_every_bw_variable_named_in_deploy_and_operations_is_a_setting() -> None:
    # A local deploy/.env (provider keys) is not read.
    texts = [p for p in DEPLOY.rglob("*") if p.is_file() and not p.name.startswith(".env")]
    texts += [OPERATIONS, ROOT / ".dockerignore"]
    named: dict[str, set[str]] = {}
    for path in texts:
        for name in BW_NAME.findall(path.read_text(errors="replace")):
            named.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert named, "no BW_ variable found at all"
    unknown = {
        n: sorted(where) for n, where in named.items() if n[3:].lower() not in Settings.model_fields
    }
    assert not unknown, f"not fields of worker.settings.Settings: {unknown}"


def _set_by_k8s() -> dict[str, str]:
    """Every variable a Kubernetes manifest sets (ConfigMap data, container env), and where."""
    set_by: dict[str, str] = {}
    for path, doc in k8s_docs():
        where = str(path.relative_to(DEPLOY))
        if doc["kind"] == "ConfigMap":
            set_by.update(dict.fromkeys(doc.get("data", {}), where))
        if doc["kind"] in {"Deployment", "Job"}:
            for container in containers(doc):
                set_by.update({item["name"]: where for item in container.get("env", [])})
    return set_by


def test_every_bw_variable_set_by_a_manifest_is_a_setting() -> None:
    set_by: dict[str, str] = {}
    for name, service in compose()["services"].items():
        for key in compose_environment(service):
            set_by[key] = f"compose.yaml services.{name}.environment"
    for key in env_example(include_commented=True):
        set_by[key] = "env.example"
    set_by.update(_set_by_k8s())
    for key in dockerfile_env():
        set_by[key] = "Dockerfile"
    bw = {k: v for k, v in set_by.items() if k.startswith("BW_")}
    assert {"BW_KAFKA_BOOTSTRAP", "BW_REDIS_URL", "BW_MODELS_FILE"} <= bw.keys()
    unknown = {k: v for k, v in bw.items() if k[3:].lower() not in Settings.model_fields}
    assert not unknown, f"not fields of worker.settings.Settings: {unknown}"


def test_compose_worker_environment_builds_valid_settings() -> None:
    worker = compose()["services"]["worker"]
    # env_file first, `environment` wins, as docker compose merges them.
    env = {**env_example(include_commented=False), **compose_environment(worker)}
    settings = settings_from(env)
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.redis_url == "redis://redis:6379/0"
    assert str(settings.models_file) == "/config/models.yaml"
    mounts = [compose_default(v) for v in worker["volumes"]]
    assert "./models.example.yaml:/config/models.yaml:ro" in mounts
    assert worker["env_file"] in (".env", [".env"])


def test_env_example_commented_settings_are_valid_values_too() -> None:
    example = env_example(include_commented=True)
    settings_from({**compose_environment(compose()["services"]["worker"]), **example})


@pytest.mark.parametrize("overlay", [K8S / "base", K8S / "overlays" / "example"], ids=str)
def test_kubernetes_settings_build_valid_settings(overlay: Path) -> None:
    data = settings_configmap(k8s_kind("ConfigMap", K8S / "base"))
    if overlay != K8S / "base":
        data |= settings_configmap(k8s_kind("ConfigMap", overlay))
    settings = settings_from(data)
    assert str(settings.models_file) == "/config/models.yaml"


def test_the_model_lists_deployed_and_documented_load(tmp_path: Path) -> None:
    from worker.models import load_models
    from worker.pricebook import price_of

    (configmap,) = [
        d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "budget-worker-models"
    ]
    lists = [
        (DEPLOY / "models.example.yaml").read_text(),
        (DEPLOY / "models.dev.yaml").read_text(),
        configmap["data"]["models.yaml"],
    ]
    environ = {"OPENAI_API_KEY": "sk-test"}
    for number, text in enumerate(lists):
        path = tmp_path / f"models-{number}.yaml"
        path.write_text(text)
        assert load_models(path, environ, price_of).names(), text


def test_cli_commands_in_the_deploy_docs_exist_with_their_options() -> None:
    """Every ``budget-worker ...`` (or ``bw ...``) line of a shell block in the docs."""
    commands = set()
    for doc in (DEPLOY / "README.md", OPERATIONS, ROOT / "README.md"):
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                match = re.match(r"\s*(?:bw|\S*budget-worker)\s+([a-z].*)", line)
                if match and not line.lstrip().startswith("alias"):
                    commands.add(match.group(1))
    assert commands
    for command in sorted(commands):
        words = shlex.split(command, comments=True)
        path = words[:2] if words[0] in COMMAND_GROUPS else words[:1]
        options = cli_options(*path)
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in options, f"budget-worker {' '.join(path)} has no {option}"


# --- the image ---------------------------------------------------------------------------


def test_dockerfile_runs_a_real_command_of_the_console_script() -> None:
    (entrypoint,) = dockerfile("ENTRYPOINT")
    (cmd,) = dockerfile("CMD")
    assert json.loads(entrypoint) == ["budget-worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "budget-worker" in scripts
    command = json.loads(cmd)
    assert command == ["run"]
    assert "worker process" in cli_help(*command)


def test_deployment_and_compose_commands_are_real_commands() -> None:
    for component in ("worker", "admin"):
        (container,) = deployment_of(component)["spec"]["template"]["spec"]["containers"]
        cli_help(*container.get("args", ["run"]))

    fake = compose()["services"]["fake-provider"]
    command = [str(part) for part in fake["command"]]
    assert command[0] == "fake-provider"
    assert fake["profiles"] == ["dev"]
    options = cli_options(command[0])
    for option in (part for part in command[1:] if part.startswith("--")):
        assert option in options, f"budget-worker fake-provider has no {option}"


def test_dockerfile_installs_the_project_from_pyproject_and_nothing_else() -> None:
    text = DOCKERFILE.read_text()
    assert "requirements" not in text.lower(), "dependencies belong in pyproject.toml only"
    installs = [
        shlex.split(part.strip())
        for args in dockerfile("RUN")
        for part in re.split(r"&&|;", args)
        if re.search(r"\bpip install\b", part)
    ]
    assert installs, "the Dockerfile must pip install the project"
    for words in installs:
        targets = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
        assert targets in ([".[service]"], ["pip"]), f"unexpected install: {' '.join(words)}"
    assert any(words[-1] == ".[service]" for words in installs), "the worker's extra"
    # Everything the install reads is copied, and the .dockerignore lets it through.
    copied = {
        Path(source).parts[0]
        for args in dockerfile("COPY")
        if not args.startswith("--")
        for source in shlex.split(args)[:-1]
    }
    assert {"pyproject.toml", "README.md", "worker", "schemas"} <= copied
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source in allowed, f".dockerignore keeps {source} out of the build context"


def test_dockerfile_runtime_stays_offline_non_root_and_healthchecked() -> None:
    env = dockerfile_env()
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    # TIKTOKEN_CACHE_DIR names litellm's bundled tokenizers in the image's venv.
    (python_image,) = [
        a.split("=", 1)[1] for a in dockerfile("ARG") if a.startswith("PYTHON_IMAGE=")
    ]
    version = re.fullmatch(r"python:(3\.\d+)-slim", python_image)
    assert version, python_image
    tokenizers = f"/opt/venv/lib/python{version.group(1)}/site-packages/"
    relative = "litellm/litellm_core_utils/tokenizers"
    assert env["TIKTOKEN_CACHE_DIR"] == tokenizers + relative
    # ... and that directory exists in the litellm the project installs.
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    assert (package.parent / relative).is_dir()
    stages = dockerfile("FROM")
    assert len(stages) >= 2 and all(s.startswith("${PYTHON_IMAGE}") for s in stages)
    assert "COPY --from=builder /opt/venv /opt/venv" in DOCKERFILE.read_text()

    (user,) = dockerfile("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER (runAsNonRoot checks it)"
    (expose,) = dockerfile("EXPOSE")
    assert int(expose) == Settings.model_fields["metrics_port"].default == metrics_port(env)
    (healthcheck,) = dockerfile("HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[0] == "python" and "/healthz" in command[-1]


# --- probes, ports, shutdown ------------------------------------------------------------------


def test_probes_and_ports_agree_with_the_metrics_port() -> None:
    data = settings_configmap(k8s_kind("ConfigMap"))
    port = metrics_port(data)
    deployment = deployment_of()
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert named["metrics"] == port

    def resolve(value: int | str) -> int:
        return named[value] if isinstance(value, str) else value

    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in worker:
            assert resolve(worker[probe]["httpGet"]["port"]) == port, probe
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        port
    )

    service = service_of()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port
    assert resolve(service_port["targetPort"]) == port
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    selector = service["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    worker_env = compose_environment(compose()["services"]["worker"])
    compose_port = metrics_port(worker_env)
    (prometheus,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "budget-worker"]
    scraped = [sd["port"] for sd in job.get("dns_sd_configs", [])] + [
        int(t.rsplit(":", 1)[1]) for sc in job.get("static_configs", []) for t in sc["targets"]
    ]
    assert scraped and set(scraped) == {compose_port}
    assert {sd["names"][0] for sd in job.get("dns_sd_configs", [])} <= {"worker"}


def test_worker_pods_are_non_root_read_only_and_bounded() -> None:
    deployment = deployment_of()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (worker,) = pod["containers"]
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= worker["resources"].keys()
    sources = [next(iter(s)) for s in worker["envFrom"]]
    assert sources == ["configMapRef", "secretRef"], "settings first, the Secret wins clashes"
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = volumes[mounts["/config"]]["configMap"]
    assert models["name"] == "budget-worker-models"
    assert [i["path"] for i in models["items"]] == ["models.yaml"]


def test_termination_grace_outlasts_shutdown_grace_plus_drain() -> None:
    data = settings_configmap(k8s_kind("ConfigMap"))
    assert {"BW_SHUTDOWN_GRACE_S", "BW_DRAIN_TIMEOUT_S"} <= data.keys(), "set them explicitly"
    needed = float(data["BW_SHUTDOWN_GRACE_S"]) + float(data["BW_DRAIN_TIMEOUT_S"])
    pod = deployment_of()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > needed

    worker = compose()["services"]["worker"]
    env = compose_environment(worker)
    needed = float(env["BW_SHUTDOWN_GRACE_S"]) + float(env["BW_DRAIN_TIMEOUT_S"])
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) > needed


# --- the admin API ---------------------------------------------------------------------------


def test_compose_runs_the_admin_api_with_its_token_from_a_secret() -> None:
    from worker.admin.auth import MIN_TOKEN_CHARS

    services = compose()["services"]
    admin, worker = services["admin"], services["worker"]
    assert admin["image"] == worker["image"]
    assert admin["depends_on"]["redis"]["condition"] == "service_healthy"
    env = compose_environment(admin)
    assert "BW_ADMIN_TOKEN" not in env, "the token is a secret, not an environment value"
    (secret,) = admin["secrets"]
    assert compose()["secrets"][secret]["file"] == "./admin-token"
    assert (ROOT / ".gitignore").read_text().count("deploy/admin-token") == 1
    script = " ".join(compose_default(part) for part in admin["command"])
    assert admin["entrypoint"] == ["/bin/sh", "-c"]
    assert f'BW_ADMIN_TOKEN="$(cat /run/secrets/{secret})"' in script
    assert script.endswith("exec budget-worker admin")
    settings = settings_from({**env, "BW_ADMIN_TOKEN": "x" * MIN_TOKEN_CHARS})
    assert settings.redis_url == compose_environment(worker)["BW_REDIS_URL"]
    assert settings.admin_host == "0.0.0.0"  # in its container; published on loopback only
    (published,) = [compose_default(p) for p in admin["ports"]]
    assert published == f"127.0.0.1:{settings.admin_port}:{settings.admin_port}"
    probe = admin["healthcheck"]["test"][-1]
    assert f"http://127.0.0.1:{settings.admin_port}/healthz" in probe
    assert admin["read_only"] is True


def test_kubernetes_runs_the_admin_api_with_probes_and_its_token_from_a_secret() -> None:
    from worker.admin.auth import MIN_TOKEN_CHARS

    admin = deployment_of("admin")
    pod = admin["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["admin"]
    assert (
        container["image"] == deployment_of()["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert [next(iter(s)) for s in container["envFrom"]] == ["configMapRef"]
    env = {e["name"]: e for e in container["env"]}
    token = env["BW_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "budget-worker-admin-token", "key": "token"}
    data = settings_configmap(k8s_kind("ConfigMap"))
    assert "BW_ADMIN_TOKEN" not in data, "the token lives in its Secret only"
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    settings = settings_from({**data, **values, "BW_ADMIN_TOKEN": "x" * MIN_TOKEN_CHARS})
    assert settings.admin_host == "0.0.0.0"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["admin"] == settings.admin_port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthz", probe
        assert named.get(check["port"], check["port"]) == settings.admin_port, probe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"requests", "limits"} <= container["resources"].keys()
    labels = admin["spec"]["template"]["metadata"]["labels"]
    assert admin["spec"]["selector"]["matchLabels"].items() <= labels.items()
    front = service_of("admin")
    assert front["spec"]["selector"].items() <= labels.items()
    (port,) = front["spec"]["ports"]
    assert named.get(port["targetPort"], port["targetPort"]) == settings.admin_port
    # The workers' Service, PDB and scaler never select the admin pods.
    worker_labels = deployment_of()["spec"]["template"]["metadata"]["labels"]
    assert not service_of()["spec"]["selector"].items() <= labels.items()
    assert service_of()["spec"]["selector"].items() <= worker_labels.items()
    overlay = load_yaml(K8S / "overlays" / "example" / "kustomization.yaml")[0]
    (generated,) = [g for g in overlay["secretGenerator"] if g["name"] == token["name"]]
    (literal,) = generated["literals"]
    key, _, value = literal.partition("=")
    assert key == "token" and len(value) >= MIN_TOKEN_CHARS


# --- scaling -------------------------------------------------------------------------------


def test_keda_never_scales_past_the_jobs_topic_partitions() -> None:
    partitions = jobs_partitions_k8s()
    assert jobs_partitions_compose() == partitions
    assert env_example(include_commented=False)["JOBS_PARTITIONS"] == str(partitions)
    scaled = [(p, d) for p, d in k8s_docs() if d["kind"] == "ScaledObject"]
    assert len(scaled) >= 2, "the base and the example overlay both bound replicas"
    for path, doc in scaled:
        spec = doc["spec"]
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"] <= partitions, path
    base = one("ScaledObject")
    assert base["metadata"]["annotations"]["budget-worker/jobs-topic-partitions"] == str(partitions)
    assert compose()["services"]["worker"]["deploy"]["replicas"] <= partitions


@pytest.mark.parametrize("overlay", [K8S / "base", K8S / "overlays" / "example"], ids=str)
def test_keda_reads_the_lag_of_the_group_and_topic_the_workers_use(overlay: Path) -> None:
    data = settings_configmap(k8s_kind("ConfigMap", K8S / "base"))
    scaled = one("ScaledObject", K8S / "base")
    if overlay != K8S / "base":
        data |= settings_configmap(k8s_kind("ConfigMap", overlay))
        scaled = one("ScaledObject", overlay)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    settings = settings_from(data)
    assert meta["bootstrapServers"] == settings.kafka_bootstrap
    assert meta["consumerGroup"] == settings.group_id == "budget-worker"
    assert meta["topic"] == settings.jobs_topic == JOBS_TOPIC
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("allowIdleConsumers", "false") == "false"
    assert (
        one("ScaledObject", K8S / "base")["spec"]["scaleTargetRef"]["name"]
        == deployment_of()["metadata"]["name"]
    )


def test_servicemonitor_is_optional_and_pdb_selects_the_workers() -> None:
    kustomization = load_yaml(K8S / "base" / "kustomization.yaml")[0]
    resources = set(kustomization["resources"])
    assert "servicemonitor.yaml" not in resources
    assert (K8S / "base" / "servicemonitor.yaml").exists()
    listed = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == listed - {"servicemonitor.yaml"}
    labels = deployment_of()["spec"]["template"]["metadata"]["labels"]
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", [K8S / "base", K8S / "overlays" / "example"], ids=str)
def test_kustomize_builds_and_keeps_references(overlay: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "Job"} <= kinds
    assert "ServiceMonitor" not in kinds
    settings_from(settings_configmap(docs))
    pods = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert pods.keys() == {"worker", "admin"}
    (worker,) = pods["worker"]["containers"]
    (admin,) = pods["admin"]["containers"]
    secret_ref = next(s["secretRef"]["name"] for s in worker["envFrom"] if "secretRef" in s)
    (token_ref,) = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in admin["env"]
        if e["name"] == "BW_ADMIN_TOKEN"
    ]
    if overlay.name == "example":
        secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        assert secret_ref in secrets, "the generated Secret's hashed name reaches the pods"
        assert token_ref in secrets, "... and the admin token's reaches the admin pods"
        assert "token" in secrets[token_ref]["data"]
        assert worker["image"].endswith(":0.1.0") and admin["image"] == worker["image"]
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
            "llm-budget"
        }


# --- dashboards and alerts ------------------------------------------------------------------


def test_alerts_cover_the_failure_modes_and_each_has_a_runbook() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names >= ALERTS_REQUIRED
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        target, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert target == "docs/operations.md" and anchor in headings, rule["alert"]
    up_rules = [r for r in rules if r["alert"] == "BudgetWorkerDown"]
    assert up_rules[0]["expr"].strip() == 'up{job="budget-worker"} == 0'
    redis = [r for r in rules if r["alert"] == "BudgetWorkerRedisUnreachable"]
    assert "bw_redis_up == 0" in redis[0]["expr"]


def test_compose_mounts_what_prometheus_and_grafana_are_configured_to_read() -> None:
    services = compose()["services"]
    (prometheus,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"]}
    for rule_file in prometheus["rule_files"]:
        assert Path(DEPLOY, mounts[rule_file]).resolve() == DEPLOY / "prometheus" / "alerts.yml"
    assert (
        services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["observability"]
    )
    (provider,) = load_yaml(
        DEPLOY / "grafana" / "provisioning" / "dashboards" / "budget-worker.yml"
    )
    path = provider["providers"][0]["options"]["path"]
    grafana = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"]}
    assert Path(DEPLOY, grafana[path]).resolve() == DEPLOY / "grafana" / "dashboards"
    assert (DEPLOY / grafana["/etc/grafana/provisioning"]).resolve() == (
        DEPLOY / "grafana" / "provisioning"
    )


def test_promql_metric_names_are_read_from_expressions() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model) "
        '(rate(bw_x_bucket{a="b"}[$__rate_interval]))) / 1e9'
    )
    assert promql_metric_names(expr) == {"bw_x_bucket"}
    assert promql_metric_names('absent(up{job="w"} == 1) and sum(m) > 0.10') == {"up", "m"}


async def test_dashboard_and_alert_metrics_are_registered_by_the_worker() -> None:
    """The in-process health server, fresh registry: no sample observed yet."""
    from worker.metrics import HealthServer, Metrics

    server = HealthServer(Metrics(), ready=lambda: True)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with session.get(url) as response:
                assert response.status == 200
                exposition = await response.text()
    finally:
        await server.stop()
    assert_metrics_exist(exposed_metric_names(exposition))


@pytest.mark.timeout(180)
async def test_dashboard_and_alert_metrics_are_served_by_a_running_worker(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> None:
    """A running worker (in-process: the same ``serve()`` as ``budget-worker run``)
    against the test broker and Redis, scraped over HTTP."""
    topics = Topics.fresh(kafka)
    models = write_models_file(tmp_path, fake_provider.url)
    env = worker_env(kafka, redis_url, models, topics)
    async with in_process_workers(env) as (worker,), aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{worker.metrics_port}"
        async with session.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with session.get(f"{base}/metrics") as response:
            assert response.status == 200
            exposition = await response.text()

        # The image's HEALTHCHECK command, run as Docker would, against this worker.
        (healthcheck,) = dockerfile("HEALTHCHECK")
        command = json.loads(healthcheck.split("CMD", 1)[1])
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            *command[1:],
            env={**os.environ, "BW_METRICS_PORT": str(worker.metrics_port)},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(check.communicate(), 30)
        assert check.returncode == 0, stderr.decode(errors="replace")
    assert_metrics_exist(exposed_metric_names(exposition))
