"""The model list: LiteLLM model_list YAML, environment references, prices and every
configuration error the operator can make."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_without_network
from worker.errors import ConfigError
from worker.models import ModelList, load_models, tokenizer_family
from worker.pricebook import cost_map_price, price_of
from worker.prices import ModelPrice

DATA = Path(__file__).parent / "data"
ENV = {"BW_TEST_FAKE_API_BASE": "http://127.0.0.1:9/v1"}
GPT_4O_MINI = cost_map_price("openai/gpt-4o-mini")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ModelList:
    return load_models(write(tmp_path, text), environ or {}, price_of)


def test_the_test_model_list_loads_with_prices_from_map_and_model_info() -> None:
    models = load_models(DATA / "models.yaml", ENV, price_of)

    assert len(models) == 2
    assert models.names() == ["gpt-4o-mini", "fake-model"]
    mini = models.get("gpt-4o-mini")
    assert mini is not None
    assert mini.litellm_model == "openai/gpt-4o-mini"
    assert mini.litellm_params == {
        "model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "api_key": "sk-fake",
    }
    assert mini.price == GPT_4O_MINI
    assert GPT_4O_MINI is not None
    assert (GPT_4O_MINI.input_usd_per_token, GPT_4O_MINI.output_usd_per_token) == (
        Decimal("0.00000015"),
        Decimal("0.0000006"),
    )
    assert mini.max_output_tokens is None
    assert mini.tokenizer_family == "openai"
    fake = models.get("fake-model")
    assert fake is not None
    assert fake.price == ModelPrice(Decimal("0.000001"), Decimal("0.000002"))
    assert fake.max_output_tokens == 256
    assert fake.tokenizer_family == "other"


def test_unknown_model_name_is_none() -> None:
    models = load_models(DATA / "models.yaml", ENV, price_of)

    assert models.get("gpt-5-ultra") is None
    assert "gpt-5-ultra" not in models
    assert "gpt-4o-mini" in models


def test_the_deploy_example_loads_when_its_key_is_set() -> None:
    example = Path(__file__).parent.parent / "deploy" / "models.example.yaml"

    models = load_models(example, {"OPENAI_API_KEY": "sk-example"}, price_of)

    assert models.names() == ["gpt-4o-mini", "gpt-4o-mini-contract", "fake"]
    contract = models.get("gpt-4o-mini-contract")
    assert contract is not None
    assert contract.litellm_params["api_key"] == "sk-example"
    assert contract.price.input_usd_per_token == Decimal("0.00000012")
    assert contract.price.output_usd_per_token == Decimal("0.00000048")


def test_env_references_are_resolved_from_the_given_mapping(tmp_path: Path) -> None:
    models = load_text(
        tmp_path,
        """
        model_list:
          - model_name: m
            litellm_params:
              model: openai/gpt-4o-mini
              api_key: os.environ/MY_KEY
              extra_headers: {X-Org: os.environ/MY_ORG}
        """,
        {"MY_KEY": "sk-from-env", "MY_ORG": "org-1"},
    )

    entry = models.get("m")
    assert entry is not None
    assert entry.litellm_params["api_key"] == "sk-from-env"
    assert entry.litellm_params["extra_headers"] == {"X-Org": "org-1"}


def test_missing_env_variable_names_the_model_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(
            tmp_path,
            """
            model_list:
              - model_name: my-model
                litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/NOT_SET_KEY}
            """,
        )

    message = str(caught.value)
    assert "my-model" in message
    assert "NOT_SET_KEY" in message
    assert str(tmp_path / "models.yaml") in message


def test_missing_file_is_a_config_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="not found") as caught:
        load_models(path, {}, price_of)

    assert str(path) in str(caught.value)


def test_unreadable_file_is_a_config_error_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_models(tmp_path, {}, price_of)  # a directory

    assert str(tmp_path) in str(caught.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_bytes(b"model_list:\n  - model_name: \xff\xfe\n")

    with pytest.raises(ConfigError, match="cannot read"):
        load_models(path, {}, price_of)


def test_bad_yaml_reports_the_line(tmp_path: Path) -> None:
    text = """\
    model_list:
      - model_name: ok
        litellm_params:
          model: [unclosed
    """

    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+") as caught:
        load_text(tmp_path, text)

    assert str(tmp_path / "models.yaml") in str(caught.value)


def test_bad_yaml_line_number_is_the_offending_line(tmp_path: Path) -> None:
    text = "model_list:\n  - model_name: a\n    litellm_params: {model: x\n  bad: : :\n"

    with pytest.raises(ConfigError, match="line 4"):
        load_models(write(tmp_path, text), {}, price_of)


@pytest.mark.parametrize("text", ["models:\n  - model_name: a\n", "", "- just a list\n"])
def test_no_model_list_key_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="model_list"):
        load_text(tmp_path, text)


@pytest.mark.parametrize("text", ["model_list: []\n", "model_list: {a: 1}\n", "model_list:\n"])
def test_empty_or_non_list_model_list_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="non-empty list"):
        load_text(tmp_path, text)


def test_duplicate_model_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'twice' appears twice") as caught:
        load_text(
            tmp_path,
            """
            model_list:
              - model_name: twice
                litellm_params: {model: openai/gpt-4o-mini}
              - model_name: other
                litellm_params: {model: openai/gpt-4o-mini}
              - model_name: twice
                litellm_params: {model: openai/gpt-4o}
            """,
        )

    assert "entries 1 and 3" in str(caught.value)


def test_entry_without_litellm_params_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'lonely' has no litellm_params"):
        load_text(tmp_path, "model_list:\n  - model_name: lonely\n")


def test_entry_without_litellm_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'m' has no litellm_params\.model"):
        load_text(tmp_path, "model_list:\n  - model_name: m\n    litellm_params: {api_key: sk-x}\n")


def test_entry_without_model_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="entry 1 has no model_name"):
        load_text(tmp_path, "model_list:\n  - litellm_params: {model: openai/gpt-4o}\n")


@pytest.mark.parametrize("price", ["-0.000001", "'cheap'", "true", "[1]", "{a: 1}", ".nan"])
def test_price_that_is_not_a_non_negative_number_is_a_config_error(
    tmp_path: Path, price: str
) -> None:
    with pytest.raises(ConfigError, match=r"model_info\.input_cost_per_token must be a number"):
        load_text(
            tmp_path,
            f"""
            model_list:
              - model_name: m
                litellm_params: {{model: openai/gpt-4o-mini}}
                model_info: {{input_cost_per_token: {price}, output_cost_per_token: 0.000001}}
            """,
        )


def test_price_written_without_a_decimal_point_is_accepted(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-06 as the string "1e-06"; it is still a number.
    models = load_text(
        tmp_path,
        """
        model_list:
          - model_name: m
            litellm_params: {model: openai/my-own-model}
            model_info: {input_cost_per_token: 1e-06, output_cost_per_token: 0}
        """,
    )

    entry = models.get("m")
    assert entry is not None
    assert entry.price == ModelPrice(Decimal("0.000001"), Decimal(0))


def test_model_without_any_price_says_which_keys_to_add(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(
            tmp_path,
            "model_list:\n  - model_name: mine\n    litellm_params: {model: openai/my-llama}\n",
        )

    message = str(caught.value)
    assert "'mine'" in message
    assert "openai/my-llama" in message
    assert "model_info.input_cost_per_token" in message
    assert "model_info.output_cost_per_token" in message
    assert str(tmp_path / "models.yaml") in message


def test_model_with_half_a_price_names_the_missing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(
            tmp_path,
            """
            model_list:
              - model_name: mine
                litellm_params: {model: openai/my-llama}
                model_info: {input_cost_per_token: 0.000001}
            """,
        )

    assert "model_info.output_cost_per_token" in str(caught.value)
    assert "model_info.input_cost_per_token" not in str(caught.value)


def test_model_info_prices_override_the_cost_map_one_by_one(tmp_path: Path) -> None:
    models = load_text(
        tmp_path,
        """
        model_list:
          - model_name: both
            litellm_params: {model: openai/gpt-4o-mini}
            model_info: {input_cost_per_token: 0.000002, output_cost_per_token: 0.000003}
          - model_name: input-only
            litellm_params: {model: openai/gpt-4o-mini}
            model_info: {input_cost_per_token: 0.000002}
        """,
    )

    both, input_only = models.get("both"), models.get("input-only")
    assert both is not None and input_only is not None and GPT_4O_MINI is not None
    assert both.price.input_usd_per_token == Decimal("0.000002")
    assert both.price.output_usd_per_token == Decimal("0.000003")
    assert input_only.price.input_usd_per_token == Decimal("0.000002")
    assert input_only.price.output_usd_per_token == GPT_4O_MINI.output_usd_per_token
    # The rest of the cost map's entry still applies (cached input at its own rate).
    assert input_only.price.cache_read_usd_per_token == GPT_4O_MINI.cache_read_usd_per_token


def test_price_resolver_is_given_the_resolved_params_and_model_info(tmp_path: Path) -> None:
    asked: list[tuple[dict[str, object], dict[str, object]]] = []
    price = ModelPrice(Decimal("0.000001"), Decimal("0.000002"))

    def resolver(params: Mapping[str, Any], info: Mapping[str, Any]) -> ModelPrice:
        asked.append((dict(params), dict(info)))
        return price

    models = load_models(
        write(
            tmp_path,
            """
            model_list:
              - model_name: m
                litellm_params: {model: x/y, api_key: os.environ/K}
                model_info: {base_model: azure/gpt-4o, max_output_tokens: 9}
            """,
        ),
        {"K": "sk-k"},
        resolver,
    )

    info = {"base_model": "azure/gpt-4o", "max_output_tokens": 9}
    assert asked == [({"model": "x/y", "api_key": "sk-k"}, info)]
    entry = models.get("m")
    assert entry is not None and entry.price is price


def test_a_resolver_refusal_names_the_file_and_the_model(tmp_path: Path) -> None:
    def resolver(params: Mapping[str, Any], info: Mapping[str, Any]) -> ModelPrice:
        raise ConfigError("model 'x/y': priced per second")

    path = write(tmp_path, "model_list:\n  - model_name: mine\n    litellm_params: {model: x/y}\n")
    with pytest.raises(ConfigError) as caught:
        load_models(path, {}, resolver)

    assert str(caught.value) == f"{path}: model 'mine': model 'x/y': priced per second"


def test_max_output_tokens_must_be_a_positive_integer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_output_tokens"):
        load_text(
            tmp_path,
            """
            model_list:
              - model_name: m
                litellm_params: {model: openai/gpt-4o-mini}
                model_info: {max_output_tokens: 0}
            """,
        )


def test_worker_owned_params_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"litellm_params\.max_tokens is not allowed"):
        load_text(
            tmp_path,
            """
            model_list:
              - model_name: m
                litellm_params: {model: openai/gpt-4o-mini, max_tokens: 10}
            """,
        )


def test_router_only_params_are_dropped(tmp_path: Path) -> None:
    models = load_text(
        tmp_path,
        """
        model_list:
          - model_name: m
            litellm_params: {model: openai/gpt-4o-mini, rpm: 100, tpm: 1000, timeout: 5}
        """,
    )

    entry = models.get("m")
    assert entry is not None
    assert entry.litellm_params == {"model": "openai/gpt-4o-mini", "timeout": 5}


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-mini", "openai"),
        ("openai/gpt-4.1", "openai"),
        ("azure/gpt-4o", "openai"),
        ("openai/o3-mini", "openai"),
        ("anthropic/claude-sonnet-4-5", "anthropic"),
        ("claude-3-haiku-20240307", "anthropic"),
        ("bedrock/anthropic.claude-3-sonnet-20240229-v1:0", "anthropic"),
        ("openai/llama-3-70b", "other"),
        ("hosted_vllm/gpt-4o-mini", "other"),
        ("gemini/gemini-2.0-flash", "other"),
    ],
)
def test_tokenizer_family_follows_the_provider_and_name(model: str, family: str) -> None:
    assert tokenizer_family(model) == family


def test_importing_the_provider_reaches_no_network(tmp_path: Path) -> None:
    """In a fresh interpreter without the offline settings, with every socket lookup and
    connect recorded and refused: the cost map and tiktoken still load."""
    result = run_without_network(
        """
        import os
        import worker.provider as provider
        import worker.pricebook as pricebook
        import tiktoken

        assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
        assert pricebook.cost_map_price("gpt-4o-mini") is not None
        assert len(tiktoken.get_encoding("o200k_base").encode("hello world")) == 2
        assert len(tiktoken.get_encoding("cl100k_base").encode("hello world")) == 2
        """,
        tmp_path,
        unset=("LITELLM_LOCAL_MODEL_COST_MAP", "TIKTOKEN_CACHE_DIR"),
    )
    assert result.returncode == 0, result.stderr
    assert "attempts []" in result.stdout
    assert "fetch" not in result.stderr.lower()
