"""Sending domains per account: DKIM keys, the records to publish, what verification found,
and who may send as a domain.

Async, Redis injected; the CLI (``outbox domains``), the admin API and ``outbox run --dev`` use
it. Keys (:mod:`suppression.keys`): the account's records (``outbox:{acct:A}:domains``, one JSON
record per domain), what the pre-send script reads (``outbox:{acct:A}:senders``: a verified
domain → ``1`` with a DMARC record, ``0`` without), and the global owner of a domain
(``outbox:domain:<domain>``).

A domain's keys come in generations (one RSA key, and an Ed25519 key when asked for, each under
its own selector). States: ``active`` (signs), ``pending`` (made by :meth:`DomainStore.rotate`,
becomes ``active`` when a verification finds it published), ``retiring`` (the generation before;
still published-valid until :meth:`DomainStore.retire`). Private keys are sealed
(:mod:`suppression.sealed`) for their place (``account/domain/selector``) and never leave this
module except through :meth:`DomainStore.signing_keys`, for the signer.

Ownership: the first account whose verification of a domain succeeds owns it; every other
account is refused that domain (at ``add`` and at verification) unless support shares it with
that account (:meth:`DomainStore.share`, audited in the global and the account's audit streams).

Exceptions are :mod:`suppression.entries`' ``StoreError`` (``BadEntry`` for bad input,
``UnknownDomain`` when the account has no such domain).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from suppression import dkim_keys, keys
from suppression.address import BadAddress, email_domain
from suppression.entries import BadEntry, StoreError
from suppression.replies import decode, text
from suppression.roundtrip import Client
from suppression.sealed import Sealer
from suppression.store import Audit

#: the return-path subdomain published (as a CNAME to OUTBOX_BOUNCE_DOMAIN) so SPF aligns too
RETURN_PATH_LABEL = "bounces"
#: the DMARC record suggested when the domain has none (start at p=none, then tighten)
DMARC_SUGGESTION = "v=DMARC1; p=none"
ACTIVE, PENDING, RETIRING = "active", "pending", "retiring"


class UnknownDomain(StoreError):
    """The account has no such sending domain."""


def canonical_domain(domain: str) -> str:
    """A sending domain as IDNA A-labels, lower case, with at least two labels; BadEntry
    otherwise."""
    try:
        name = email_domain(domain.strip().rstrip("."))
    except BadAddress as exc:
        raise BadEntry(str(exc)) from None
    if "." not in name or any(not label for label in name.split(".")):
        raise BadEntry(f"{domain!r} is not a domain name (e.g. example.com)")
    return name


def domain_candidates(domain: str) -> list[str]:
    """The domain and each parent with at least two labels, most specific first: the
    domains whose verification covers a sender on ``domain``."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


@dataclass(frozen=True, slots=True)
class Publishing:
    """What the records to publish depend on: the SPF include and the bounce domain."""

    spf_include: str
    bounce_domain: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Publishing:
        """The bounce domain when one is set (its SPF lists the relay), else the
        platform's message-id domain."""
        return cls(settings.bounce_domain or settings.message_id_domain, settings.bounce_domain)


def dkim_name(selector: str, domain: str) -> str:
    """Where a selector's key is published."""
    return f"{selector}._domainkey.{domain}"


def return_path_name(domain: str) -> str:
    """The return-path subdomain of a sending domain."""
    return f"{RETURN_PATH_LABEL}.{domain}"


def spf_value(publishing: Publishing) -> str:
    """The SPF record suggested for a domain that has none (or the include to add)."""
    return f"v=spf1 include:{publishing.spf_include} ~all"


def records_to_publish(record: Mapping[str, Any], publishing: Publishing
                       ) -> list[dict[str, str]]:
    """Every DNS record the customer publishes for ``record``: the DKIM TXT of each key not
    yet retired, the SPF hint, the DMARC suggestion and, with a bounce domain, the
    return-path CNAME. ``[{"name", "type", "value"}]``."""
    domain = record["domain"]
    out = [{"name": dkim_name(k["selector"], domain), "type": "TXT",
            "value": dkim_keys.record_for(k["algorithm"], k["public"])}
           for k in record["keys"] if k["state"] in (ACTIVE, PENDING)]
    out.append({"name": domain, "type": "TXT", "value": spf_value(publishing)})
    out.append({"name": f"_dmarc.{domain}", "type": "TXT", "value": DMARC_SUGGESTION})
    if publishing.bounce_domain:
        out.append({"name": return_path_name(domain), "type": "CNAME",
                    "value": publishing.bounce_domain})
    return out


def public_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the CLI and the API show it: every key's selector, algorithm, state and
    public record, never its sealed private key."""
    shown = {k: v for k, v in record.items() if k != "keys"}
    shown["keys"] = [{"selector": k["selector"], "algorithm": k["algorithm"],
                      "state": k["state"], "created_at": k["created_at"],
                      "name": dkim_name(k["selector"], record["domain"]),
                      "value": dkim_keys.record_for(k["algorithm"], k["public"])}
                     for k in record["keys"]]
    shown["selector"] = current_selector(record)
    return shown


def current_selector(record: Mapping[str, Any]) -> str:
    """The selector of the active RSA key (the one ``add --json`` names)."""
    active = [k for k in record["keys"] if k["state"] == ACTIVE]
    rsa = [k for k in active if k["algorithm"] == dkim_keys.RSA] or active
    return str(rsa[0]["selector"]) if rsa else ""


def new_selectors(now: float, algorithms: list[str]) -> list[tuple[str, str]]:
    """``(selector, algorithm)`` of a new generation: ``ob-<yyyymmdd>-<4 hex>``, ``-ed`` for
    the Ed25519 key."""
    stem = f"ob-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(2)}"
    return [(stem + ("-ed" if a == dkim_keys.ED25519 else ""), a) for a in algorithms]


@dataclass(frozen=True, slots=True)
class SendingDomain:
    """What the worker needs of one of an account's sending domains (:meth:`DomainStore.
    sending_domain`): whether it is verified, the active keys' ``(selector, algorithm,
    private key PEM)`` and the return-path subdomain its bounces may come back to."""

    verified: bool
    keys: list[tuple[str, str, bytes]] = field(default_factory=list)
    return_path: str | None = None


def verified_return_path(record: Mapping[str, Any], bounce_domain: str | None) -> str | None:
    """The return-path subdomain (``bounces.<domain>``) of a domain record when the domain
    is verified and its last verification found that name's CNAME pointing at
    ``bounce_domain`` (the current ``OUTBOX_BOUNCE_DOMAIN``; none set: None). The VERP
    envelope sender of the domain's mail is then ``bounce+...@`` it, so SPF aligns with the
    From domain, and the bounce listener accepts reports there for this account only."""
    if not (bounce_domain and record.get("verified") and record.get("return_path")):
        return None
    found = (record.get("verification") or {}).get("return_path") or {}
    target = str(found.get("target") or "").lower().rstrip(".")
    if found.get("found") != "ok" or target != bounce_domain.lower().rstrip("."):
        return None
    return str(record["return_path"])


async def is_return_path_of(redis: Client, account_id: str, name: str) -> bool:
    """Whether ``name`` is the return-path subdomain (``bounces.<domain>``) of a domain
    verified for ``account_id``, as its last verification found it: one HGET of that
    domain's record. Another account's return path, or an unverified one: False."""
    label, _, domain = name.lower().rstrip(".").partition(".")
    if label != RETURN_PATH_LABEL or "." not in domain:
        return False
    raw = await redis.hget(keys.domains(account_id), domain)
    if raw is None:
        return False
    record = json.loads(text(raw))
    return bool(record.get("verified")) and record.get("return_path") == f"{label}.{domain}"


#: how a key is made (``suppression.dkim_keys.generate``; the signer's module can replace it)
KeyMaker = Callable[[str], bytes]


class DomainStore:
    """Sending domains of accounts: add, verify (record what DNS said), rotate, retire,
    remove, share."""

    def __init__(self, redis: Client, sealer: Sealer, publishing: Publishing,
                 make_key: KeyMaker = dkim_keys.generate) -> None:
        self._redis = redis
        self._sealer = sealer
        self.publishing = publishing
        self._make_key = make_key
        self.audit = Audit(redis)

    @classmethod
    def from_settings(cls, redis: Client, settings: Any) -> DomainStore:
        """The store with the settings' secret keys and publishing details."""
        return cls(redis, Sealer(settings.secret_keys), Publishing.from_settings(settings))

    # --- reading -------------------------------------------------------------------------

    async def get(self, account_id: str, domain: str) -> dict[str, Any]:
        """The full record (sealed keys included: internal); UnknownDomain if none."""
        name = canonical_domain(domain)
        raw = await self._redis.hget(keys.domains(account_id), name)
        if raw is None:
            raise UnknownDomain(f"account {account_id!r} has no sending domain {name!r} "
                                f"(`outbox domains add {account_id} {name}`)")
        record: dict[str, Any] = json.loads(text(raw))
        return record

    async def show(self, account_id: str, domain: str) -> dict[str, Any]:
        """The public view with the records to publish."""
        record = await self.get(account_id, domain)
        return {**public_view(record), "records": records_to_publish(record, self.publishing)}

    async def domains(self, account_id: str) -> list[dict[str, Any]]:
        """The account's domains (public views), by name."""
        raw = decode(await self._redis.hgetall(keys.domains(account_id)))
        return [public_view(json.loads(raw[name])) for name in sorted(raw)]

    async def owner(self, domain: str) -> dict[str, Any]:
        """``{"owner": account or None, "shared_with": [accounts]}`` of a domain."""
        fields = decode(await self._redis.hgetall(keys.domain_owner(canonical_domain(domain))))
        return {"owner": fields.get("owner") or None,
                "shared_with": sorted(f[7:] for f in fields if f.startswith("shared:"))}

    async def signing_keys(self, account_id: str, domain: str) -> list[tuple[str, str, bytes]]:
        """``(selector, algorithm, private key PEM)`` of the active keys of a verified domain
        (for the DKIM signer only: never log or return them); ``[]`` when not verified."""
        return (await self.sending_domain(account_id, domain)).keys

    async def sending_domain(self, account_id: str, domain: str, *,
                             keys: bool = True) -> SendingDomain:
        """What the worker sends a verified domain's mail with, from one read of its record:
        its active keys (opened only with ``keys``; for the DKIM signer only: never log or
        return them) and its verified return path (:func:`verified_return_path`).
        UnknownDomain if the account has no such domain; Unsealable if a key cannot be
        opened."""
        record = await self.get(account_id, domain)
        if not record.get("verified"):
            return SendingDomain(verified=False)
        opened = [(k["selector"], k["algorithm"],
                   self._sealer.open(k["sealed"], _place(account_id, record["domain"],
                                                         k["selector"])))
                  for k in record["keys"] if keys and k["state"] == ACTIVE]
        return SendingDomain(verified=True, keys=opened, return_path=verified_return_path(
            record, self.publishing.bounce_domain))

    # --- changes ---------------------------------------------------------------------------

    async def add(self, account_id: str, domain: str, *, ed25519: bool = False,
                  actor: str = "support") -> dict[str, Any]:
        """A new sending domain with its first keys (RSA 2048; with ``ed25519`` an Ed25519
        key beside it); refused when the account has it already or another account owns it."""
        name = canonical_domain(domain)
        if await self._redis.hexists(keys.domains(account_id), name):
            raise BadEntry(f"account {account_id!r} has {name!r} already: `outbox domains show` "
                           f"lists its records, `rotate` makes new keys")
        await self._require_allowed(account_id, name)
        now = time.time()
        algorithms = [dkim_keys.RSA] + ([dkim_keys.ED25519] if ed25519 else [])
        made = self._generation(account_id, name, algorithms, ACTIVE, now)
        record = {"domain": name, "account_id": account_id, "created_at": int(now),
                  "keys": made,
                  "verified": False, "verified_at": None, "dmarc": False,
                  "return_path": None, "verification": None}
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.domains(account_id), name, _dump(record))
        pipe.sadd(keys.ACCOUNTS, account_id)
        await pipe.execute()
        await self.audit.record(account_id, actor=actor, action="domain.add", reason=name,
                                selectors=",".join(k["selector"] for k in made))
        return await self.show(account_id, name)

    async def rotate(self, account_id: str, domain: str, *, actor: str = "support"
                     ) -> dict[str, Any]:
        """New keys under new selectors (``pending``): they sign once a verification finds
        them published; until then, and until ``retire``, the old ones stay."""
        record = await self.get(account_id, domain)
        if any(k["state"] == PENDING for k in record["keys"]):
            raise BadEntry(f"a rotation of {record['domain']!r} is pending already: publish its "
                           f"records and run `outbox domains verify`")
        algorithms = sorted({k["algorithm"] for k in record["keys"] if k["state"] == ACTIVE},
                            key=dkim_keys.ALGORITHMS.index) or [dkim_keys.RSA]
        fresh = self._generation(account_id, record["domain"], algorithms, PENDING, time.time())
        record["keys"].extend(fresh)
        await self._save(account_id, record)
        await self.audit.record(account_id, actor=actor, action="domain.rotate",
                                reason=record["domain"],
                                selectors=",".join(k["selector"] for k in fresh))
        return await self.show(account_id, record["domain"])

    async def retire(self, account_id: str, domain: str, *, selector: str | None = None,
                     actor: str = "support") -> dict[str, Any]:
        """Drop the ``retiring`` keys (or the one ``selector``, which must not be active):
        their DNS records may then be deleted."""
        record = await self.get(account_id, domain)
        gone = [k for k in record["keys"] if (k["selector"] == selector if selector
                                              else k["state"] == RETIRING)]
        if not gone:
            raise BadEntry(f"no {'selector ' + repr(selector) if selector else 'retiring key'} "
                           f"for {record['domain']!r}" + ("" if selector else
                                                          " (rotate and verify first)"))
        if any(k["state"] == ACTIVE for k in gone):
            raise BadEntry(f"selector {selector!r} is the active key of {record['domain']!r}: "
                           f"rotate, verify the new one, then retire this one")
        record["keys"] = [k for k in record["keys"] if k not in gone]
        await self._save(account_id, record)
        await self.audit.record(account_id, actor=actor, action="domain.retire",
                                reason=record["domain"],
                                selectors=",".join(k["selector"] for k in gone))
        return await self.show(account_id, record["domain"])

    async def remove(self, account_id: str, domain: str, *, actor: str = "support"
                     ) -> dict[str, Any]:
        """Delete the domain from the account (its keys with it); the account stops being
        allowed to send as it at once; its ownership is released."""
        record = await self.get(account_id, domain)
        name = record["domain"]
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(keys.domains(account_id), name)
        pipe.hdel(keys.senders(account_id), name)
        await pipe.execute()
        owner = keys.domain_owner(name)
        if text(await self._redis.hget(owner, "owner")) == account_id:
            await self._redis.hdel(owner, "owner")
        await self.audit.record(account_id, actor=actor, action="domain.remove", reason=name)
        return public_view(record)

    async def record_verification(self, account_id: str, domain: str,
                                  findings: dict[str, Any], *, actor: str = "support",
                                  assume_dkim: bool = False) -> dict[str, Any]:
        """Store what a verification found (:func:`sender.domain_check.check`), promote a
        pending generation it found published, and allow (or stop) sending as the domain.

        Verified = every active DKIM key found published as made (``assume_dkim``: taken as
        found, for ``--dev``), and no other account owns the domain (unless it is shared with
        this one). A lookup that failed (timeout, server failure) on an active key leaves the
        domain as it was. ``findings`` gains ``verified``, ``missing`` and ``inconclusive``;
        returns the record's public view."""
        record = await self.get(account_id, domain)
        name = record["domain"]
        _promote(record, findings)
        _keep_return_path(record, findings)
        missing, inconclusive = _dkim_missing(record, findings, assume_dkim)
        findings["bulk_sender"] = bulk_sender(findings, dkim_ok=not missing)
        missing += list(findings.get("missing") or [])
        if not missing and not await self._claim(account_id, name):
            missing.append(f"{name} is verified for another account (support can share it: "
                           f"`outbox domains share {account_id} {name} --actor A --reason R`)")
        verified = not missing if not inconclusive else bool(record.get("verified"))
        findings.update(missing=missing, verified=not missing, inconclusive=inconclusive)
        found_dmarc = findings.get("dmarc") or {}
        dmarc = (bool(record.get("dmarc")) if found_dmarc.get("found") == "error"
                 else bool(found_dmarc.get("policy")))  # a failed lookup changes nothing
        record.update(verified=verified, dmarc=dmarc, verification=findings,
                      verified_at=findings["at"] if not missing else record.get("verified_at"),
                      return_path=_return_path(findings))
        await self._save(account_id, record, allow=("1" if dmarc else "0") if verified else "")
        await self.audit.record(account_id, actor=actor, action="domain.verify", reason=name,
                                after="verified" if not missing else "not verified",
                                missing="; ".join(missing)[:1000])
        return public_view(record)

    async def verify_without_dns(self, account_id: str, domain: str, *, why: str,
                                 actor: str = "dev") -> dict[str, Any]:
        """Mark a domain verified (as having a DMARC record) without looking at DNS: for
        ``outbox run --dev``'s example domains only. Adds the domain first if needed."""
        name = canonical_domain(domain)
        if not await self._redis.hexists(keys.domains(account_id), name):
            await self.add(account_id, name, actor=actor)
        findings: dict[str, Any] = {
            "at": int(time.time()), "dkim": [], "spf": None, "return_path": None,
            "dmarc": {"name": f"_dmarc.{name}", "record": None, "policy": "none",
                      "found": "assumed"}, "note": why}
        return await self.record_verification(account_id, name, findings, actor=actor,
                                              assume_dkim=True)

    async def share(self, account_id: str, domain: str, *, actor: str, reason: str
                    ) -> dict[str, Any]:
        """Let ``account_id`` verify (and send as) a domain another account owns; audited
        in the global audit stream and the account's."""
        name = canonical_domain(domain)
        _who(actor, reason)
        await self._redis.hset(keys.domain_owner(name), f"shared:{account_id}",
                               int(time.time()))
        for where in (None, account_id):
            await self.audit.record(where, actor=actor, action="domain.share", reason=reason,
                                    domain=name, account=account_id)
        return {"domain": name, **await self.owner(name)}

    async def unshare(self, account_id: str, domain: str, *, actor: str, reason: str
                      ) -> dict[str, Any]:
        """Take a share back: the account stops being allowed to send as the domain unless
        it owns it."""
        name = canonical_domain(domain)
        _who(actor, reason)
        owner = keys.domain_owner(name)
        await self._redis.hdel(owner, f"shared:{account_id}")
        if text(await self._redis.hget(owner, "owner")) != account_id:
            await self._redis.hdel(keys.senders(account_id), name)
        for where in (None, account_id):
            await self.audit.record(where, actor=actor, action="domain.unshare",
                                    reason=reason, domain=name, account=account_id)
        return {"domain": name, **await self.owner(name)}

    # --- internals -------------------------------------------------------------------------

    def _generation(self, account_id: str, domain: str, algorithms: list[str], state: str,
                    now: float) -> list[dict[str, Any]]:
        made = []
        for selector, algorithm in new_selectors(now, algorithms):
            pem = self._make_key(algorithm)
            made.append({"selector": selector, "algorithm": algorithm, "state": state,
                         "created_at": int(now), "public": dkim_keys.public_key(pem),
                         "sealed": self._sealer.seal(pem, _place(account_id, domain,
                                                                 selector))})
        return made

    async def _require_allowed(self, account_id: str, name: str) -> None:
        fields = decode(await self._redis.hgetall(keys.domain_owner(name)))
        owner = fields.get("owner")
        if owner and owner != account_id and f"shared:{account_id}" not in fields:
            raise BadEntry(f"{name!r} is verified for another account; support can share it "
                           f"with {account_id!r} (`outbox domains share {account_id} {name} "
                           f"--actor A --reason R`)")

    async def _claim(self, account_id: str, name: str) -> bool:
        """Own the domain if nobody does; True when the account owns it or it is shared
        with it."""
        key = keys.domain_owner(name)
        await self._redis.hsetnx(key, "owner", account_id)
        owner, shared = (text(v) for v in await self._redis.hmget(
            key, ["owner", f"shared:{account_id}"]))
        return owner == account_id or bool(shared)

    async def _save(self, account_id: str, record: dict[str, Any], *,
                    allow: str | None = None) -> None:
        """Write the record and, with ``allow``, what the pre-send script reads: ``"1"`` /
        ``"0"`` the account may send as the domain (with / without a DMARC record), ``""``
        it may not; None leaves that as it is."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.domains(account_id), record["domain"], _dump(record))
        if allow == "":
            pipe.hdel(keys.senders(account_id), record["domain"])
        elif allow is not None:
            pipe.hset(keys.senders(account_id), record["domain"], allow)
        await pipe.execute()


def _promote(record: dict[str, Any], findings: Mapping[str, Any]) -> None:
    """A pending generation found published becomes active; the active one retiring."""
    matched = {d["selector"] for d in findings.get("dkim") or [] if d.get("found") == "match"}
    pending = [k for k in record["keys"] if k["state"] == PENDING]
    if not pending or not all(k["selector"] in matched for k in pending):
        return
    for k in record["keys"]:
        if k["state"] == ACTIVE:
            k["state"] = RETIRING
    for k in pending:
        k["state"] = ACTIVE


#: marketing mail always carries RFC 8058's one-click List-Unsubscribe pair
#: (sender/compliance.py: email_compliance)
ONE_CLICK_UNSUBSCRIBE = True


def bulk_sender(findings: Mapping[str, Any], *, dkim_ok: bool) -> dict[str, Any]:
    """Gmail's and Yahoo's bulk-sender requirements (February 2024) for the domain: SPF or
    DKIM aligned with the From domain, a DMARC record (any policy, ``p=none`` included),
    one-click unsubscribe on marketing mail. ``met`` and, when not, what is ``missing``.

    DKIM aligns when the domain's active key is published (Outbox signs with ``d=`` the
    From domain); SPF aligns when the return path is the domain's own subdomain (the
    ``bounces.`` CNAME) or, with no bounce domain, when the domain's SPF includes ours."""
    spf = findings.get("spf") or {}
    rp = findings.get("return_path") or {}
    dmarc = findings.get("dmarc") or {}
    spf_aligned = rp.get("found") == "ok" or (
        rp.get("found") == "not_configured" and spf.get("found") == "ok")
    checks = {"dkim_aligned": dkim_ok, "spf_aligned": spf_aligned,
              "dmarc": bool(dmarc.get("policy")),
              "one_click_unsubscribe": ONE_CLICK_UNSUBSCRIBE}
    missing = []
    if not (dkim_ok or spf_aligned):
        missing.append("SPF or DKIM aligned with the From domain")
    if not checks["dmarc"]:
        missing.append("a DMARC record")
    return {"met": not missing, **checks, "missing": missing}


def _keep_return_path(record: Mapping[str, Any], findings: dict[str, Any]) -> None:
    """A failed lookup of the return path (``error``) changes nothing: the last finding
    stays (noted ``kept``), so mail keeps its aligned envelope and the listener its
    bounces."""
    found = findings.get("return_path") or {}
    before = (record.get("verification") or {}).get("return_path") or {}
    if found.get("found") == "error" and before.get("found") == "ok":
        findings["return_path"] = {**before, "kept": str(found.get("detail") or "error")}


def _return_path(findings: Mapping[str, Any]) -> str | None:
    """The return-path name a verification found pointing at the bounce domain."""
    found = findings.get("return_path") or {}
    return str(found["name"]) if found.get("found") == "ok" else None


def _dkim_missing(record: Mapping[str, Any], findings: Mapping[str, Any],
                  assume: bool) -> tuple[list[str], bool]:
    """What is missing for the active keys, and whether a lookup of one failed."""
    found = {d["selector"]: d for d in findings.get("dkim") or []}
    missing, inconclusive = [], False
    for k in record["keys"]:
        if k["state"] != ACTIVE or assume:
            continue
        seen = found.get(k["selector"], {}).get("found", "missing")
        inconclusive |= seen == "error"
        if seen != "match":
            detail = found.get(k["selector"], {}).get("detail") or seen.replace("_", " ")
            missing.append(f"DKIM TXT at {dkim_name(k['selector'], record['domain'])}: "
                           f"{detail}")
    return missing, inconclusive


def _place(account_id: str, domain: str, selector: str) -> str:
    """What a sealed key is bound to (its associated data)."""
    return f"dkim/{account_id}/{domain}/{selector}"


def _who(actor: str, reason: str) -> None:
    if not actor.strip() or not reason.strip():
        raise BadEntry("an actor and a reason are required")


def _dump(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
