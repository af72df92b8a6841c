"""The per-job Redis gate: one round trip before the send, one after.

``pre_send`` claims the job id (idempotency) and answers whether it may go out; ``post_send``
records what happened. Both are single Lua scripts over the account's hash-tagged keys, run
with EVALSHA (loaded once; reloaded after a Redis restart).

Claim rules (the job hash's ``st`` field):

* absent, or ``R`` (waiting for a retry)    → claim it (``S``) and send;
* ``S`` and the delivery is a redelivery    → the previous holder died mid-send: take over;
* ``S`` and not a redelivery                → a concurrent duplicate publish: do not send;
* a final status                            → already done: do not send again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from suppression import keys

log = logging.getLogger("outbox.gate")

_LUA_DIR = Path(__file__).parent / "lua"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of ``pre_send``: ``verdict`` is ``send``, ``done``, ``duplicate`` or ``expired``.

    For ``done``, ``status`` is the final status recorded earlier (its event may need resending).
    """

    verdict: str
    status: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    attempt: int = 0


class _Script:
    """A Lua script run by EVALSHA, loaded on first use and again after NOSCRIPT."""

    def __init__(self, redis: Redis, name: str) -> None:
        self._redis = redis
        self._source = (_LUA_DIR / f"{name}.lua").read_text()
        self._sha: str | None = None

    async def __call__(self, keys_: list[str], args: list[str | int]) -> list:
        if self._sha is None:
            self._sha = await self._redis.script_load(self._source)
        try:
            return await self._redis.evalsha(self._sha, len(keys_), *keys_, *args)
        except NoScriptError:
            self._sha = await self._redis.script_load(self._source)
            return await self._redis.evalsha(self._sha, len(keys_), *keys_, *args)


class Gate:
    """Pre- and post-send Redis checks for one worker process (stateless otherwise)."""

    def __init__(self, redis: Redis, *, idempotency_ttl: int) -> None:
        self._redis = redis
        self._ttl = idempotency_ttl
        self._pre = _Script(redis, "pre_send")
        self._post = _Script(redis, "post_send")

    async def pre_send(self, account_id: str, job_id: str, *, owner: str,
                       redelivered: bool, expired: bool, attempt: int) -> Decision:
        """Claim the job for ``owner`` unless done, duplicate or expired (one round trip)."""
        reply = await self._pre(
            [keys.job(account_id, job_id)],
            [owner, int(redelivered), int(expired), self._ttl, attempt],
        )
        verdict, status, provider, pm, att = (_text(x) for x in reply)
        return Decision(verdict, status or None, provider or None, pm or None, int(att or 0))

    async def post_send(self, account_id: str, job_id: str, *, status: str, attempt: int,
                        provider: str | None = None,
                        provider_message_id: str | None = None) -> None:
        """Record the job's new state: a final status, or ``R`` when a retry is scheduled."""
        await self._post(
            [keys.job(account_id, job_id)],
            [status, attempt, provider or "", provider_message_id or "", self._ttl],
        )

    async def job_state(self, account_id: str, job_id: str) -> dict[str, str]:
        """The job hash, decoded (support tools and tests)."""
        raw = await self._redis.hgetall(keys.job(account_id, job_id))
        return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
