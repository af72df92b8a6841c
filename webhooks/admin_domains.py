"""The admin API's sending domains (``outbox domains`` over HTTP). Their rows are in
:data:`webhooks.admin.ROUTES` (reads: ``viewer``; changes: ``admin``), whose guard checks the
token, its role and the actor before a handler here runs; the actor of a change is the token's
name.

* ``GET /admin/api/accounts/{id}/domains``: the domains (``domains list --json``);
* ``POST /admin/api/accounts/{id}/domains`` ``{"domain", "ed25519"?}``: as
  ``domains add --json``;
* ``GET .../domains/{domain}``: as ``domains show --json``;
* ``POST .../{domain}/verify``: as ``domains verify --json`` (200, verified or not: see
  ``verified`` and ``missing``);
* ``POST .../{domain}/rotate``, ``.../retire`` ``{"selector"?}``: the domain as ``show`` after;
* ``POST .../{domain}/share`` and ``.../unshare`` ``{"reason"}``: the owner and shares;
* ``DELETE .../{domain}``: ``{"account", "domain", "removed"}``.

400 bad input (a bad domain name or account id, a field missing), 404 an unknown account or
domain. Private keys are never in an answer. Times are Unix seconds, as in the rest of the API.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from config import Settings
from suppression import ids
from suppression.domains import DomainStore, UnknownDomain
from suppression.roundtrip import Client
from suppression.store import AccountStore

log = logging.getLogger("outbox.admin")

DOMAINS = "/admin/api/accounts/{account}/domains"
MAX_TEXT = 1000


Method = Callable[[Any, web.Request], Awaitable[web.StreamResponse]]


def _answers(method: Method) -> Method:
    """An unknown domain is 404, bad input 400 (the admin guard maps the rest)."""
    @functools.wraps(method)
    async def answered(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await method(self, request)
        except UnknownDomain as exc:
            return _json({"error": str(exc)}, 404)
        except (_Refused, ids.InvalidId) as exc:
            return _json({"error": str(exc)}, 400)
    return answered


class DomainsApi:
    """Handlers of the sending-domain routes; ``actor(request)``: who makes a change (the
    token's name)."""

    def __init__(self, settings: Settings, redis: Client, accounts: AccountStore, *,
                 actor: Callable[[web.Request], str]) -> None:
        self._settings = settings
        self._store = DomainStore.from_settings(redis, settings)
        self._accounts = accounts
        self._actor = actor

    async def _account(self, request: web.Request) -> str:
        """The path's account: a valid id (400) of a known account (404)."""
        account = ids.parse_id(request.match_info["account"], "account")
        await self._accounts.require(account)
        return account

    @_answers
    async def listing(self, request: web.Request) -> web.StreamResponse:
        return _json(await self._store.domains(await self._account(request)))

    @_answers
    async def add(self, request: web.Request) -> web.StreamResponse:
        account, actor = await self._account(request), self._actor(request)
        body = await _body(request)
        domain = _text(body, "domain")
        ed25519 = body.get("ed25519", False)
        if not isinstance(ed25519, bool):
            raise _Refused("ed25519 must be true or false")
        shown = await self._store.add(account, domain, ed25519=ed25519, actor=actor)
        _log(request, "domain.add", actor, account, shown["domain"])
        return _json({"account": account, "domain": shown["domain"],
                      "selector": shown["selector"], "records": shown["records"]})

    @_answers
    async def show(self, request: web.Request) -> web.StreamResponse:
        account = await self._account(request)
        return _json(await self._store.show(account, request.match_info["domain"]))

    @_answers
    async def verify(self, request: web.Request) -> web.StreamResponse:
        from sender.domain_check import check
        from sender.resolver import make_resolver

        account, actor = await self._account(request), self._actor(request)
        record = await self._store.get(account, request.match_info["domain"])
        findings = await check(make_resolver(self._settings.dns_nameservers), record,
                               self._store.publishing)
        shown = await self._store.record_verification(account, record["domain"], findings,
                                                      actor=actor)
        _log(request, "domain.verify", actor, account, shown["domain"],
             verified=findings["verified"])
        return _json({"account": account, "domain": shown["domain"], **findings,
                      "selector": shown["selector"]})

    @_answers
    async def change(self, request: web.Request) -> web.StreamResponse:
        account, actor = await self._account(request), self._actor(request)
        domain, action = request.match_info["domain"], request.match_info["action"]
        if action == "rotate":
            shown = await self._store.rotate(account, domain, actor=actor)
        else:
            selector = (await _body(request)).get("selector")
            if selector is not None and not isinstance(selector, str):
                raise _Refused("selector must be a string")
            shown = await self._store.retire(account, domain, selector=selector, actor=actor)
        _log(request, f"domain.{action}", actor, account, shown["domain"])
        return _json(shown)

    @_answers
    async def share(self, request: web.Request) -> web.StreamResponse:
        account, actor = await self._account(request), self._actor(request)
        action = request.match_info["action"]
        reason = _text(await _body(request), "reason")
        method = self._store.share if action == "share" else self._store.unshare
        result = await method(account, request.match_info["domain"], actor=actor, reason=reason)
        _log(request, f"domain.{action}", actor, account, result["domain"], reason=reason)
        return _json({"account": account, **result})

    @_answers
    async def remove(self, request: web.Request) -> web.StreamResponse:
        account, actor = await self._account(request), self._actor(request)
        gone = await self._store.remove(account, request.match_info["domain"], actor=actor)
        _log(request, "domain.remove", actor, account, gone["domain"])
        return _json({"account": account, "domain": gone["domain"], "removed": True})


class _Refused(Exception):
    """Bad input: 400 with the message."""


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _Refused("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Refused("the body must be a JSON object")
    return body


def _text(data: Any, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise _Refused(f"{name} is required (a string of up to {MAX_TEXT} characters)")
    return value.strip()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda d: json.dumps(d, ensure_ascii=False),
                             headers={"Cache-Control": "no-store",
                                      "X-Content-Type-Options": "nosniff"})


def _log(request: web.Request, action: str, actor: str, account: str, domain: str,
         **fields: Any) -> None:
    log.info("admin %s by %s", action, actor, extra={
        "action": action, "actor": actor, "account_id": account, "domain": domain,
        "remote": request.remote, **fields})
