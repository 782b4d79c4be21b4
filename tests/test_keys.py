"""Key names: encoded user ids, one hash tag per user, bounded ASCII."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from worker import keys

# Any str, lone surrogates included (a JSON decoder can produce them).
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), min_size=1, max_size=300),
    st.text(st.sampled_from("ab:{}\n\ud800\udfff"), min_size=1, max_size=12),
)
job_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
    st.text(min_size=1, max_size=200),
)
period_ids = st.sampled_from(["2025-01-31", "2025-W05", "2025-01", "2025", "all", "r0+60"])

TAG = re.compile(r"\{([^}]*)\}")
MAX_KEY_LEN = 200


def all_keys(user_id: str, job_id: str, period_id: str) -> list[str]:
    k = keys.user_keys(user_id)
    return [
        k.budget,
        k.leases,
        k.rpm,
        k.tpm,
        k.spend(period_id),
        k.job(job_id),
        k.outcome(job_id),
    ]


def cluster_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty {...}."""
    match = TAG.search(key)
    assert match is not None and match.group(1), key
    return match.group(1)


@given(any_text, any_text)
def test_distinct_user_ids_never_share_a_key(a: str, b: str) -> None:
    if a == b:
        return
    assert keys.user_keys(a).token != keys.user_keys(b).token
    assert not set(all_keys(a, "j", "all")) & set(all_keys(b, "j", "all"))


@given(any_text, job_ids, period_ids)
def test_every_key_of_a_user_has_the_users_hash_tag(
    user_id: str, job_id: str, period_id: str
) -> None:
    expected = "u:" + keys.user_keys(user_id).token
    assert {cluster_tag(key) for key in all_keys(user_id, job_id, period_id)} == {expected}


@given(any_text, job_ids, period_ids)
def test_keys_are_ascii_and_bounded(user_id: str, job_id: str, period_id: str) -> None:
    for key in all_keys(user_id, job_id, period_id):
        assert key.isascii() and key.isprintable()
        assert len(key) <= MAX_KEY_LEN


@given(job_ids, job_ids)
def test_distinct_job_ids_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert keys.job_token(a) != keys.job_token(b)


def test_contract_job_ids_are_kept_readable() -> None:
    assert keys.job_token("job-1.a:b_C") == "job-1.a:b_C"


def test_other_job_ids_are_hashed_outside_the_readable_alphabet() -> None:
    token = keys.job_token("a b{c}\n")
    assert token.startswith("~") and len(token) == 33


def test_hostile_user_ids_become_32_hex_characters() -> None:
    for user_id in ["a:b", "{x}", "a\nb", "x" * 10_000, "\ud800", "}{"]:
        assert re.fullmatch(r"[0-9a-f]{32}", keys.user_keys(user_id).token)


def test_lone_surrogates_encode_without_raising() -> None:
    assert keys.encode_id("\udcff") != keys.encode_id("\udcfe")


def test_the_users_index_has_a_slot_of_its_own() -> None:
    assert cluster_tag(keys.USERS_INDEX) == "bw:users"


def test_spend_and_job_keys_are_their_prefixes_plus_the_suffix() -> None:
    """The Lua scripts complete these two keys from the prefixes."""
    k = keys.user_keys("alice")
    assert k.spend("2025-01") == k.spend_prefix + "2025-01"
    assert k.job("j1") == k.job_prefix + keys.job_token("j1")
    assert k.outcome("j1") == k.outcome_prefix + keys.job_token("j1")
