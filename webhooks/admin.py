"""The support/admin API (``/admin/...``) and its page: accounts, blocks, suppression, consent,
audit. The data operations are :mod:`suppression.store`'s, the same the CLI uses.

JSON in and out. Every API request needs ``Authorization: Bearer <token>``, compared in
constant time with each of ``OUTBOX_ADMIN_TOKENS`` (:mod:`config.roles`: each token has a name
and a role). What each route needs is declared in one table, :data:`ROUTES`: the least role
that may call it, and what personal data it reads; the routes are made from that table only.
Answers other than 200::

    400  bad input: invalid JSON, a missing or malformed field (named), a bad address, an
         account or job id that breaks :mod:`suppression.ids`' rule (in the path, the query
         or the body: "account must be ...")
    401  no token, or a wrong one (with ``WWW-Authenticate: Bearer``)
    403  OUTBOX_ADMIN_TOKENS is not set: the admin API and page are off; or the token's role
         does not allow the route (logged); or an ``actor`` that is not the token's name
    404  unknown account (every route that names one, reads included; only PATCH
         /admin/accounts/ID makes one), or no such suppression entry
    409  an action that does not apply to the account's state (unblock an active account)

A refused request changes nothing. The actor of every change is the token's name: an
``actor`` in the body or the query may only repeat it. Changes are audited by the stores (with
that actor and the reason given) and logged here; every answered read of personal data (a
recipient's history, a job's timeline, an address's suppression, a recipient's consent) is
audited too (action ``read``: who, what, which address, job or account). Tokens are never
logged.
``GET /admin/`` is a self-contained page (no external assets; its source is
``webhooks/static/admin.*``, put together once at import) over the same API; it holds no data
of its own, so it is served without a token (a browser cannot send one on navigation).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from importlib import resources
from operator import attrgetter
from string import Template
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from config import Settings
from config.reputation import check_override
from config.roles import ROLES, AdminToken, allows
from sender import deadletters
from sender.account_events import publish_account_event
from sender.bus import Bus, PublishFailed
from sender.channels.registry import described as described_channels
from sender.deadletters import ACTIONS as DEAD_ACTIONS
from sender.held import ACTIONS as HELD_ACTIONS
from sender.held import HeldJobs
from sender.metrics import Metrics
from sender.recipient_events import Change as RecipientChange
from sender.recipient_events import RecipientEvents
from suppression import channels, entries, ids, keys
from suppression.address import BadAddress
from suppression.destinations import DestinationStore, Params, listing
from suppression.entries import BadEntry, StoreError
from suppression.held import CATEGORIES, HeldStore
from suppression.history import MAX_HISTORY, job_story, recipient_history
from suppression.replies import decode, text
from suppression.reputation import OVERRIDES, STATES, Policy
from suppression.roundtrip import Client
from suppression.schedule import UNKNOWN, Schedule
from suppression.store import (
    SENDER_FIELDS,
    AccountStore,
    Change,
    ConsentStore,
    SuppressionStore,
    UnknownAccount,
)
from webhooks.admin_domains import DOMAINS, DomainsApi

log = logging.getLogger("outbox.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_TEXT = 1000  # characters in a reason, actor, source...
MAX_AUDIT = 1000  # records in one audit answer (and suppression entries in one list)
_REALM = 'Bearer realm="outbox-admin"'
_NO_TOKENS = "the admin API is off: OUTBOX_ADMIN_TOKENS is not set"
_dumps = partial(json.dumps, ensure_ascii=False)
PRINCIPAL = web.RequestKey("admin_principal", AdminToken)  # whose token the request carries

VIEWER, SUPPORT, ADMIN = ROLES
PUBLIC = "public"  # no token: the page and its redirect (they hold no data)


@dataclass(frozen=True, slots=True)
class Route:
    """One row of :data:`ROUTES`: a route, the least role that may call it (one of
    :data:`config.roles.ROLES`, or :data:`PUBLIC`), and, for a read of personal data, what it
    reads (each answer is then audited)."""

    method: str
    path: str
    action: str  # its name: in whoami's "allowed", the logs and the 403s
    role: str
    handler: str  # the AdminApi method
    reads: str = ""


#: Every /admin route; AdminApi.routes() makes them from here and nowhere else.
ROUTES = (
    Route("GET", "/admin", "page.redirect", PUBLIC, "redirect"),
    Route("GET", "/admin/", "page", PUBLIC, "page"),
    Route("GET", "/admin/whoami", "whoami", VIEWER, "whoami"),
    Route("GET", "/admin/channels", "channels.list", VIEWER, "list_channels"),
    Route("GET", "/admin/accounts", "accounts.list", VIEWER, "list_accounts"),
    Route("GET", "/admin/accounts/{account}", "accounts.show", VIEWER, "show_account"),
    Route("GET", "/admin/accounts/{account}/suppressions", "accounts.evidence", VIEWER,
          "account_suppressions"),
    Route("PATCH", "/admin/accounts/{account}", "accounts.configure", ADMIN,
          "configure_account"),
    *(Route("POST", f"/admin/accounts/{{account}}/{{action:{a}}}", f"accounts.{a}", SUPPORT,
            "support_action") for a in ("unblock", "suspend", "unsuspend")),
    Route("GET", "/admin/accounts/{account}/held", "held.show", VIEWER, "show_held"),
    *(Route("POST", f"/admin/accounts/{{account}}/held/{{action:{a}}}", f"held.{a}", SUPPORT,
            "settle_held") for a in HELD_ACTIONS),
    Route("GET", "/admin/suppression/{address}", "suppression.check", VIEWER,
          "check_suppression", reads="an address's suppression"),
    Route("POST", "/admin/suppression", "suppression.add", SUPPORT, "add_suppression"),
    Route("DELETE", "/admin/suppression/{address}", "suppression.remove", SUPPORT,
          "remove_suppression"),
    Route("GET", "/admin/consent/{account}/{recipient}", "consent.show", VIEWER,
          "show_consent", reads="a recipient's consent"),
    Route("POST", "/admin/consent/{account}/{recipient}", "consent.set", SUPPORT,
          "set_consent"),
    Route("GET", "/admin/audit/{account}", "audit.read", VIEWER, "audit"),
    Route("GET", "/admin/jobs/{account}/{job}", "jobs.show", VIEWER, "show_job",
          reads="a job's timeline"),
    Route("POST", "/admin/jobs/{account}/{job}/cancel", "jobs.cancel", SUPPORT, "cancel_job"),
    Route("GET", "/admin/history/{address}", "history", VIEWER, "history",
          reads="a recipient's history"),
    Route("GET", "/admin/destinations", "destinations.list", VIEWER, "list_destinations"),
    Route("GET", "/admin/dead", "dead.list", SUPPORT, "dead_list", reads="dead letters"),
    *(Route("POST", f"/admin/dead/{a}", f"dead.{a}", SUPPORT, "dead_settle")
      for a in DEAD_ACTIONS),
    # sending domains: webhooks/admin_domains.py
    Route("GET", DOMAINS, "domains.list", VIEWER, "_domains.listing"),
    Route("POST", DOMAINS, "domains.add", ADMIN, "_domains.add"),
    Route("GET", DOMAINS + "/{domain}", "domains.show", VIEWER, "_domains.show"),
    Route("DELETE", DOMAINS + "/{domain}", "domains.remove", ADMIN, "_domains.remove"),
    Route("POST", DOMAINS + "/{domain}/verify", "domains.verify", ADMIN, "_domains.verify"),
    *(Route("POST", f"{DOMAINS}/{{domain}}/{{action:{a}}}", f"domains.{a}", ADMIN,
            "_domains.change") for a in ("rotate", "retire")),
    *(Route("POST", f"{DOMAINS}/{{domain}}/{{action:{a}}}", f"domains.{a}", ADMIN,
            "_domains.share") for a in ("share", "unshare")),
)


class ApiError(Exception):
    """A request refused with ``status`` and a message for the caller."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class AdminApi:
    """The ``/admin`` routes. ``registry_or_metrics``: where support transitions are counted
    (``outbox_account_transitions_total``): the worker's :class:`sender.metrics.Metrics` when
    the process runs one (``outbox run`` shares the registry), a registry of the server's
    own otherwise, or None for no counting."""

    def __init__(self, settings: Settings, bus: Bus, redis: Client,
                 registry_or_metrics: CollectorRegistry | Metrics | None = None) -> None:
        self._tokens = [(_digest(t.token.get_secret_value()), t) for t in settings.admin_tokens]
        self._bus = bus
        self._redis = redis
        self._accounts = AccountStore(redis, Policy.from_settings(settings))
        self._suppression = SuppressionStore(redis)
        self._consent = ConsentStore(redis)
        self._recipients = RecipientEvents(redis, bus)
        self._held = HeldJobs(HeldStore.from_settings(redis, settings), bus,
                              self._accounts.audit)
        self._transitions = _transitions_counter(registry_or_metrics)
        self._idempotency_ttl = settings.idempotency_ttl
        self._schedule = Schedule(redis, idempotency_ttl=settings.idempotency_ttl,
                                  timeline_ttl=settings.timeline_ttl)
        # one look at outbox.dead at a time: each holds every message while it reads
        self._dead = asyncio.Lock()
        self._destinations = DestinationStore(redis, Params.from_settings(settings))
        self._domains = DomainsApi(settings, redis, self._accounts,
                                   actor=lambda request: request[PRINCIPAL].name)

    def routes(self) -> list[web.RouteDef]:
        """The rows of :data:`ROUTES`, each behind the check of its role; ``{name}`` segments
        match any text but ``/`` (see :func:`_any_segment`)."""
        def made(row: Route) -> web.RouteDef:
            handler = self._handler(row.handler)
            guarded = handler if row.role == PUBLIC else self._guard(row, handler)
            path = _any_segment(row.path)
            if row.method == "GET":  # and HEAD, as web.get makes it
                return web.get(path, guarded)
            return web.route(row.method, path, guarded)
        return [made(row) for row in ROUTES]

    def _handler(self, name: str) -> Handler:
        """The method ``name``; a dotted name (``_domains.add``: webhooks/admin_domains.py)
        is looked up when a request comes (the route table is read without an instance)."""
        if "." not in name:
            handler: Handler = getattr(self, name)
            return handler

        async def delegated(request: web.Request) -> web.StreamResponse:
            method: Handler = attrgetter(name)(self)
            return await method(request)
        return delegated

    # --- auth and errors ---------------------------------------------------------------

    def _guard(self, route: Route, handler: Handler) -> Handler:
        """Authenticate, check the role and the actor, run, audit a read of personal data,
        and turn refusals into JSON errors."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                request[PRINCIPAL] = who = self._authorise(request)
                self._permit(request, route, who)
                await _check_actor(request, who)
                response = await handler(request)
                if route.reads and response.status == 200:
                    await self._audit_read(request, route, who)
                return response
            except ApiError as exc:
                return _error(exc.status, exc.message, exc.headers)
            except UnknownAccount as exc:
                return _error(404, str(exc))
            except BadEntry as exc:
                return _error(400, str(exc))
            except StoreError as exc:  # refused by the account's state
                return _error(409, str(exc))
        return guarded

    def _authorise(self, request: web.Request) -> AdminToken:
        """The entry of the token the request carries (its name is logged, never the token)."""
        if not self._tokens:
            raise ApiError(403, _NO_TOKENS)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "an 'Authorization: Bearer <token>' header is required",
                           {"WWW-Authenticate": _REALM})
        digest = _digest(given.strip())
        # compare with every token, no early exit: the time says nothing about which matched
        matches = [hmac.compare_digest(digest, token) for token, _ in self._tokens]
        if not any(matches):
            log.warning("admin request with a bad token refused",
                        extra={"path": request.path, "remote": request.remote})
            raise ApiError(401, "the token is not valid",
                           {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'})
        return self._tokens[matches.index(True)][1]

    def _permit(self, request: web.Request, route: Route, who: AdminToken) -> None:
        """403 (logged) when the token's role is below the route's."""
        if allows(who.role, route.role):
            return
        log.warning("admin request refused: %s needs the %s role", route.action, route.role,
                    extra={"action": route.action, "actor": who.name, "role": who.role,
                           "needed": route.role, "method": request.method,
                           "path": request.path, "remote": request.remote})
        raise ApiError(403, f"{route.action} needs the {route.role} role; this token "
                            f"({who.name}) is {who.role}: nothing was changed")

    async def _audit_read(self, request: web.Request, route: Route, who: AdminToken) -> None:
        """One ``read`` audit record: who read what. In the account's stream when the request
        names a known account, else in the global one. Written before the answer leaves: a
        read whose record cannot be written is not answered."""
        m, query = request.match_info, request.query
        account = m.get("account") or query.get("account") or ""
        named = {k: v for k, v in (("address", m.get("address") or m.get("recipient")),
                                   ("job", m.get("job")), ("channel", query.get("channel")))
                 if v}
        stream = account if account and await self._accounts.exists(account) else None
        await self._accounts.audit.record(
            stream, actor=who.name, action="read", reason=route.reads, what=route.action,
            role=who.role, account=account, **named)

    # --- the page ----------------------------------------------------------------------

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        """``{"name", "role", "allowed"}``: the token's name and role, and the actions of
        :data:`ROUTES` it may call (the page shows only those)."""
        who = request[PRINCIPAL]
        return _json({"name": who.name, "role": who.role,
                      "allowed": [r.action for r in ROUTES
                                  if r.role != PUBLIC and allows(who.role, r.role)]})

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/admin/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The support page (no data in it: everything comes from the API with the token)."""
        if not self._tokens:
            return _error(403, _NO_TOKENS)
        return web.Response(text=PAGE, content_type="text/html", headers=PAGE_HEADERS)

    async def list_channels(self, request: web.Request) -> web.StreamResponse:
        """``{"channels": [...]}`` (:func:`sender.channels.registry.described`); with
        ``?address=A``, also ``"candidates"``: the channels whose addresses look like ``A``,
        the one a row that names none is read on first (the page's consent lookup)."""
        answer: dict[str, Any] = {"channels": described_channels()}
        address = _optional(request.query, "address")
        if address is not None:
            answer["candidates"] = list(channels.candidates(address))
        return _json(answer)

    async def list_destinations(self, request: web.Request) -> web.StreamResponse:
        """``[{destination, relay, state, rate, until, since, rule, reply}]``: the
        destinations slowed or paused by slow-down replies (``?all=1``: also those back to
        normal whose record is kept), as ``outbox destinations --json``."""
        records = await self._destinations.all()
        return _json(listing(records, time.time(), self._destinations.params,
                             everything=request.query.get("all") in ("1", "true")))

    # --- accounts ----------------------------------------------------------------------

    async def list_accounts(self, request: web.Request) -> web.StreamResponse:
        """``?state=blocked``: accounts and their states."""
        state = request.query.get("state") or None
        if state is not None and state not in STATES:
            raise ApiError(400, f"state must be one of {', '.join(STATES)}")
        rows = await self._accounts.list(state)
        holding = set(await self._held.store.accounts())
        for row in rows:  # held jobs: only accounts that may hold any are asked
            if row["account_id"] in holding:
                summary = await self._held.store.summary(row["account_id"], limit=0)
                row.update(held=summary["held"], held_oldest=summary["oldest"])
        return _json(rows)

    async def show_account(self, request: web.Request) -> web.StreamResponse:
        """The document of ``outbox accounts show ID --json``."""
        return _json(await self._accounts.show(_path_account(request)))

    async def account_suppressions(self, request: web.Request) -> web.StreamResponse:
        """``?limit=50``: the evidence behind an account's bounces and complaints, newest
        first: the global entries its messages taught (hard bounces, complaints, invalid
        numbers: their ``account`` field names it) and the account's own entries. The global
        ones are found by SCAN over every global entry: seconds on millions of them."""
        account, limit = await self._account_and_limit(request, default=50)
        found = [e async for e in self._suppression.entries(account_id=account)]
        found += [e async for e in _global_entries(self._redis, account)]
        return _json(heapq.nlargest(limit, found, key=_newest))

    async def configure_account(self, request: web.Request) -> web.StreamResponse:
        """Sender information, limits and overrides (names of ``accounts configure``)."""
        account = _path_account(request)
        body = await _json_body(request)
        actor = request[PRINCIPAL].name
        fields = {k: _setting(k, v) for k, v in body.items() if k != "actor"}
        if all(v is None for v in fields.values()):
            raise ApiError(400, "nothing to configure: give at least one setting")
        settings = await self._accounts.configure(account, actor=actor, **fields)
        _log(request, "configure", actor, account_id=account,
             settings=sorted(k for k, v in fields.items() if v is not None))
        return _json({"account_id": account, "settings": settings})

    async def support_action(self, request: web.Request) -> web.StreamResponse:
        """unblock, suspend or unsuspend: change and audit (one script), then announce;
        ``{"reason", "held": "release"|"discard", "category"}``: what becomes of the jobs
        held meanwhile (required while there are any: 409 otherwise, nothing changed)."""
        account, action = _path_account(request), request.match_info["action"]
        body = await _json_body(request)
        [reason], actor = _required(body, "reason"), request[PRINCIPAL].name
        held, category = _held_choice(body, needed=action != "suspend")
        await self._accounts.require(account)
        if action != "suspend" and held is None:
            await self._refuse_if_held(account, action)
        change = await self._accounts.support(account, action, actor=actor, reason=reason)
        _log(request, action, actor, account_id=account, reason=reason,
             from_state=change.from_state, to_state=change.to_state)
        if self._transitions is not None:
            self._transitions.labels(change.from_state, change.to_state).inc()
        published = await self._announce(change, action, actor, reason)
        answer: dict[str, Any] = {
            "account_id": account, "state": change.to_state, "from": change.from_state,
                  "audit_id": change.audit_id, "probation_until": change.probation_until,
                  "event_published": published}
        if held is not None:
            answer["held"] = await self._settle(request, account, held, actor, reason,
                                                category)
        return _json(answer)

    async def _refuse_if_held(self, account: str, action: str) -> None:
        """409 (nothing changed) while the account holds jobs and the request does not say
        what becomes of them."""
        summary = await self._held.store.summary(account, limit=0)
        if summary["held"]:
            raise ApiError(409, f"account {account} holds {summary['held']} jobs (oldest "
                                f"{summary['oldest']}): say what becomes of them with "
                                f"\"held\": \"release\" or \"discard\" (and \"category\" for "
                                f"one category); nothing was changed")

    async def _settle(self, request: web.Request, account: str, action: str, actor: str,
                      reason: str, category: str | None) -> dict[str, Any]:
        """Release or discard the held jobs; what was done, or (``error``) what failed."""
        try:
            settled = (await self._held.settle(account, action, actor=actor, reason=reason,
                                               category=category)).as_dict()
        except PublishFailed as exc:
            log.error("held jobs not all %sd: %s", action, exc, extra={"account_id": account})
            settled = {"account_id": account, "action": action, "category": category,
                       "remaining": await self._held.store.total(account), "error": str(exc)}
        _log(request, f"held.{action}", actor, account_id=account, reason=reason,
             category=category, jobs=settled.get("settled"))
        return settled

    async def _account_and_limit(self, request: web.Request, *, default: int
                                 ) -> tuple[str, int]:
        """The path's account (404 when it is unknown) and ``?limit=`` (``default``, at most
        :data:`MAX_AUDIT`; 400 when it is not a whole number in range)."""
        account = _path_account(request)
        limit = _int(request.query.get("limit"), "limit", default=default, high=MAX_AUDIT)
        await self._accounts.require(account)
        return account, limit

    async def show_held(self, request: web.Request) -> web.StreamResponse:
        """``?limit=100``: the document of ``outbox accounts held ID --json``."""
        account, limit = await self._account_and_limit(request, default=100)
        return _json(await self._held.store.summary(account, limit=limit))

    async def settle_held(self, request: web.Request) -> web.StreamResponse:
        """``{"reason", "category"}``: release or discard the account's held jobs (in any
        state: after an unblock that released one category, the rest)."""
        account, action = _path_account(request), request.match_info["action"]
        body = await _json_body(request)
        [reason], actor = _required(body, "reason"), request[PRINCIPAL].name
        category = _held_choice({**body, "held": action}, needed=True)[1]
        await self._accounts.require(account)
        settled = await self._settle(request, account, action, actor, reason, category)
        return _json(settled, status=503 if "error" in settled else 200)

    async def _known(self, account: str | None) -> str | None:
        """``account`` when it is None or known; UnknownAccount (404) otherwise."""
        if account is not None:
            await self._accounts.require(account)
        return account

    async def _announce(self, change: Change, action: str, actor: str, reason: str) -> bool:
        """Publish ``account.<state>``; the change stands (and says so) if the broker fails."""
        try:
            await publish_account_event(self._bus, change, action=action, actor=actor,
                                        reason=reason)
            return True
        except PublishFailed as exc:
            log.error("account event not published: %s", exc,
                      extra={"account_id": change.account_id, "audit_id": change.audit_id})
            return False

    # --- suppression -------------------------------------------------------------------

    async def check_suppression(self, request: web.Request) -> web.StreamResponse:
        """``?account=ID&channel=email``: like ``outbox suppression check --json``."""
        address = request.match_info["address"]
        account = await self._known(_optional_account(request.query))
        found = await self._suppression.check(
            address, account_id=account, channel=_optional(request.query, "channel"))
        return _json({"address": address, "suppressed": bool(found),
                      "entries": await self._with_origin(found)})

    async def _with_origin(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add ``learnt_from`` to global entries: the account whose message taught it (the
        entry's ``account`` field), so support can open that account and the job."""
        wanted = [e for e in found if e["scope"] == "global"]
        if not wanted:
            return found
        pipe = self._redis.pipeline(transaction=False)
        for e in wanted:
            pipe.hget(entries.key(e["channel"], e["address"], None), "account")
        for e, origin in zip(wanted, await pipe.execute(), strict=True):
            e["learnt_from"] = text(origin) or None
        return found

    async def add_suppression(self, request: web.Request) -> web.StreamResponse:
        """Add an entry: global for facts, per account for a person's choices."""
        body = await _json_body(request)
        account = _optional_account(body)
        address, channel, reason = _required(body, "address", "channel", "reason")
        actor = request[PRINCIPAL].name
        await self._known(account)
        entry = await self._suppression.add(
            address, channel=channel, reason=reason, account_id=account,
            expires=_seconds(body.get("expires")), actor=actor,
            source=_optional(body, "source") or f"admin:{actor}")
        _log(request, "suppression.add", actor, account_id=entry["account_id"],
             address=entry["address"], channel=channel, reason=reason)
        published = await self._announce_recipient(RecipientChange(
            entry["account_id"], entry["channel"], entry["address"], "suppressed", "admin"))
        return _json({**entry, "event_published": published})

    async def remove_suppression(self, request: web.Request) -> web.StreamResponse:
        """``?channel=..&account=..``, reason and actor in the body or the query; audited."""
        data = {**request.query, **await _json_body(request)}
        address = request.match_info["address"]
        account = _optional_account(data)
        channel, reason = _required(data, "channel", "reason")
        actor = request[PRINCIPAL].name
        await self._known(account)
        removed = await self._suppression.remove(address, channel=channel, account_id=account,
                                                 actor=actor, reason=reason)
        published = await self._announce_recipient(RecipientChange(
            account, channel, address, "unsuppressed", "admin", removed=bool(removed)))
        if not removed:
            scope = f"account {account}" if account else "the global list"
            raise ApiError(404, f"no {channel} entry for {address} in {scope}")
        _log(request, "suppression.remove", actor, account_id=account,
             address=removed[0]["address"], channel=channel, reason=reason)
        return _json({"address": address, "removed": removed, "event_published": published})

    async def _announce_recipient(self, change: RecipientChange) -> bool:
        """Publish the recipient event (``sender.recipient_events``); the change stands (its
        event pending, published by the next call) when the broker fails."""
        try:
            await self._recipients.announce(change)
            return True
        except PublishFailed as exc:
            log.error("recipient event not published (kept pending): %s", exc,
                      extra={"account_id": change.account_id, "change": change.change})
            return False

    # --- consent and audit -------------------------------------------------------------

    async def show_consent(self, request: web.Request) -> web.StreamResponse:
        """``?channel=email``: the consent record (status ``none`` when there is none)."""
        account = _path_account(request)
        [channel] = _required(request.query, "channel")
        await self._accounts.require(account)
        recipient = request.match_info["recipient"]
        return _json(await self._consent.get(account, recipient, channel=channel))

    async def set_consent(self, request: web.Request) -> web.StreamResponse:
        """``{"channel", "granted": true|false, "source", "evidence", "actor"}``."""
        account = _path_account(request)
        body = await _json_body(request)
        [channel], actor = _required(body, "channel"), request[PRINCIPAL].name
        granted = body.get("granted")
        if not isinstance(granted, bool):
            raise ApiError(400, "granted must be true or false")
        await self._accounts.require(account)  # consent nobody would read is refused
        record = await self._consent.set(
            account, request.match_info["recipient"], channel=channel, granted=granted,
            actor=actor, source=_optional(body, "source") or "",
            evidence=_optional(body, "evidence") or "")
        _log(request, "consent.grant" if granted else "consent.revoke", actor,
             account_id=account, address=record["recipient"], channel=channel)
        return _json(record)

    async def audit(self, request: web.Request) -> web.StreamResponse:
        """``?limit=50``: the account's audit records, newest first."""
        account, limit = await self._account_and_limit(request, default=50)
        return _json(await self._accounts.audit.read(account, limit=limit))


    # --- a job's story (suppression/history.py) ----------------------------------------

    async def show_job(self, request: web.Request) -> web.StreamResponse:
        """The document of ``outbox jobs show ACCOUNT ID --json``; 404 unknown."""
        account = _path_account(request)
        job = _id(request.match_info["job"], "job")
        story = await job_story(self._redis, account, job)
        if story is None:
            await self._accounts.require(account)
            raise ApiError(404, f"no record of job {job!r} of account {account!r} (unknown, "
                                f"or older than OUTBOX_IDEMPOTENCY_TTL)")
        return _json(story)

    async def cancel_job(self, request: web.Request) -> web.StreamResponse:
        """``outbox jobs cancel``: 200 ``{"cancelled": true, "outcome", "due", "message"}``
        when the job will not be sent (cancelled now, or before); 409 when it is too late
        (being sent, sent, ended otherwise); 404 unknown job or account. Body (optional):
        ``{"reason"}``, kept in the job's timeline with the token's name."""
        account = _path_account(request)
        job = _id(request.match_info["job"], "job")
        reason, actor = _optional(await _json_body(request), "reason"), request[PRINCIPAL].name
        result = await self._schedule.cancel(
            account, job, detail=(f"{actor}: {reason}" if reason else actor)[:500])
        said = result.message(account, job)
        if result.outcome == UNKNOWN:
            await self._accounts.require(account)
            raise ApiError(404, said)
        if not result.ok:
            raise ApiError(409, said)
        _log(request, "jobs.cancel", actor, account_id=account, job_id=job, reason=reason,
             outcome=result.outcome)
        return _json({"account_id": account, "id": job, "cancelled": True,
                      "outcome": result.outcome, "due": result.due, "message": said})

    # --- dead letters (sender/deadletters.py, as ``outbox dead``) ----------------------

    async def dead_list(self, request: web.Request) -> web.StreamResponse:
        """``?account=&reason=&since=``: the dead letters, by time of death; ``?id=``: that
        one (every copy with that id) with its routing key, headers and body, as ``outbox dead
        show`` prints it (``[]`` when it is not in outbox.dead)."""
        query = request.query
        if query.get("id"):
            async with self._dead:
                found = await deadletters.find(self._bus, query["id"])
            return _json([found] if found is not None else [])
        selected = _dead_filters(query, reason="reason")
        async with self._dead:
            rows = await deadletters.listing(self._bus, selected)
        return _json([d.row() for d in rows])

    async def dead_settle(self, request: web.Request) -> web.StreamResponse:
        """replay or purge: ``{"ids": [...], "account", "matching", "since", "reason"}`` (ids or
        a filter, and a reason, required); each message settled is audited under the token's
        name. 404 for an id not in outbox.dead, 409 for a replay of what has no lane: nothing
        settled either way."""
        action = request.path.rsplit("/", 1)[-1]
        body = await _json_body(request)
        selected = _dead_filters(body, reason="matching")
        [reason], actor = _required(body, "reason"), request[PRINCIPAL].name
        if not (selected.ids or selected.account_id or selected.reason or selected.since):
            raise ApiError(400, "name the dead letters (ids) or select them with account, "
                                "matching or since")
        try:
            async with self._dead:
                rows = await deadletters.settle(
                    self._bus, self._redis, action=action, selected=selected, actor=actor,
                    reason=reason, idempotency_ttl=self._idempotency_ttl)
        except deadletters.NotInQueue as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None
        _log(request, f"dead.{action}", actor, reason=reason, count=len(rows),
             messages=[r["id"] for r in rows])
        return _json(rows)

    async def history(self, request: web.Request) -> web.StreamResponse:
        """``?account=ID&channel=email&limit=20``: ``{"address", "jobs": [...]}``, newest
        first (every account's without ``account``); 404 for an unknown account."""
        address = request.match_info["address"]
        account = _optional_account(request.query)
        channel = _optional(request.query, "channel")
        limit = _int(request.query.get("limit"), "limit", default=20, high=MAX_HISTORY)
        if channel is not None and channel not in channels.names():
            raise ApiError(400, f"channel must be {channels.choices()}")
        try:
            rows = await recipient_history(self._redis, address, account_id=account,
                                           channel=channel, limit=limit)
        except BadAddress as exc:
            raise ApiError(400, f"{address!r}: {exc}") from None
        if not rows and account:
            await self._accounts.require(account)
        return _json({"address": address, "jobs": rows})


# --- helpers ---------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    """Tokens are compared as SHA-256 digests: equal lengths, so compare_digest is flat."""
    return hashlib.sha256(token.encode()).digest()


async def _global_entries(redis: Client, account: str) -> AsyncIterator[dict[str, Any]]:
    """Global suppression entries whose ``account`` evidence field is ``account`` (SCAN)."""
    async def fetch(batch: list[str]) -> list[dict[str, Any]]:
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.hgetall(key)
        found = [(k, decode(raw)) for k, raw in zip(batch, await pipe.execute(), strict=True)]
        return [{**entries.describe(k, f), "learnt_from": account} for k, f in found
                if f.get("account") == account]

    batch: list[str] = []
    async for key in redis.scan_iter(match=keys.GLOBAL_SUPPRESSIONS_PATTERN, count=1000):
        batch.append(text(key))
        if len(batch) >= 500:
            for e in await fetch(batch):
                yield e
            batch = []
    for e in await fetch(batch) if batch else []:
        yield e


def _newest(entry: Mapping[str, Any]) -> int:
    return int(entry.get("at") or 0)


def _transitions_counter(source: CollectorRegistry | Metrics | None) -> Any:
    if source is None:
        return None
    if isinstance(source, Metrics):
        return source.account_transitions
    return Counter("outbox_account_transitions_total", "Account state changes",
                   ["from", "to"], registry=source)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps,
                             headers={"Cache-Control": "no-store",
                                      "X-Content-Type-Options": "nosniff"})


def _error(status: int, message: str, headers: Mapping[str, str] | None = None
           ) -> web.Response:
    response = _json({"error": message}, status)
    response.headers.update(headers or {})
    return response


def _log(request: web.Request, action: str, actor: str, **fields: Any) -> None:
    """One line per change: who (actor: the token's name, and its role), what, from where."""
    log.info("admin %s by %s", action, actor, extra={
        "action": action, "actor": actor, "role": request[PRINCIPAL].role,
        "remote": request.remote, **fields})


async def _check_actor(request: web.Request, who: AdminToken) -> None:
    """An ``actor`` in the query or the JSON body may only be the token's name (403); absent
    or blank, the name is used. The body is read here as the handler reads it (aiohttp keeps
    it): invalid JSON is the same 400."""
    claims = [request.query.get("actor")]
    if request.method not in ("GET", "HEAD"):
        claims.append((await _json_body(request)).get("actor"))
    for claim in claims:
        given = _optional({"actor": claim}, "actor")
        if given is not None and given != who.name:
            raise ApiError(403, f"actor {given!r} is not this token's name ({who.name!r}): "
                                "changes are audited under the token's name; leave actor "
                                "out")


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (``{}`` when empty); 400 otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; a hostile depth
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


_PLAIN_SEGMENT = re.compile(r"\{(\w+)\}")


def _any_segment(path: str) -> str:
    """``{name}`` path segments matching any text but ``/`` (aiohttp's default also leaves
    out ``{`` and ``}``, and would answer its own 404 to ``/admin/accounts/a%7D``): what is in
    a segment is the handler's to check, so a malformed id is a 400 that names it."""
    return _PLAIN_SEGMENT.sub(r"{\1:[^/]+}", path)


def _id(value: Any, name: str) -> str:
    """An account or job id (:mod:`suppression.ids`, the rule of every entrance); 400 naming
    ``name`` and the rule otherwise."""
    try:
        return ids.parse_id(value, name)
    except ids.InvalidId as exc:
        raise ApiError(400, str(exc)) from None


def _dead_filters(given: Mapping[str, Any], *, reason: str) -> deadletters.Filters:
    """The selection of a dead-letter request: ``ids`` (a list of strings), ``account`` (an
    id), ``reason`` (list) or ``matching`` (replay, purge: text in the dead letter's reason),
    ``since`` (ISO 8601 or an age such as ``2h``); 400 naming what is wrong."""
    account = given.get("account")
    account = _id(account, "account") if account not in (None, "") else None
    ids_ = given.get("ids") or []
    if not isinstance(ids_, list) or not all(isinstance(i, str) and i for i in ids_):
        raise ApiError(400, "ids must be a list of dead letter ids")
    since = given.get("since")
    try:
        when = deadletters.parse_since(since) if isinstance(since, str) and since else None
    except ValueError as exc:
        raise ApiError(400, f"since: {exc}") from None
    text_ = given.get(reason)
    return deadletters.Filters(ids=frozenset(ids_), account_id=account,
                               reason=text_ if isinstance(text_, str) and text_ else None,
                               since=when)


def _held_choice(body: Mapping[str, Any], *, needed: bool) -> tuple[str | None, str | None]:
    """``held`` (release or discard) and ``category`` of a request; 400 naming what is wrong
    (either given to a suspend, a category without held, an unknown value)."""
    held, category = _optional(body, "held"), _optional(body, "category")
    if not needed and (held or category):
        raise ApiError(400, "held and category go with unblock and unsuspend")
    if held is not None and held not in HELD_ACTIONS:
        raise ApiError(400, f"held must be {' or '.join(HELD_ACTIONS)}")
    if category is not None and category not in CATEGORIES:
        raise ApiError(400, f"category must be one of {', '.join(CATEGORIES)}")
    if category is not None and held is None:
        raise ApiError(400, "category chooses the held jobs held applies to: give held too")
    return held, category


def _path_account(request: web.Request) -> str:
    """The ``{account}`` of the path, checked (400 ``account must be ...``)."""
    return _id(request.match_info["account"], "account")


def _optional_account(data: Mapping[str, Any]) -> str | None:
    """The ``account`` of a query or body: None when absent or empty, checked otherwise
    (never stripped: ``"acct\n"`` is refused, not read as ``acct``)."""
    value = data.get("account")
    return None if value is None or value == "" else _id(value, "account")


def _optional(data: Mapping[str, Any], name: str) -> str | None:
    """A text field: stripped, None when absent or blank; 400 when not a string or too long."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    if len(value) > MAX_TEXT:
        raise ApiError(400, f"{name} is longer than {MAX_TEXT} characters")
    return value.strip() or None


def _required(data: Mapping[str, Any], *names: str) -> list[str]:
    """Non-blank text fields; one 400 naming every missing one."""
    values = [_optional(data, name) for name in names]
    missing = [n for n, v in zip(names, values, strict=True) if v is None]
    if missing:
        names_ = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 \
            else missing[0]
        raise ApiError(400, f"{names_} {'are' if len(missing) > 1 else 'is'} required")
    return [v for v in values if v is not None]


def _setting(name: str, value: Any) -> Any:
    """A JSON value as ``accounts configure`` takes it: text of up to MAX_TEXT characters for
    sender information; for a limit or a line, what its declaration (config/reputation.py)
    allows: a finite number (or a numeral) in its bounds, or one of its choices. Unknown names
    go on to the store, which refuses them."""
    if value is None:
        return None
    if name in OVERRIDES:
        try:
            return check_override(name, value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    if name in SENDER_FIELDS and (not isinstance(value, str) or len(value) > MAX_TEXT):
        raise ApiError(400, f"{name} must be a string of up to {MAX_TEXT} characters")
    return value


def _seconds(value: Any) -> int | None:
    """``expires``: a whole number of seconds, or absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "expires must be a whole number of seconds")
    return value


def _int(value: str | None, name: str, *, default: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not 1 <= number <= high:
        raise ApiError(400, f"{name} must be between 1 and {high}")
    return number


# --- the page --------------------------------------------------------------------------
# webhooks/static/admin.{html,css,js}. Everything shown comes from the API and may come from
# users (account ids, reasons, names): the script builds the page with createElement and
# textContent only, never HTML strings.


def _static(name: str) -> str:
    return (resources.files("webhooks") / "static" / name).read_text(encoding="utf-8")


def _with_id_rule(script: str) -> str:
    """The page's script with the id rule of :mod:`suppression.ids` put in (generated, not
    copied: the page refuses what the API would)."""
    return (script.replace('"__ID_PATTERN__"', json.dumps(ids.PATTERN))
            .replace('"__ID_RULE__"', json.dumps(ids.RULE))
            .replace('"__CATEGORIES__"', json.dumps(CATEGORIES)))


_STYLE = _static("admin.css")
_SCRIPT = _with_id_rule(_static("admin.js"))
PAGE = Template(_static("admin.html")).substitute(style=_STYLE, script=_SCRIPT,
                                                   max_text=MAX_TEXT)


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own script and style run; it talks to this server only.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; "
        f"style-src {_csp_hash(_STYLE)}; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
