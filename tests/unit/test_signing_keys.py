"""The DKIM keys of the email channel (sender/signing_keys.py) on a real Redis: the active keys
of the verified domain covering the From domain, cached, opened across a secret-key rotation,
and none for an unverified domain or another account; the verified return path from the same
read; and the bounce listener's check of a return path (suppression.domains.is_return_path_of)."""

from __future__ import annotations

import time
from typing import Any

from sender.signing_keys import SigningKeys
from suppression import dkim_keys
from suppression.domains import DomainStore, Publishing, UnknownDomain, is_return_path_of
from suppression.sealed import Sealer

K1, K2 = "first-secret-key-0123456789", "second-secret-key-0123456789"


async def _verified(store: DomainStore, account: str, domain: str,
                    return_path: dict[str, Any] | None = None) -> dict[str, Any]:
    """Verify ``domain`` as `outbox domains verify` records it (its keys found), with
    ``return_path`` as the return-path finding."""
    if not await redis_has(store, account, domain):
        await store.add(account, domain)
    record = await store.get(account, domain)
    return await store.record_verification(account, domain, {
        "at": int(time.time()), "dkim": [{"selector": k["selector"], "found": "match"}
                                         for k in record["keys"]],
        "dmarc": {"policy": "none"}, "return_path": return_path})


async def redis_has(store: DomainStore, account: str, domain: str) -> bool:
    try:
        await store.get(account, domain)
    except UnknownDomain:
        return False
    return True


BOUNCE = "bounces.outbox.example"


def found_cname(domain: str, target: str = BOUNCE) -> dict[str, Any]:
    """The return-path finding of a verification that found the CNAME (to ``target``)."""
    return {"name": f"bounces.{domain}", "target": target,
            "found": "ok" if target == BOUNCE else "wrong"}


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

    store.sending_domain = down  # type: ignore[method-assign]
    now[0] = 120  # expired: read again, which fails
    assert await keys_for("A", "shop.example") == first  # the last keys read
    with pytest.raises(SendFailure) as failed:
        await keys_for("A", "other.example")  # never read: deferred, not unsigned
    assert failed.value.outcome.kind == "transient"


async def test_the_return_path_comes_from_the_same_cached_read_as_the_keys(redis: Any) -> None:
    store = DomainStore(redis, Sealer([K1]), Publishing(BOUNCE, BOUNCE))
    await _verified(store, "A", "shop.example", found_cname("shop.example"))
    await _verified(store, "A", "plain.example", {"name": "bounces.plain.example",
                                                  "found": "missing", "target": None})
    lookup = SigningKeys(store, _key)
    assert await lookup.return_path("A", "mail.shop.example") == "bounces.shop.example"
    assert len(await lookup("A", "mail.shop.example")) == 1
    assert lookup.loads == 1  # keys and return path: one read of the store
    assert await lookup.return_path("A", "plain.example") is None  # CNAME not found
    assert await lookup.return_path("B", "shop.example") is None  # another account
    # OUTBOX_BOUNCE_DOMAIN changed since the CNAME was found: it points elsewhere now
    moved = DomainStore(redis, Sealer([K1]), Publishing("new.example", "new.example"))
    assert await SigningKeys(moved, _key).return_path("A", "shop.example") is None
    # no bounce domain: no VERP, no return path
    none = DomainStore(redis, Sealer([K1]), Publishing("o.example"))
    assert await SigningKeys(none, _key).return_path("A", "shop.example") is None


async def test_with_dkim_off_no_key_is_opened_and_the_return_path_still_found(
        redis: Any) -> None:
    await _verified(DomainStore(redis, Sealer([K1]), Publishing(BOUNCE, BOUNCE)), "A",
                    "shop.example", found_cname("shop.example"))
    unopenable = DomainStore(redis, Sealer([K2]), Publishing(BOUNCE, BOUNCE))  # K1 gone
    lookup = SigningKeys(unopenable, _key, keys=False)
    found = await lookup.lookup("A", "shop.example")
    assert (found.keys, found.return_path) == ([], "bounces.shop.example")


async def test_a_return_path_is_believed_only_for_its_own_verified_account(redis: Any) -> None:
    store = DomainStore(redis, Sealer([K1]), Publishing(BOUNCE, BOUNCE))
    await _verified(store, "A", "shop.example", found_cname("shop.example"))
    await _verified(store, "B", "other.example", found_cname("other.example", "evil.example"))
    await store.add("C", "unverified.example")
    assert await is_return_path_of(redis, "A", "bounces.shop.example")
    assert await is_return_path_of(redis, "A", "BOUNCES.Shop.Example.")
    assert not await is_return_path_of(redis, "B", "bounces.shop.example")  # A's
    assert not await is_return_path_of(redis, "B", "bounces.other.example")  # CNAME wrong
    assert not await is_return_path_of(redis, "C", "bounces.unverified.example")
    assert not await is_return_path_of(redis, "A", "mail.shop.example")  # not a return path
    assert not await is_return_path_of(redis, "A", "bounces.example")  # no domain under it


async def test_a_failed_return_path_lookup_keeps_what_the_last_one_found(redis: Any) -> None:
    store = DomainStore(redis, Sealer([K1]), Publishing(BOUNCE, BOUNCE))
    await _verified(store, "A", "shop.example", found_cname("shop.example"))
    shown = await _verified(store, "A", "shop.example", {
        "name": "bounces.shop.example", "found": "error", "detail": "timed out"})
    assert shown["return_path"] == "bounces.shop.example"
    assert shown["verification"]["return_path"]["kept"] == "timed out"
    assert shown["verification"]["bulk_sender"]["spf_aligned"] is True
    assert await SigningKeys(store, _key).return_path("A", "shop.example") == (
        "bounces.shop.example")
    gone = await _verified(store, "A", "shop.example", {
        "name": "bounces.shop.example", "found": "missing", "target": None})
    assert gone["return_path"] is None  # the CNAME deleted: no longer used
    assert not await is_return_path_of(redis, "A", "bounces.shop.example")


async def test_jobs_missing_the_cache_together_share_one_read_and_a_key_is_parsed_once(
        redis: Any) -> None:
    import asyncio

    store = DomainStore(redis, Sealer([K1]), Publishing("o.example"))
    await _verified(store, "A", "shop.example")
    now = [0.0]
    lookup = SigningKeys(store, _key, ttl=60, clock=lambda: now[0])
    got = await asyncio.gather(*(lookup("A", "shop.example") for _ in range(20)))
    assert lookup.loads == 1 and lookup.made == 1 and all(g == got[0] for g in got)
    now[0] = 61  # expired: read again, the same sealed key is not parsed again
    assert await lookup("A", "shop.example") == got[0]
    assert (lookup.loads, lookup.made) == (2, 1)
    await store.rotate("A", "shop.example")  # a new key, once verified, is parsed
    await _verified(store, "A", "shop.example")
    now[0] = 122
    [fresh] = await lookup("A", "shop.example")
    assert fresh != got[0][0] and (lookup.loads, lookup.made) == (3, 2)


async def test_a_cancelled_job_does_not_cancel_the_read_the_others_wait_for(
        redis: Any) -> None:
    import asyncio

    store = DomainStore(redis, Sealer([K1]), Publishing("o.example"))
    await _verified(store, "A", "shop.example")
    lookup = SigningKeys(store, _key)
    first = asyncio.ensure_future(lookup("A", "shop.example"))
    second = asyncio.ensure_future(lookup("A", "shop.example"))
    await asyncio.sleep(0)
    first.cancel()
    assert len(await second) == 1 and lookup.loads == 1


def test_a_sealed_key_loaded_without_the_rsa_check_signs_as_the_checked_one() -> None:
    """DkimKey.from_sealed_pem (the worker's, for keys it unsealed) gives a key whose
    signature dkimpy verifies against the published record, as from_pem's."""
    from sender.dkim import DkimKey, DkimSigner
    from tests.dkim_verifiers import dkimpy_results

    pem = dkim_keys.generate(dkim_keys.RSA)
    records = {"s1._domainkey.shop.example": dkim_keys.record_for(
        dkim_keys.RSA, dkim_keys.public_key(pem))}
    message = b"From: a@shop.example\r\nSubject: hi\r\n\r\nbody\r\n"
    for key in (DkimKey.from_sealed_pem("shop.example", "s1", pem),
                DkimKey.from_pem("shop.example", "s1", pem)):
        signed = DkimSigner().sign(message, [key])
        assert dkimpy_results(signed, records) == [True]
        assert dkimpy_results(signed.replace(b"body", b"bodY"), records) == [False]
