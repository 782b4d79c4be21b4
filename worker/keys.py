"""Every Redis key name the ledger uses, and nothing else.

An id (user, team, organisation, model) is never spliced raw into a key: it is
replaced by the hex of its 128-bit BLAKE2b digest, so ids holding ``:``, ``{``,
newlines or 10 KB of text all become 32 safe characters.

Keys live in *slots*, one hash tag each, so on Redis Cluster every key one script
touches is in one slot. A user outside any organisation has a slot of its own,
``{u:U}``, whose prefix is also the user's scope prefix (the layout before scopes
existed). An organisation ``O`` has the slot ``{o:O}`` holding every scope below it:
the org (``bw:{o:O}:org:``), its teams (``bw:{o:O}:t:T:``) and users
(``bw:{o:O}:u:U:``); a user's limit on a model is ``<user prefix>m:M:``. The
directory ``{bw:dir}`` (which org a user or team belongs to) and the indexes
(``{bw:users}``, ``{bw:teams}``, ``{bw:orgs}``) have slots of their own and are never
touched by a slot script; nor is the outbox index ``{bw:outbox}`` (slots whose outbox
may hold threshold events, see ``worker/ledger/outbox.py``). A team's members and an
organisation's direct members are indexed in the organisation's slot (``<team or org
prefix>members``), by the scripts that change membership.

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
TEAMS_INDEX = "{bw:teams}"
ORGS_INDEX = "{bw:orgs}"
DIRECTORY = "{bw:dir}"
OUTBOX_INDEX = "{bw:outbox}"
OUTBOX_SWEEP = "bw:{bw:outbox}:sweep"  # bw:* like every key the worker ACL grants

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


@dataclass(frozen=True, slots=True)
class Slot:
    """One hash tag and the keys every script of it starts from."""

    tag: str
    """``u:<token>`` (a user of its own) or ``o:<token>`` (an organisation)."""

    @property
    def prefix(self) -> str:
        return f"{PREFIX}:{{{self.tag}}}:"

    @property
    def leases(self) -> str:
        return self.prefix + "leases"

    @property
    def outbox(self) -> str:
        """The slot's stream of decided threshold events not yet published (common.lua
        builds the same name: SLOT..'outbox')."""
        return self.prefix + "outbox"

    @property
    def is_org(self) -> bool:
        return self.tag.startswith("o:")

    def job(self, job_id: str) -> str:
        return self.prefix + "job:" + job_token(job_id)

    def outcome(self, job_id: str) -> str:
        return self.prefix + "outcome:" + job_token(job_id)

    def user(self, user_id: str) -> str:
        """The user's scope prefix in this slot."""
        if self.is_org:
            return f"{self.prefix}u:{encode_id(user_id)}:"
        return self.prefix

    def team(self, team_id: str) -> str:
        return f"{self.prefix}t:{encode_id(team_id)}:"

    @property
    def org(self) -> str:
        return self.prefix + "org:"


def own_slot(user_id: str) -> Slot:
    """The slot of a user outside any organisation."""
    return Slot("u:" + encode_id(user_id))


def org_slot(org_token: str) -> Slot:
    """The slot of the organisation whose encoded id is ``org_token``."""
    return Slot("o:" + org_token)


def model_scope(user_prefix: str, model: str) -> str:
    """The prefix of a user's limit on ``model``."""
    return f"{user_prefix}m:{encode_id(model)}:"


def members(scope_prefix: str) -> str:
    """The membership index of a team (its members) or an organisation (its users in no
    team): encoded user id -> raw user id, in the organisation's slot. The scripts build
    the same name from the slot prefix (common.lua, ``members_key``)."""
    return scope_prefix + "members"


def admin_idempotency(digest: str) -> str:
    """Where the admin API keeps the first answer to one ``Idempotency-Key``:
    ``digest`` is the hex hash of the key and the request's method and path, so a key
    of any length or alphabet is one safe name. A slot of its own: no script reads it."""
    return f"{PREFIX}:{{admin:idem:{digest}}}"


PARK_SLOT = "{bw:park}"
PARK_DUE = f"{PREFIX}:{PARK_SLOT}:due"
"""Parked jobs (``on_budget_exceeded: wait``): member -> when to check it next (ms),
or, while a worker holds its claim, when that claim lapses. A slot of its own: the
park scripts touch only it, never a user's keys."""


def park_member(user_id: str, job_id: str) -> str:
    """A parked job's member in :data:`PARK_DUE`: the encoded user id and the job token
    (job ids are unique per user in the ledger, so both make the key)."""
    return f"{encode_id(user_id)}:{job_token(job_id)}"


def park_entry(member: str) -> str:
    """The hash of one parked job: its bytes, when its wait ends, its last refusal."""
    return f"{PREFIX}:{PARK_SLOT}:job:{member}"
