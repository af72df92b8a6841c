"""Support subcommands: ``accounts``, ``suppression``, ``consent``, ``prefs``, ``audit``.

Thin: parse, build settings, call the stores in :mod:`suppression.store`, print. Exit status:
0 done; 1 a failure while running, bad lines in an import, nothing to remove, or an unknown
account (the admin API's 404s): every command that names an account refuses one Outbox does
not know, reads included, and writes nothing (an account is known once it has sent a job or
been configured with ``accounts configure``, the one command that makes one); 2 bad input
(missing reason or actor, bad address, a malformed account id: argparse's usage error).
Lists print as tables with a header line; times are ISO 8601 UTC
(:func:`outbox.runtime.print_records`), in ``--json`` output too.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from config.reputation import OVERRIDES
from outbox.runtime import (
    EXIT_FAILED,
    CliError,
    NotFound,
    account_arg,
    iso_time,
    print_records,
    read_lines,
    settings,
    table,
    with_redis,
)
from suppression import channels

#: sender information of ``accounts configure`` (suppression.store.SENDER_FIELDS)
SENDER_FLAGS = ("business_name", "address", "contact_email", "contact_phone")
#: who the account may send as (suppression.senders.ACCOUNT_SETTINGS)
IDENTITY_FLAGS = ("sms_senders", "allow_any_reply_to", "allow_missing_dmarc")
#: caps per topic and channel (suppression.store.topic_caps_setting)
LIMIT_FLAGS = ("topic_caps",)
PROGRESS_MIN_LINES = 10_000  # show a progress bar on stderr above this many lines
HELD_ACTIONS = ("release", "discard")  # sender.held.ACTIONS (not imported: startup cost)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the support subcommands to the ``outbox`` parser."""
    _accounts(sub)
    _suppression(sub)
    _consent(sub)
    _prefs(sub)
    p = sub.add_parser("audit", help="an account's audit log, newest first")
    p.add_argument("account_id", metavar="ID", type=account_arg)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def _who(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (written to the audit log)")
    p.add_argument("--actor", required=True, help="who (written to the audit log)")


def _accounts(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    acc = sub.add_parser("accounts", help="account state, limits, blocks").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = acc.add_parser("list", help="accounts and their states")
    p.add_argument("--state", choices=["active", "warning", "throttled", "blocked", "suspended"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_list)
    p = acc.add_parser("show", help="state, rates, limits, sender information, transitions")
    p.add_argument("account_id", metavar="ID", type=account_arg)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_show)
    p = acc.add_parser("configure", help="sender information, rate limits, threshold overrides")
    p.add_argument("account_id", metavar="ID", type=account_arg)
    for name in SENDER_FLAGS:
        p.add_argument("--" + name.replace("_", "-"))
    p.add_argument("--sms-senders", metavar="LIST",
                   help="the SMS senders the account may use: comma-separated numbers, "
                        "Messaging Service SIDs, sender IDs ('' for none)")
    for flag in ("allow-any-reply-to", "allow-missing-dmarc"):
        p.add_argument("--" + flag, choices=("true", "false"),
                       help="reply_to on any domain" if "reply" in flag else
                       "marketing e-mail from a domain without a DMARC record")
    p.add_argument("--topic-caps", metavar="LIST",
                   help="frequency caps per topic and channel: 'topic:channel=N,...' (e.g. "
                        "'promo:sms=2,newsletter:email=1'; '' for none), over cap_period, "
                        "for marketing and notification jobs with that topic")
    for param in OVERRIDES.values():  # declared in config/reputation.py
        p.add_argument(param.flag, type=param.kind, choices=param.choices or None,
                       help=f"{param.help} (else OUTBOX_{param.setting.upper()}, default "
                            f"{param.default})".replace("%", "%%"))
    p.add_argument("--actor", default="support")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_configure)
    for name, text in (("unblock", "lift a block (starts probation with fresh counters)"),
                       ("suspend", "stop all sending until unsuspended"),
                       ("unsuspend", "lift a suspension (starts probation)")):
        p = acc.add_parser(name, help=text)
        p.add_argument("account_id", metavar="ID", type=account_arg)
        _who(p)
        if name != "suspend":
            p.add_argument("--held", choices=HELD_ACTIONS,
                           help="what becomes of the jobs held while the account was "
                                f"{name[2:]}ed: sent (every check again) or discarded; "
                                "required while it holds any")
            _category(p, "release or discard only the held jobs of this category (the "
                         "others stay held)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_accounts_support, support_action=name)
    p = acc.add_parser("held", help="jobs held while the account is (or was) blocked or "
                                    "suspended: counts by channel and category, oldest, ids; "
                                    "--release or --discard them")
    p.add_argument("account_id", metavar="ID", type=account_arg)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--release", dest="settle", action="store_const", const="release",
                      help="publish them again: each goes through every check and is sent "
                           "once")
    what.add_argument("--discard", dest="settle", action="store_const", const="discard",
                      help="end them `blocked` (reason held_discarded), their events "
                           "published")
    _category(p, "only the held jobs of this category")
    p.add_argument("--reason", help="why (with --release/--discard: the audit log)")
    p.add_argument("--actor", help="who (with --release/--discard: the audit log)")
    p.add_argument("--limit", type=int, default=100, help="ids listed (oldest first)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_held)


def _category(p: argparse.ArgumentParser, text: str) -> None:
    from suppression.held import CATEGORIES

    p.add_argument("--category", choices=CATEGORIES, help=text)


def _suppression(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sup = sub.add_parser("suppression", help="suppression entries").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = sup.add_parser("add", help="suppress an address (global, or for one account)")
    p.add_argument("address")
    p.add_argument("--account", metavar="ID", type=account_arg)
    p.add_argument("--channel", choices=channels.names(), required=True)
    p.add_argument("--reason", required=True,
                   help="hard_bounce, complaint, invalid (global); unsubscribe, sms_stop "
                        "(per account); manual")
    p.add_argument("--expires", type=int, metavar="SECONDS")
    p.add_argument("--source", default="")
    p.add_argument("--actor", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppression_add)
    p = sup.add_parser("remove", help="remove an entry (audited)")
    p.add_argument("address")
    p.add_argument("--account", metavar="ID", type=account_arg)
    p.add_argument("--channel", choices=channels.names(), required=True)
    _who(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppression_remove)
    p = sup.add_parser("check", help="is an address suppressed, and why")
    p.add_argument("address")
    p.add_argument("--account", metavar="ID", type=account_arg)
    p.add_argument("--channel", choices=channels.names())
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppression_check)
    p = sup.add_parser("list", help="global entries, or one account's")
    p.add_argument("--account", metavar="ID", type=account_arg)
    p.add_argument("--reason")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppression_list)
    p = sup.add_parser("import", help="import a CSV (address[,channel,reason]) or, with --dnc, "
                                      "the Do-not-call register (one number a line)")
    p.add_argument("file", metavar="FILE|-")
    p.add_argument("--account", metavar="ID", type=account_arg)
    p.add_argument("--reason", default="manual", help="when the CSV has no reason column")
    p.add_argument("--dnc", action="store_true", help="OFCA DNC register numbers (global, SMS)")
    p.add_argument("--actor", default="import")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppression_import)
    p = sup.add_parser("export", help="entries as CSV on stdout")
    p.add_argument("--account", metavar="ID", type=account_arg)
    p.add_argument("--reason")
    p.set_defaults(func=cmd_suppression_export)
    p = sup.add_parser("canonicalise",
                       help="find (and with --apply move) e-mail suppression, consent and "
                            "preference keys written under an older address form")
    p.add_argument("--apply", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppression_canonicalise)


def _consent(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    con = sub.add_parser("consent", help="marketing consent records").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    for name in ("grant", "revoke", "show"):
        p = con.add_parser(name, help=f"{name} consent of a recipient for an account")
        p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
        p.add_argument("recipient", metavar="RECIPIENT")
        p.add_argument("--channel", choices=channels.names(), required=True)
        if name != "show":
            p.add_argument("--source", default="", help="how it was given (form, call...)")
            p.add_argument("--evidence", default="", help="a reference to the proof")
            p.add_argument("--actor", default="support")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_consent, consent_action=name)


def _prefs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pre = sub.add_parser("prefs", help="notification preferences").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = pre.add_parser("set", help="switch a notification topic on or off")
    p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
    p.add_argument("recipient", metavar="RECIPIENT")
    p.add_argument("--topic", required=True)
    p.add_argument("--channel", choices=channels.names(), required=True)
    onoff = p.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--on", dest="on", action="store_true")
    onoff.add_argument("--off", dest="on", action="store_false")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prefs_set)
    p = pre.add_parser("show", help="a recipient's preferences for an account")
    p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
    p.add_argument("recipient", metavar="RECIPIENT")
    p.add_argument("--channel", choices=channels.names())
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prefs_show)


# --- plumbing ---------------------------------------------------------------------------


#: Said after "unknown account 'X'": how an account becomes known.
UNKNOWN_ACCOUNT_HINT = ("an account is known once it has sent a job or been configured "
                        "(`outbox accounts configure ID --business-name ...`)")


def _run(work: Callable[[Any, Any], Awaitable[Any]], *, account: str | None = None) -> Any:
    """Run ``work(redis, cfg)`` with a Redis client from the settings, after checking that
    ``account`` (when given) is known; store errors → exit 2; Redis unreachable (at start or
    midway) → one line naming OUTBOX_REDIS_URL, exit 1."""

    from suppression.entries import StoreError
    from suppression.store import UnknownAccount

    cfg = settings()

    async def _main(redis: Any) -> Any:
        if account is not None:
            await _account_store(redis, cfg).require(account)
        return await work(redis, cfg)

    try:
        return with_redis(cfg, _main)
    except UnknownAccount as exc:
        raise NotFound(f"{exc}: {UNKNOWN_ACCOUNT_HINT}") from None
    except StoreError as exc:
        raise CliError(str(exc)) from None


def _account_store(redis: Any, cfg: Any) -> Any:
    from suppression.store import AccountStore

    return AccountStore(redis, _policy(cfg))


def _policy(cfg: Any) -> Any:
    from suppression.reputation import Policy

    return Policy.from_settings(cfg)


# --- accounts -----------------------------------------------------------------------------


def cmd_accounts_list(args: argparse.Namespace) -> int:
    from suppression.store import AccountStore

    rows = _run(lambda r, cfg: AccountStore(r, _policy(cfg)).list(args.state))
    print_records(rows, args.json, lambda rs: table(rs, ("account_id", "state")))
    return 0


def cmd_accounts_show(args: argparse.Namespace) -> int:
    from suppression.store import AccountStore

    info = _run(lambda r, cfg: AccountStore(r, _policy(cfg)).show(args.account_id))
    print_records(info, args.json, _show_text)
    return 0


def _show_text(info: dict[str, Any]) -> str:
    lines = [f"account {info['account_id']}: {info['state']}"
             + (f" since {info['since']}" if info.get("since") else "")
             + (f" (probation until {info['probation_until']})" if info["probation_until"]
                else "")]
    for channel, r in info["rates"].items():
        lines.append(f"  {channel}: {r['sends']} sends, {r['hard_bounces']} hard bounces "
                     f"({r['bounce_rate']:.2%}, lower bound {r['bounce_wilson_lower']:.2%}), "
                     f"{r['complaints']} complaints ({r['complaint_rate']:.3%}, lower bound "
                     f"{r['complaint_wilson_lower']:.3%}) in {r['window']} s")
    lines.append(f"  limits: {json.dumps(info['limits'])}")
    lines.append(f"  sender: {json.dumps(info['sender'], ensure_ascii=False)}")
    if "identity" in info:
        lines.append(f"  identity: {json.dumps(info['identity'], ensure_ascii=False)}")
    domains = info.get("sending_domains") or []
    lines.append("  sending domains: " + (", ".join(
        d["domain"] + ("" if d["dmarc"] else " (no DMARC)") for d in domains)
        or "none verified (outbox domains add)"))
    lines.append("recent transitions:")
    lines.append(table(info["recent_transitions"], _AUDIT_COLUMNS))
    return "\n".join(lines)


def cmd_accounts_configure(args: argparse.Namespace) -> int:
    from suppression.store import AccountStore

    fields = {name: getattr(args, name)
              for name in (*SENDER_FLAGS, *IDENTITY_FLAGS, *LIMIT_FLAGS, *OVERRIDES)}
    if all(v is None for v in fields.values()):
        raise CliError("nothing to configure: give at least one setting")
    cfg_now = _run(lambda r, cfg: AccountStore(r, _policy(cfg)).configure(
        args.account_id, actor=args.actor, **fields))
    print_records({"account_id": args.account_id, "settings": cfg_now}, args.json,
                  lambda c: json.dumps(c, ensure_ascii=False, indent=2))
    return 0


def cmd_accounts_support(args: argparse.Namespace) -> int:
    """unblock / suspend / unsuspend: change, audit, then publish ``account.<state>``; an
    unblock or unsuspend refused while jobs are held and ``--held`` does not say what becomes
    of them (nothing changed), which are then released or discarded (``sender.held``)."""
    from suppression.store import AccountStore

    held_action = getattr(args, "held", None)
    if getattr(args, "category", None) and not held_action:
        raise CliError("--category chooses the held jobs --held release|discard applies to: "
                       "give --held too")

    async def work(redis: Any, cfg: Any) -> Any:
        store = AccountStore(redis, _policy(cfg))
        await store.require(args.account_id)
        if args.support_action != "suspend" and not held_action:
            await _refuse_if_held(redis, cfg, args.account_id, args.support_action)
        change = await store.support(
            args.account_id, args.support_action, actor=args.actor, reason=args.reason)
        published = await _publish_account_event(cfg, change, args)
        settled = (await _settle_held(redis, cfg, args.account_id, held_action, args)
                   if held_action else None)
        return change, published, settled

    change, published, settled = _run(work)
    record = {"account_id": change.account_id, "from": change.from_state,
              "to": change.to_state, "audit_id": change.audit_id,
              "probation_until": change.probation_until, "event_published": published}
    if held_action:
        record["held"] = settled
    print_records(record, args.json, _support_text)
    if not published:
        print("outbox: the change is made and audited, but its status event was not "
              "published", file=sys.stderr)
        return 1
    return 0 if settled is None or "error" not in settled else EXIT_FAILED


def _support_text(c: dict[str, Any]) -> str:
    line = f"{c['account_id']}: {c['from']} -> {c['to']} (audit {c['audit_id']})"
    return line + (f"\n{_settled_text(c['held'])}" if c.get("held") else "")


async def _refuse_if_held(redis: Any, cfg: Any, account_id: str, action: str) -> None:
    """CliError (nothing changed) when the account holds jobs: say what becomes of them."""
    from suppression.held import HeldStore

    summary = await HeldStore.from_settings(redis, cfg).summary(account_id, limit=0)
    if summary["held"]:
        groups = ", ".join(f"{g['channel']} {g['category']} {g['jobs']}" for g in summary["by"])
        raise CliError(
            f"account {account_id} holds {summary['held']} jobs ({groups}; oldest "
            f"{summary['oldest']}): nothing was changed. Say what becomes of them: `outbox "
            f"accounts {action} {account_id} --reason ... --actor ... --held release` (sent, "
            f"every check again) or `--held discard`, with `--category C` for one category "
            f"(`outbox accounts held {account_id}` lists them)")


async def _settle_held(redis: Any, cfg: Any, account_id: str, action: str,
                       args: argparse.Namespace) -> dict[str, Any]:
    """Release or discard the account's held jobs (of ``--category``) on a bus of its own;
    what was done, or what failed (``error``: the rest stays held)."""
    from sender.bus import Bus, PublishFailed
    from sender.held import HeldJobs
    from suppression.held import HeldStore
    from suppression.store import Audit

    bus = Bus.from_settings(cfg)
    store = HeldStore.from_settings(redis, cfg)
    try:
        await bus.connect(declare=True)
        settled = await HeldJobs(store, bus, Audit(redis)).settle(
            account_id, action, actor=args.actor, reason=args.reason,
            category=args.category)
        return settled.as_dict()
    except (PublishFailed, OSError, ConnectionError) as exc:
        remaining = await store.total(account_id)
        print(f"outbox: held jobs not all {action}d: {exc}; {remaining} still held "
              f"(`outbox accounts held {account_id} --{action} ...` to finish)",
              file=sys.stderr)
        return {"account_id": account_id, "action": action, "category": args.category,
                "remaining": remaining, "error": str(exc)}
    finally:
        await bus.close()


def _settled_text(s: dict[str, Any]) -> str:
    if "error" in s:
        return f"held jobs: {s['action']} failed ({s['error']}); {s['remaining']} still held"
    what = "released" if s["action"] == "release" else "discarded"
    return (f"held jobs {what}: {s['settled']}" + (f" ({s['category']})" if s["category"]
                                                  else "")
            + f"; still held: {s['remaining']} (audit {s['audit_id']})")


def cmd_accounts_held(args: argparse.Namespace) -> int:
    """List the account's held jobs, or (``--release``/``--discard``) settle them."""
    from suppression.held import HeldStore

    if args.settle:
        if not (args.reason and args.reason.strip() and args.actor and args.actor.strip()):
            raise CliError(f"--{args.settle} needs --reason and --actor (the audit log)")
        settled = _run(lambda r, cfg: _settle_held(r, cfg, args.account_id, args.settle,
                                                   args), account=args.account_id)
        print_records(settled, args.json, _settled_text)
        return EXIT_FAILED if "error" in settled else 0
    if args.category or args.reason or args.actor:
        raise CliError("--category, --reason and --actor go with --release or --discard")
    summary = _run(lambda r, cfg: HeldStore.from_settings(r, cfg).summary(
        args.account_id, limit=max(0, args.limit)), account=args.account_id)
    print_records(summary, args.json, _held_text)
    return 0


def _held_text(s: dict[str, Any]) -> str:
    if not s["held"]:
        return f"account {s['account_id']}: no held jobs"
    lines = [f"account {s['account_id']}: {s['held']} held jobs ({s['bytes']} bytes), oldest "
             f"{s['oldest']}, which expires {s['expires_at']}",
             table(s["by"], ("channel", "category", "jobs", "oldest")), "oldest first:",
             table(s["jobs"], ("id", "channel", "category", "held_at", "expires_at"))]
    return "\n".join(lines)


async def _publish_account_event(cfg: Any, change: Any, args: argparse.Namespace) -> bool:
    from sender.account_events import publish_account_event
    from sender.bus import Bus, PublishFailed

    bus = Bus.from_settings(cfg)
    try:
        await bus.connect(declare=True)
        await publish_account_event(bus, change, action=args.support_action, actor=args.actor,
                                    reason=args.reason)
        return True
    except (PublishFailed, OSError, ConnectionError) as exc:
        print(f"outbox: status event not published: {exc}", file=sys.stderr)
        return False
    finally:
        await bus.close()


# --- suppression --------------------------------------------------------------------------

_ENTRY_FIELDS = ("address", "channel", "scope", "account_id", "reason", "source", "at",
                 "expires_at", "detail")
_AUDIT_COLUMNS = ("id", "at", "actor", "action", "from", "to", "reason")


def cmd_suppression_add(args: argparse.Namespace) -> int:
    """Add an entry, then publish ``recipient.<channel>.suppressed`` (once: adding to an
    address already suppressed for that scope publishes nothing new)."""
    from sender.recipient_events import Change
    from suppression.store import SuppressionStore

    async def work(redis: Any, cfg: Any) -> Any:
        entry = await SuppressionStore(redis).add(
            args.address, channel=args.channel, reason=args.reason, account_id=args.account,
            expires=args.expires, source=args.source or f"cli:{args.actor}", actor=args.actor)
        change = Change(entry["account_id"], entry["channel"], entry["address"], "suppressed",
                        "cli")
        return entry, await _announce_recipient(redis, cfg, change)

    entry, published = _run(work, account=args.account)
    print_records({**entry, "event_published": published}, args.json,
                  lambda e: table([e], _ENTRY_FIELDS))
    return 0 if published else _not_published()


def cmd_suppression_remove(args: argparse.Namespace) -> int:
    """Remove an entry, then publish ``recipient.<channel>.unsuppressed`` (once)."""
    from sender.recipient_events import Change
    from suppression.store import SuppressionStore

    async def work(redis: Any, cfg: Any) -> Any:
        removed = await SuppressionStore(redis).remove(
            args.address, channel=args.channel, account_id=args.account, actor=args.actor,
            reason=args.reason)
        change = Change(args.account, args.channel, args.address, "unsuppressed", "cli",
                        removed=bool(removed))
        return removed, await _announce_recipient(redis, cfg, change)

    removed, published = _run(work, account=args.account)
    record = {"address": args.address, "removed": removed}
    if removed:  # an event only when something was removed
        record["event_published"] = published
    print_records(record, args.json, lambda d: "removed:\n" + table(d["removed"], _ENTRY_FIELDS))
    if not removed:  # as the admin API's 404: the caller thought there was one
        scope = f"account {args.account}" if args.account else "the global list"
        print(f"outbox: no {args.channel} entry for {args.address} in {scope}: nothing removed",
              file=sys.stderr)
        return EXIT_FAILED
    return 0 if published else _not_published()


async def _announce_recipient(redis: Any, cfg: Any, change: Any) -> bool:
    """Record and publish a recipient event (``sender.recipient_events``); False (and one line
    on stderr) when the broker did not take it: it stays pending."""
    from sender.bus import Bus, PublishFailed
    from sender.connect import ServiceRefused
    from sender.recipient_events import RecipientEvents

    bus = Bus.from_settings(cfg)
    try:
        await bus.connect(declare=True)
        await RecipientEvents(redis, bus).announce(change)
        return True
    except (PublishFailed, ServiceRefused, OSError, ConnectionError) as exc:
        print(f"outbox: recipient event not published: {exc}", file=sys.stderr)
        return False
    finally:
        await bus.close()


def _not_published() -> int:
    print("outbox: the change is made and audited, but its recipient event was not published; "
          "it is kept and published when this command is run again (or with the next change "
          "of the same account)", file=sys.stderr)
    return EXIT_FAILED


def cmd_suppression_check(args: argparse.Namespace) -> int:
    from suppression.store import SuppressionStore

    entries = _run(lambda r, cfg: SuppressionStore(r).check(
        args.address, account_id=args.account, channel=args.channel), account=args.account)
    record = {"address": args.address, "suppressed": bool(entries), "entries": entries}
    print_records(record, args.json, lambda d: f"{d['address']}: " + (
        "suppressed\n" + table(d["entries"], _ENTRY_FIELDS) if d["suppressed"]
        else "not suppressed"))
    return 0


async def _collect(store: Any, account: str | None, reason: str | None) -> list[dict[str, Any]]:
    return [e async for e in store.entries(account_id=account, reason=reason)]


def cmd_suppression_list(args: argparse.Namespace) -> int:
    from suppression.store import SuppressionStore

    entries = _run(lambda r, cfg: _collect(SuppressionStore(r), args.account, args.reason),
                   account=args.account)
    print_records(entries, args.json, lambda es: table(es, _ENTRY_FIELDS))
    return 0


def cmd_suppression_canonicalise(args: argparse.Namespace) -> int:
    from suppression.store import canonicalise_keys

    found = _run(lambda r, cfg: canonicalise_keys(r, apply=args.apply))
    print_records(found, args.json,
                  lambda fs: table(fs, ("action", "key", "address", "canonical")))
    return 0


def cmd_suppression_export(args: argparse.Namespace) -> int:
    from suppression.store import SuppressionStore

    async def work(redis: Any, cfg: Any) -> int:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(_ENTRY_FIELDS)
        count = 0
        async for e in SuppressionStore(redis).entries(account_id=args.account,
                                                       reason=args.reason):
            out.writerow(["" if e[f] is None else iso_time(e[f]) if f in ("at", "expires_at")
                          else e[f] for f in _ENTRY_FIELDS])
            count += 1
        return count

    _run(work, account=args.account)
    return 0


def cmd_suppression_import(args: argparse.Namespace) -> int:
    """Validate every line first (bad ones reported with their numbers), then store the good
    ones in pipelined batches; exit 1 if any line was bad."""
    name, stream = read_lines(args.file)
    raw = stream.read()
    text = raw.decode("utf-8-sig", errors="replace") if isinstance(raw, bytes) else raw
    lines = text.splitlines()
    progress = _Progress(len(lines)) if len(lines) >= PROGRESS_MIN_LINES else None
    numbers: list[str] = []
    rows: list[tuple[str, str, str]] = []
    if args.dnc:
        numbers, bad = _parse_dnc(lines)
    else:
        rows, bad = _parse_csv(lines, args.reason, args.account)
    good: list[Any] = numbers or rows
    for lineno, why in bad:
        print(f"{name}:{lineno}: {why}", file=sys.stderr)
    source = f"import:{name}"

    async def work(redis: Any, cfg: Any) -> int:
        from suppression.store import SuppressionStore

        store = SuppressionStore(redis)
        done = 0
        for i in range(0, len(good), 1000):
            if args.dnc:
                done += await store.add_dnc(numbers[i:i + 1000], source=source)
            else:
                done += await store.add_many(rows[i:i + 1000], account_id=args.account,
                                             source=source, actor=args.actor)
            if progress:
                progress.show(done + len(bad))
        await store.audit.record(args.account, actor=args.actor, action="suppression.import",
                                 reason=f"{done} entries from {name}",
                                 bad_lines=len(bad), dnc=int(args.dnc))
        return done

    imported = _run(work, account=args.account)
    if progress:
        progress.close()
    print_records({"file": name, "imported": imported, "bad": len(bad)}, args.json,
                  lambda s: f"imported {s['imported']}, bad lines {s['bad']}")
    return 1 if bad else 0


def _parse_dnc(lines: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """One number a line; Hong Kong numbers may come without +852."""
    from suppression.address import BadAddress, e164

    good, bad = [], []
    for lineno, line in enumerate(lines, 1):
        number = line.strip()
        if not number or number.startswith("#"):
            continue
        try:
            good.append(e164(number, default_region="HK"))
        except BadAddress as exc:
            bad.append((lineno, str(exc)))
    return good, bad


def _parse_csv(lines: list[str], default_reason: str, account: str | None
               ) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
    """CSV with a header ``address[,channel,reason]``; each row checked as ``add`` would."""
    from suppression.address import BadAddress
    from suppression.entries import BadEntry
    from suppression.store import SuppressionStore

    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows or [c.strip().lower() for c in rows[0]][:1] != ["address"]:
        return [], [(1, "the first line must be a header: address[,channel,reason]")]
    header = [c.strip().lower() for c in rows[0]]
    good, bad = [], []
    for lineno, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        rec = dict(zip(header, (c.strip() for c in row), strict=False))
        address = rec.get("address", "")
        reason = rec.get("reason") or default_reason
        try:
            channel = rec.get("channel") or channels.guess(address)
            if channel not in channels.names():
                raise BadEntry(f"channel must be {channels.choices()}, not {channel!r}")
            channels.normalise(channel, address)
            SuppressionStore.scope(reason, account)
        except (BadAddress, BadEntry) as exc:
            bad.append((lineno, str(exc)))
            continue
        good.append((address, channel, reason))
    return good, bad


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)

    def show(self, done: int) -> None:
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 40)
        print(f"\r[{bar:<40}] {done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


# --- consent, prefs, audit ------------------------------------------------------------------


def cmd_consent(args: argparse.Namespace) -> int:
    from suppression.store import ConsentStore

    def work(redis: Any, cfg: Any) -> Awaitable[dict[str, Any]]:
        store = ConsentStore(redis)
        if args.consent_action == "show":
            return store.get(args.account_id, args.recipient, channel=args.channel)
        return store.set(args.account_id, args.recipient, channel=args.channel,
                         granted=args.consent_action == "grant", source=args.source,
                         evidence=args.evidence, actor=args.actor)

    record = _run(work, account=args.account_id)
    print_records(record, args.json,
                  lambda r: f"{r['account_id']} {r['recipient']} {r['channel']}: {r['status']}"
                            + (f" since {r['at']}" if r.get("at") else ""))
    return 0


def cmd_prefs_set(args: argparse.Namespace) -> int:
    from suppression.store import PrefsStore

    record = _run(lambda r, cfg: PrefsStore(r).set(args.account_id, args.recipient,
                                                   topic=args.topic, channel=args.channel,
                                                   on=args.on),
                   account=args.account_id)
    print_records(record, args.json, _prefs_text)
    return 0


def cmd_prefs_show(args: argparse.Namespace) -> int:
    from suppression.store import PrefsStore

    record = _run(lambda r, cfg: PrefsStore(r).get(args.account_id, args.recipient,
                                                   channel=args.channel),
                   account=args.account_id)
    print_records(record, args.json, _prefs_text)
    return 0


def _prefs_text(r: dict[str, Any]) -> str:
    rows = [{"topic": topic, "channel": c, "setting": "on" if on else "off"}
            for topic, chans in sorted(r["topics"].items()) for c, on in sorted(chans.items())]
    return (f"{r['account_id']} {r['recipient']} (topics not listed are on)\n"
            + table(rows, ("topic", "channel", "setting")))


def cmd_audit(args: argparse.Namespace) -> int:
    from suppression.store import AccountStore

    records = _run(lambda r, cfg: AccountStore(r, _policy(cfg)).audit.read(
        args.account_id, limit=args.limit), account=args.account_id)
    print_records(records, args.json, lambda rs: table(rs, _AUDIT_COLUMNS))
    return 0
