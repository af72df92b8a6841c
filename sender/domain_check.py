"""What DNS says about a sending domain (``outbox domains verify``), with dnspython's async
resolver (:mod:`sender.resolver`: ``OUTBOX_DNS_NAMESERVERS`` or the system's).

:func:`check` looks up, for one domain record of :mod:`suppression.domains`:

* each DKIM key, TXT at ``<selector>._domainkey.<domain>``: ``match``, ``wrong_key``,
  ``missing`` or ``error``;
* SPF, TXT ``v=spf1`` at ``<domain>``: ``ok`` (it includes ours), ``other``, ``missing``,
  ``invalid`` (several records) or ``error``;
* DMARC, TXT at ``_dmarc.<domain>``, else a parent's (the organisational domain's): ``ok``
  with its ``policy``, ``missing`` or ``error``;
* the return path, CNAME ``bounces.<domain>`` → ``OUTBOX_BOUNCE_DOMAIN``: ``ok``, ``wrong``,
  ``missing``, ``error``, or ``not_configured`` without a bounce domain.

``error`` is a lookup that failed (timeout, server failure): it says nothing about the record.
The store decides what is verified (:meth:`suppression.domains.DomainStore.record_verification`);
``advice`` lists what is not needed to verify but is to pass the mailbox providers' rules.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from suppression.dkim_keys import record_tags
from suppression.domains import (
    DMARC_SUGGESTION,
    Publishing,
    dkim_name,
    domain_candidates,
    return_path_name,
    spf_value,
)

_FAILED = (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.YXDOMAIN, OSError)
_ABSENT = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


class LookupFailed(Exception):
    """A lookup that got no answer either way (timeout, server failure)."""


async def txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT records at ``name`` (each one's strings joined); ``[]`` when there are none;
    LookupFailed when the lookup itself failed."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except _ABSENT:
        return []
    except _FAILED as exc:
        raise LookupFailed(f"{name} TXT: {type(exc).__name__}: {exc}") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


async def cname(resolver: dns.asyncresolver.Resolver, name: str) -> str | None:
    """The CNAME target of ``name`` (no trailing dot, lower case) or None."""
    try:
        answer = await resolver.resolve(name, "CNAME")
    except _ABSENT:
        return None
    except _FAILED as exc:
        raise LookupFailed(f"{name} CNAME: {type(exc).__name__}: {exc}") from None
    return str(answer[0].target.to_text(omit_final_dot=True)).lower()


async def check(resolver: dns.asyncresolver.Resolver, record: Mapping[str, Any],
                publishing: Publishing) -> dict[str, Any]:
    """Every finding about ``record``'s domain, with the time (epoch seconds)."""
    domain = record["domain"]
    findings: dict[str, Any] = {
        "at": int(time.time()),
        "dkim": [await check_dkim(resolver, domain, k) for k in record["keys"]],
        "spf": await check_spf(resolver, domain, publishing),
        "dmarc": await check_dmarc(resolver, domain),
        "return_path": await check_return_path(resolver, domain, publishing),
    }
    findings["advice"] = advice(findings, publishing, domain)
    return findings


async def check_dkim(resolver: dns.asyncresolver.Resolver, domain: str,
                     key: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the key of one selector is published as made."""
    name = dkim_name(key["selector"], domain)
    out = {"selector": key["selector"], "state": key["state"], "name": name}
    try:
        values = await txt(resolver, name)
    except LookupFailed as exc:
        return {**out, "found": "error", "detail": f"lookup failed ({exc})"}
    tags = [record_tags(v) for v in values]
    tags = [t for t in tags if "p" in t]
    if not tags:
        return {**out, "found": "missing", "detail": "no DKIM record published"}
    if any(t["p"] == key["public"] for t in tags):
        return {**out, "found": "match", "detail": "published as made"}
    revoked = any(not t["p"] for t in tags)
    return {**out, "found": "wrong_key",
            "detail": "the key is revoked (empty p=)" if revoked else
            "a different key is published (an old or mistyped record?)"}


async def check_spf(resolver: dns.asyncresolver.Resolver, domain: str,
                    publishing: Publishing) -> dict[str, Any]:
    """The domain's SPF record and whether it includes ours."""
    want = f"include:{publishing.spf_include}".lower()
    try:
        values = [v for v in await txt(resolver, domain)
                  if v.lower().startswith("v=spf1")]
    except LookupFailed as exc:
        return {"name": domain, "record": None, "includes": False, "found": "error",
                "detail": str(exc)}
    if not values:
        return {"name": domain, "record": None, "includes": False, "found": "missing"}
    if len(values) > 1:
        return {"name": domain, "record": values, "includes": False, "found": "invalid",
                "detail": f"{len(values)} SPF records: SPF allows one (RFC 7208 4.5)"}
    includes = want in values[0].lower().split()
    return {"name": domain, "record": values[0], "includes": includes,
            "found": "ok" if includes else "other"}


async def check_dmarc(resolver: dns.asyncresolver.Resolver, domain: str) -> dict[str, Any]:
    """The DMARC record that applies to the domain: its own, else its nearest parent's
    (the organisational domain's; its ``sp=`` policy for a subdomain)."""
    for parent in domain_candidates(domain):
        name = f"_dmarc.{parent}"
        try:
            values = [v for v in await txt(resolver, name)
                      if v.replace(" ", "").upper().startswith("V=DMARC1")]
        except LookupFailed as exc:
            return {"name": name, "record": None, "policy": None, "found": "error",
                    "detail": str(exc)}
        if values:
            tags = record_tags(values[0])
            policy = tags.get("sp") if parent != domain and tags.get("sp") else tags.get("p")
            return {"name": name, "record": values[0], "policy": (policy or "").lower() or None,
                    "found": "ok" if policy else "invalid"}
    return {"name": f"_dmarc.{domain}", "record": None, "policy": None, "found": "missing"}


async def check_return_path(resolver: dns.asyncresolver.Resolver, domain: str,
                            publishing: Publishing) -> dict[str, Any]:
    """The return-path subdomain's CNAME to the bounce domain (when one is configured)."""
    name = return_path_name(domain)
    if not publishing.bounce_domain:
        return {"name": name, "found": "not_configured"}
    want = publishing.bounce_domain.lower().rstrip(".")
    try:
        target = await cname(resolver, name)
    except LookupFailed as exc:
        return {"name": name, "found": "error", "detail": str(exc)}
    if target is None:
        return {"name": name, "found": "missing", "target": None}
    return {"name": name, "target": target, "found": "ok" if target == want else "wrong"}


def advice(findings: Mapping[str, Any], publishing: Publishing, domain: str) -> list[str]:
    """What to publish to pass the bulk-sender rules (not needed to verify)."""
    out = []
    spf, dmarc, rp = findings["spf"], findings["dmarc"], findings["return_path"]
    if spf["found"] == "missing":
        out.append(f"SPF: publish TXT {domain} \"{spf_value(publishing)}\"")
    elif spf["found"] in ("other", "invalid"):
        out.append(f"SPF: add include:{publishing.spf_include} to the one SPF record of "
                   f"{domain}" + (f" ({spf['detail']})" if spf.get("detail") else ""))
    if dmarc["found"] != "ok":
        out.append(f"DMARC: publish TXT _dmarc.{domain} \"{DMARC_SUGGESTION}\" "
                   f"(marketing mail from a domain without one is refused)")
    if rp["found"] in ("missing", "wrong"):
        out.append(f"return path: publish CNAME {rp['name']} {publishing.bounce_domain}")
    for d in findings["dkim"]:
        if d["found"] == "error" or (d["found"] != "match" and d["state"] == "pending"):
            out.append(f"DKIM {d['selector']}: {d['detail']} at {d['name']}")
    return out
