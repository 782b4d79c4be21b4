"""Every Redis key name the ledger uses, and nothing else.

A user id is never spliced raw into a key: it is replaced by ``U``, the hex of its
128-bit BLAKE2b digest, so ids holding ``:``, ``{``, newlines or 10 KB of text all
become 32 safe characters. Every key of one user carries the hash tag ``{u:U}``, so
on Redis Cluster they all live in one slot and each ledger script stays in one slot.
The users index ``{bw:users}`` has a slot of its own and is never touched by a script.

Two keys are completed inside Lua, because their last part is only known there:
the spend key of a period (``spend_prefix`` + the period id computed from Redis's
clock) and the job key of a reclaimed lease (``job_prefix`` + the lease member,
which is the job token). Both prefixes are built here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

PREFIX = "bw"
USERS_INDEX = "{bw:users}"

# Job ids the contract allows ([A-Za-z0-9._:-], 1-128 chars) are used as they are,
# readable in redis-cli; anything else is hashed. "~" is outside the allowed set, so a
# hashed token never equals a raw one.
_PLAIN_JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HASHED_JOB_MARK = "~"


def encode_id(text: str) -> str:
    """The 32-hex-character BLAKE2b-128 digest of ``text`` as UTF-8.

    Lone surrogates (which a JSON decoder may produce) are encoded with
    ``surrogatepass`` so that every ``str`` has a key and two different strings never
    share one.
    """
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def job_token(job_id: str) -> str:
    """The job id as it appears in key names and in the leases sorted set."""
    if _PLAIN_JOB_ID.fullmatch(job_id):
        return job_id
    return _HASHED_JOB_MARK + encode_id(job_id)


@dataclass(frozen=True, slots=True)
class UserKeys:
    """The keys of one user; every one of them carries the tag ``{u:<token>}``."""

    token: str
    budget: str
    leases: str
    rpm: str
    tpm: str
    spend_prefix: str
    job_prefix: str
    outcome_prefix: str

    @property
    def tag(self) -> str:
        return "{u:" + self.token + "}"

    def spend(self, period_id: str) -> str:
        return self.spend_prefix + period_id

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_token(job_id)

    def outcome(self, job_id: str) -> str:
        return self.outcome_prefix + job_token(job_id)


@lru_cache(maxsize=4096)
def user_keys(user_id: str) -> UserKeys:
    """All key names of ``user_id`` (cached: the digest is on every ledger call)."""
    token = encode_id(user_id)
    base = f"{PREFIX}:{{u:{token}}}:"
    return UserKeys(
        token=token,
        budget=base + "budget",
        leases=base + "leases",
        rpm=base + "rpm",
        tpm=base + "tpm",
        spend_prefix=base + "spend:",
        job_prefix=base + "job:",
        outcome_prefix=base + "outcome:",
    )
