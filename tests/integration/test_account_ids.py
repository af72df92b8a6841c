"""Account and job ids are one rule (suppression/ids.py) at every entrance, through the real
command (``python -m outbox``), the real admin API and a real Redis:

* every CLI command that takes an account refuses ``*``, ``acct*``, ``a}:x``, an id with a
  newline and an over-long one with argparse's usage error (exit 2) and writes nothing; the
  commands are found by walking the parser, so a new one is covered without being listed;
* every admin API route refuses them (400 naming ``account``) wherever it reads an account
  (path, query, body); the routes are the API's own table, so a new route is covered;
* ``suppression list --account acct`` lists acct's entries and nobody else's;
* reads of an unknown account (CLI and API) are "unknown account" (exit 1, 404) and create
  no key; a write naming one is refused the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
import redis.asyncio as aioredis
from twilio.request_validator import RequestValidator
from yarl import URL

from outbox.cli import build_parser
from outbox.runtime import account_arg, job_arg
from suppression import ids, keys
from tests.integration.helpers import collect, redis_state, running_app
from webhooks.admin import AdminApi

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-for-id-tests"
#: the actor of every change: the name a bare token has where tokens have roles (token-<i>),
#: so these requests read the same before and after them
ACTOR = "token-0"
RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ -"

#: ids every entrance refuses: globs, a hash-tag escape, a line break, one character too many
BAD_IDS = {"star": "*", "acct-star": "acct*", "brace": "a}:x", "newline": "acct\nx",
           "too-long": "a" * (ids.MAX_LENGTH + 1)}


# --- the CLI: every command that takes an account, found in the parser ---------------------


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command words, parser)`` of every command, subcommands included."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*prefix, name))


#: what a positional argument gets when the test is not about it
_FILLERS = {"address": "ana@example.com", "recipient": "ana@example.com", "file": "-",
            "source": "-", "paths": "-", "reply": "-"}


def _argv(words: tuple[str, ...], parser: argparse.ArgumentParser, account: str,
          job: str = "job-1") -> list[str]:
    """A command line of ``words`` giving ``account`` wherever an account goes (``job`` where
    a job id goes) and a plausible value to everything else that is required."""
    argv = list(words)
    for action in parser._actions:
        value = (account if action.type is account_arg else job if action.type is job_arg
                 else None)
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            if value is None and action.required:
                value = str(next(iter(action.choices))) if action.choices else "x"
            if value is not None:
                argv += [action.option_strings[0], value]
        else:
            argv.append(value if value is not None else _FILLERS.get(action.dest, "x"))
    for group in parser._mutually_exclusive_groups:
        if group.required:
            argv.append(group._group_actions[0].option_strings[0])
    return argv


def _takes(parser: argparse.ArgumentParser, kind: Any) -> bool:
    return any(action.type is kind for action in parser._actions)


ACCOUNT_COMMANDS = {" ".join(words): parser for words, parser in _leaves(build_parser())
                    if _takes(parser, account_arg)}
JOB_COMMANDS = {" ".join(words): parser for words, parser in _leaves(build_parser())
                if _takes(parser, job_arg)}


def test_every_argument_that_names_an_account_or_job_is_checked():
    """No command takes an account (or a job id) as plain text: the walk below finds all."""
    unchecked = [(" ".join(words), action.dest) for words, parser in _leaves(build_parser())
                 for action in parser._actions
                 if action.dest in ("account", "account_id") and action.type is not account_arg
                 or action.dest == "job_id" and action.type is not job_arg]
    assert unchecked == []
    assert {"accounts show", "accounts configure", "accounts unblock", "suppression add",
            "suppression remove", "suppression check", "suppression list",
            "suppression import", "suppression export", "consent grant", "consent show",
            "prefs set", "prefs show", "audit", "jobs show", "jobs history",
            "events"} <= set(ACCOUNT_COMMANDS)
    assert set(JOB_COMMANDS) == {"jobs show", "jobs cancel"}


#: the refusals come before any connection: no test vhost is needed for them
NO_BROKER = "amqp://guest:guest@127.0.0.1:1/none"


def _outbox(argv: list[str], redis_url: str, amqp_url: str
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(OUTBOX_REDIS_URL=redis_url, OUTBOX_AMQP_URL=amqp_url, OUTBOX_METRICS_PORT="0")
    return subprocess.run([sys.executable, "-m", "outbox", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)


async def _seed(redis_url: str, *accounts: str) -> None:
    """Known accounts, each with a per-account suppression entry (``acct`` holds
    ``only-acct@example.com``, ``acct_other`` ``only-acct_other@example.com``...)."""
    from suppression.reputation import Policy
    from suppression.store import AccountStore, SuppressionStore

    client = aioredis.Redis.from_url(redis_url)
    try:
        for account in accounts:
            await AccountStore(client, Policy()).configure(account, actor="t", rate=5)
            await SuppressionStore(client).add(f"only-{account}@example.com", channel="email",
                                               reason="unsubscribe", account_id=account)
    finally:
        await client.aclose()


#: the malformed id that goes through the real command (a process of its own, its Redis checked
#: untouched); the others go through the same parser in this process (the refusal is the
#: parser's, before any connection), which saves ~300 process starts (~2 minutes)
THROUGH_A_PROCESS = "newline"


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
@pytest.mark.parametrize("command", sorted(ACCOUNT_COMMANDS))
async def test_every_command_refuses_a_malformed_account_id(command, bad, redis_url, capsys):
    argv = _argv(tuple(command.split()), ACCOUNT_COMMANDS[command], bad)
    if bad != BAD_IDS[THROUGH_A_PROCESS]:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(argv)
        assert exited.value.code == 2
        stderr = capsys.readouterr().err
        usage, error = stderr.splitlines()[0], stderr.splitlines()[-1]
        assert usage.startswith(f"usage: outbox {command}")
        assert error.startswith(f"outbox {command}: error: argument ")
        assert f"account id {RULE}" in error
        return
    await _seed(redis_url, "a", "acct", "acct_other")
    before = await redis_state(redis_url)
    done = _outbox(argv, redis_url, NO_BROKER)
    assert done.returncode == 2, done.stderr
    usage, error = done.stderr.splitlines()[0], done.stderr.splitlines()[-1]
    assert usage.startswith(f"usage: outbox {command}")
    assert error.startswith(f"outbox {command}: error: argument ")
    assert f"account id {RULE}" in error and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert await redis_state(redis_url) == before


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
@pytest.mark.parametrize("command", sorted(JOB_COMMANDS))
async def test_every_job_command_refuses_a_malformed_job_id(command, bad, redis_url):
    done = _outbox(_argv(tuple(command.split()), JOB_COMMANDS[command], "acct", job=bad),
                   redis_url, NO_BROKER)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(
        f"outbox {command}: error: argument ID: job id {RULE}")


# --- the admin API: every route of its table ------------------------------------------------

#: routes that take no account anywhere (checked to exist, so the list cannot go stale)
NO_ACCOUNT = {"GET /admin", "GET /admin/", "GET /admin/accounts", "GET /admin/whoami",
              "GET /admin/channels", "GET /admin/destinations"}
ROUTES = {f"{r.method} {r.path}": r for r in AdminApi.routes(object.__new__(AdminApi))}
#: what a path parameter gets when the test is not about it
_PATH_FILLERS = {"job": "job-1", "address": "ana@example.com", "recipient": "ana@example.com",
                 "action": "unblock", "domain": "shop.example"}


def _path(template: str, account: str) -> str:
    """The route's path with ``account`` for ``{account...}`` and fillers elsewhere."""
    import re

    def fill(m: re.Match[str]) -> str:
        name, pattern = m.group(1), m.group(2) or ""
        if name == "action" and pattern.isalpha():  # a route of one action: its own
            return pattern
        return quote(account if name == "account" else _PATH_FILLERS[name], safe="")
    return re.sub(r"\{(\w+)(?::([^{}]*))?\}", fill, template)


def test_the_route_table_is_what_the_tests_walk():
    assert NO_ACCOUNT <= set(ROUTES)
    assert len(set(ROUTES) - NO_ACCOUNT) >= 12
    assert _path("/admin/consent/{account:[^/]+}/{recipient:[^/]+}", "a}:x") == \
        "/admin/consent/a%7D%3Ax/ana%40example.com"
    assert _path("/admin/accounts/{account:[^/]+}/{action:unblock|suspend|unsuspend}",
                 "x") == "/admin/accounts/x/unblock"


@contextlib.asynccontextmanager
async def _admin(make_settings: Any, port: int) -> Any:
    """``call(method, path, body)`` → (status, JSON) on a real server of this test's own."""
    async with running_app(make_settings(admin_tokens=TOKEN), port) as base, \
            aiohttp.ClientSession() as session:
        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={
                    "Authorization": f"Bearer {TOKEN}"},
                    data=None if body is None else json.dumps(body)) as response:
                return response.status, await response.json(content_type=None)
        yield call


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
@pytest.mark.parametrize("route", sorted(set(ROUTES) - NO_ACCOUNT))
async def test_every_admin_route_refuses_a_malformed_account_id(
        route, bad, make_settings, redis_url, unused_tcp_port):
    """The bad id goes wherever the route could read an account (path, query and body);
    everything else is valid, so only the account can be what is refused."""
    await _seed(redis_url, "a", "acct")
    method, template = route.split(" ", 1)
    query = "?" + urlencode({"account": bad, "channel": "email", "reason": "r", "actor": ACTOR})
    body = {"account": bad, "address": "ana@example.com", "channel": "email",
            "reason": "manual", "actor": ACTOR, "granted": True, "business_name": "B"}
    before = await redis_state(redis_url)
    async with _admin(make_settings, unused_tcp_port) as call:
        status, answer = await call(method, _path(template, bad) + query,
                                    None if method == "GET" else body)
    assert status == 400, answer
    assert answer["error"].startswith(f"account {RULE}"), answer
    assert await redis_state(redis_url) == before


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
async def test_the_job_route_refuses_a_malformed_job_id(bad, make_settings, redis_url,
                                                        unused_tcp_port):
    await _seed(redis_url, "acct")
    async with _admin(make_settings, unused_tcp_port) as call:
        status, answer = await call("GET", f"/admin/jobs/acct/{quote(bad, safe='')}")
    assert (status, answer["error"][:len(f"job {RULE}")]) == (400, f"job {RULE}")


# --- one account's entries, and nobody else's ----------------------------------------------


async def test_suppression_list_of_one_account_lists_only_its_entries(
        redis_url, amqp_url, make_settings, unused_tcp_port):
    await _seed(redis_url, "acct", "acct_other", "acct2", "acct.x")
    done = _outbox(["suppression", "list", "--account", "acct", "--json"], redis_url, amqp_url)
    assert done.returncode == 0, done.stderr
    assert [(e["address"], e["account_id"]) for e in json.loads(done.stdout)] == [
        ("only-acct@example.com", "acct")]
    done = _outbox(["suppression", "export", "--account", "acct"], redis_url, amqp_url)
    assert [row.split(",")[0] for row in done.stdout.splitlines()[1:]] == [
        "only-acct@example.com"]
    async with _admin(make_settings, unused_tcp_port) as call:
        status, found = await call("GET", "/admin/accounts/acct/suppressions")
    assert status == 200
    assert [(e["address"], e["account_id"]) for e in found] == [
        ("only-acct@example.com", "acct")]


async def test_scan_patterns_match_their_text_literally(redis_url):
    """Defence in depth: even text with every glob metacharacter matches only itself."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        odd = "x*?[ab]{c}\\y^"
        for key in (odd, "xZZ?aby", "x*?a{c}y", "x*?[ab]{c}\\y^-more"):
            await client.set(key, "1")
        found = [k.decode() async for k in client.scan_iter(match=keys.glob_escape(odd))]
        assert found == [odd]
        assert keys.account_suppressions_pattern("acct") == r"outbox:\{acct:acct\}:supp:*"
        with pytest.raises(ids.InvalidId, match="account id must be"):
            keys.account_suppressions_pattern("acct*")
        with pytest.raises(ids.InvalidId, match="account id must be"):
            keys.account_tag("a}:x")
    finally:
        await client.aclose()


# --- reads of an unknown account: "unknown account", and no key made ------------------------

GHOST = "acct_ghost"
READS = [
    ["accounts", "show", GHOST],
    ["audit", GHOST],
    ["suppression", "check", "ana@example.com", "--account", GHOST],
    ["suppression", "list", "--account", GHOST],
    ["suppression", "export", "--account", GHOST],
    ["consent", "show", GHOST, "ana@example.com", "--channel", "email"],
    ["prefs", "show", GHOST, "ana@example.com"],
    ["jobs", "show", GHOST, "job-1"],
    ["jobs", "history", "ana@example.com", "--account", GHOST],
    ["events", "--account", GHOST, "--wait", "1"],
]


@pytest.mark.parametrize("argv", READS, ids=[" ".join(a[:2]) for a in READS])
async def test_a_read_of_an_unknown_account_is_exit_1_and_creates_no_key(argv, redis_url,
                                                                         amqp_url):
    await _seed(redis_url, "acct")
    before = await redis_state(redis_url)
    done = _outbox(argv, redis_url, amqp_url)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() and f"unknown account '{GHOST}'" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""
    assert await redis_state(redis_url) == before


API_READS = [f"/admin/accounts/{GHOST}", f"/admin/accounts/{GHOST}/suppressions",
             f"/admin/audit/{GHOST}", f"/admin/consent/{GHOST}/ana%40example.com?channel=email",
             f"/admin/jobs/{GHOST}/job-1", f"/admin/history/ana%40example.com?account={GHOST}",
             f"/admin/suppression/ana%40example.com?account={GHOST}"]
API_WRITES = [
    ("POST", "/admin/suppression", {"address": "ana@example.com", "channel": "email",
                                    "reason": "unsubscribe", "account": GHOST, "actor": ACTOR}),
    ("POST", f"/admin/consent/{GHOST}/ana%40example.com", {"channel": "email",
                                                           "granted": True, "actor": ACTOR}),
    ("DELETE", "/admin/suppression/ana%40example.com", {"channel": "email", "account": GHOST,
                                                        "reason": "r", "actor": ACTOR}),
    ("POST", f"/admin/accounts/{GHOST}/suspend", {"reason": "r", "actor": ACTOR}),
]


async def test_the_api_answers_404_for_an_unknown_account_and_creates_no_key(
        make_settings, redis_url, unused_tcp_port):
    await _seed(redis_url, "acct")
    before = await redis_state(redis_url)
    async with _admin(make_settings, unused_tcp_port) as call:
        for path in API_READS:
            status, answer = await call("GET", path)
            assert (status, answer["error"]) == (404, f"unknown account '{GHOST}'"), path
        for method, path, body in API_WRITES:
            status, answer = await call(method, path, body)
            assert (status, answer["error"]) == (404, f"unknown account '{GHOST}'"), path
        assert await redis_state(redis_url) == before
        assert (await call("GET", "/admin/accounts"))[1] == [{"account_id": "acct",
                                                               "state": "active"}]


# --- Twilio's callback query: a (signed) malformed id is refused -----------------------------

SID, TWILIO_TOKEN = "AC" + "3" * 32, "auth-token-for-id-tests"


@pytest.mark.parametrize(("path", "query"), [
    ("status", {"j": "job-1", "a": "a}:x"}), ("status", {"j": "job\n1", "a": "acct"}),
    ("inbound", {"a": "acct*"})])
async def test_a_twilio_callback_with_a_malformed_id_is_400(path, query, make_settings,
                                                            unused_tcp_port, amqp_url):
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TWILIO_TOKEN,
                             twilio_from="+15005550006", public_url=public)
    # signed as sent: the query as the client encodes it, which the server reads back
    url = str(URL(f"{public}/webhooks/twilio/{path}").with_query(query))
    form = {"MessageSid": "SM" + "c" * 32, "MessageStatus": "delivered", "Body": "STOP",
            "To": "+15005550006", "From": "+85291234567", "AccountSid": SID}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    async with running_app(settings, unused_tcp_port), aiohttp.ClientSession() as session, \
            session.post(URL(url, encoded=True), data=form,
                         headers={"X-Twilio-Signature": signature}) as r:
        assert r.status == 400
        assert f") {RULE}" in await r.text()  # "account id (query a) must be ..."
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []
