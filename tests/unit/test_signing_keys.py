"""The DKIM keys of the email channel (sender/signing_keys.py) on a real Redis: the active keys
of the verified domain covering the From domain, cached, opened across a secret-key rotation,
and none for an unverified domain or another account."""

from __future__ import annotations

import time
from typing import Any

from sender.signing_keys import SigningKeys
from suppression import dkim_keys
from suppression.domains import DomainStore, Publishing
from suppression.sealed import Sealer

K1, K2 = "first-secret-key-0123456789", "second-secret-key-0123456789"


async def _verified(store: DomainStore, account: str, domain: str) -> None:
    await store.add(account, domain)
    record = await store.get(account, domain)
    await store.record_verification(account, domain, {
        "at": int(time.time()), "dkim": [{"selector": k["selector"], "found": "match"}
                                         for k in record["keys"]],
        "dmarc": {"policy": "none"}})


def _key(domain: str, selector: str, pem: bytes) -> tuple[str, str, str]:
    return domain, selector, dkim_keys.public_record(pem)


async def test_the_covering_verified_domain_signs_and_is_cached(redis: Any) -> None:
    store = DomainStore(redis, Sealer([K1]), Publishing("outbox.example"))
    await _verified(store, "A", "shop.example")
    await store.add("A", "mail.shop.example")  # added, not verified: its parent signs
    now = [0.0]
    keys_for = SigningKeys(store, _key, ttl=60, clock=lambda: now[0])
    [(domain, selector, record)] = await keys_for("A", "mail.shop.example")
    shown = await store.show("A", "shop.example")
    assert (domain, selector) == ("shop.example", shown["selector"])
    assert record == shown["keys"][0]["value"]  # the published key's private half
    assert await keys_for("A", "mail.shop.example") and keys_for.loads == 1  # cached
    now[0] = 61
    await keys_for("A", "mail.shop.example")
    assert keys_for.loads == 2  # read again after the TTL
    assert await keys_for("B", "shop.example") == []  # another account: nothing
    assert await keys_for("A", "other.example") == []


async def test_keys_sealed_before_a_secret_key_rotation_still_sign(redis: Any) -> None:
    await _verified(DomainStore(redis, Sealer([K1]), Publishing("o.example")), "A",
                    "shop.example")
    rotated = DomainStore(redis, Sealer([K2, K1]), Publishing("o.example"))
    assert len(await SigningKeys(rotated, _key)("A", "shop.example")) == 1
    dropped = DomainStore(redis, Sealer([K2]), Publishing("o.example"))
    assert await SigningKeys(dropped, _key)("A", "shop.example") == []  # logged; unsigned


async def test_without_redis_the_last_keys_sign_and_without_any_the_job_is_deferred(
        redis: Any) -> None:
    import pytest
    from redis.exceptions import ConnectionError as RedisConnectionError

    from sender.channels.base import SendFailure

    store = DomainStore(redis, Sealer([K1]), Publishing("o.example"))
    await _verified(store, "A", "shop.example")
    now = [0.0]
    keys_for = SigningKeys(store, _key, ttl=60, clock=lambda: now[0])
    first = await keys_for("A", "shop.example")

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("connection refused")

    store.signing_keys = down  # type: ignore[method-assign]
    now[0] = 120  # expired: read again, which fails
    assert await keys_for("A", "shop.example") == first  # the last keys read
    with pytest.raises(SendFailure) as failed:
        await keys_for("A", "other.example")  # never read: deferred, not unsigned
    assert failed.value.outcome.kind == "transient"
