"""``outbox domains``: the sending domains of an account (:mod:`suppression.domains`).

``add|verify|show|rotate|retire|remove ACCOUNT DOMAIN``, ``list ACCOUNT``, and for support
``share|unshare ACCOUNT DOMAIN --actor A --reason R`` (let an account use a domain another
account verified). Every command that prints records takes ``--json``. Exit status as
:mod:`outbox.support`'s: 0 done, 2 bad input or an unknown account or domain, 1 a failure
while running; ``verify`` exits 1 when the domain is not verified (saying what is missing).
Private keys are never printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from outbox import support
from outbox.runtime import EXIT_FAILED, account_arg, print_records, table

_RECORD_COLUMNS = ("type", "name", "value")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``outbox domains`` to the parser."""
    dom = sub.add_parser("domains", help="sending domains: DKIM keys, DNS records, "
                         "verification").add_subparsers(dest="action", required=True,
                                                        metavar="ACTION")
    p = _command(dom, "add", "make the domain's DKIM key and print the records to publish")
    p.add_argument("--ed25519", action="store_true",
                   help="an Ed25519 key beside the RSA one (a second signature, RFC 8463)")
    _command(dom, "verify", "look the records up in DNS; exit 0 when verified, 1 when not")
    p = dom.add_parser("list", help="the account's sending domains")
    p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    _command(dom, "show", "keys, records to publish, the last verification")
    _command(dom, "rotate", "new keys under a new selector (the old stay until retire)")
    p = _command(dom, "retire", "drop the keys a rotation replaced (or one --selector)")
    p.add_argument("--selector")
    _command(dom, "remove", "delete the domain and its keys from the account")
    for name, text in (("share", "let the account use a domain another account verified"),
                       ("unshare", "take such a share back")):
        p = _command(dom, name, text)
        p.add_argument("--reason", required=True, help="why (written to the audit log)")


def _command(dom: Any, name: str, text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = dom.add_parser(name, help=text)
    p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--actor", default="support", help="who (written to the audit log)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_COMMANDS[name])
    return p


def _run(args: argparse.Namespace, work: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """``work(store, cfg)`` on a domain store, the account checked first (as every support
    command does); unknown domains and bad input exit 2."""
    from suppression.domains import DomainStore

    return support._run(lambda redis, cfg: work(DomainStore.from_settings(redis, cfg), cfg),
                        account=args.account_id)


# --- commands -------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    shown = _run(args, lambda store, cfg: store.add(args.account_id, args.domain,
                                                    ed25519=args.ed25519, actor=args.actor))
    record = {"account": args.account_id, "domain": shown["domain"],
              "selector": shown["selector"], "records": shown["records"]}
    print_records(record, args.json, _records_text)
    return 0


def _records_text(r: dict[str, Any]) -> str:
    return (f"{r['domain']} added to {r['account']} (selector {r['selector']}). Publish:\n"
            + table(r["records"], _RECORD_COLUMNS)
            + "\nSPF: one SPF record per name; if there is one, add the include to it. "
              "DMARC: only if the domain has none. Then: outbox domains verify "
              f"{r['account']} {r['domain']}")


def cmd_verify(args: argparse.Namespace) -> int:
    async def work(store: Any, cfg: Any) -> dict[str, Any]:
        from sender.domain_check import check
        from sender.resolver import make_resolver

        record = await store.get(args.account_id, args.domain)
        findings = await check(make_resolver(cfg.dns_nameservers), record, store.publishing)
        shown = await store.record_verification(args.account_id, args.domain, findings,
                                                actor=args.actor)
        return {"account": args.account_id, "domain": shown["domain"], **findings,
                "selector": shown["selector"]}

    result = _run(args, work)
    print_records(result, args.json, _verify_text)
    return 0 if result["verified"] else EXIT_FAILED


def _verify_text(r: dict[str, Any]) -> str:
    lines = [f"{r['domain']} ({r['account']}): "
             + ("verified" if r["verified"] else "NOT verified")
             + (" (a lookup failed: left as it was)" if r.get("inconclusive") else "")
             + f" at {r['at']}"]
    lines += [f"  DKIM {d['selector']} ({d['state']}): {d['found']}: {d['detail']}"
              for d in r["dkim"]]
    spf, dmarc, rp = r["spf"], r["dmarc"], r["return_path"]
    lines.append(f"  SPF: {spf['found']}" + (f" ({spf['record']})" if spf.get("record") else ""))
    lines.append(f"  DMARC: {dmarc['found']}"
                 + (f", policy {dmarc['policy']} ({dmarc['name']})" if dmarc.get("policy")
                    else ""))
    lines.append(f"  return path {rp['name']}: {rp['found']}")
    bulk = r["bulk_sender"]
    lines.append("  Gmail/Yahoo bulk-sender requirements: " + (
        "met" if bulk["met"] else "NOT met: missing " + ", ".join(bulk["missing"])))
    lines += [f"  missing: {m}" for m in r["missing"]]
    lines += [f"  to do: {a}" for a in r.get("advice") or []]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    rows = _run(args, lambda store, cfg: store.domains(args.account_id))
    print_records(rows, args.json, lambda rs: table(
        [{**r, "verified": "yes" if r["verified"] else "no",
          "dmarc": "yes" if r["dmarc"] else "no"} for r in rs],
        ("domain", "verified", "verified_at", "selector", "dmarc", "return_path")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    shown = _run(args, lambda store, cfg: store.show(args.account_id, args.domain))
    print_records(shown, args.json, _show_text)
    return 0


def _show_text(r: dict[str, Any]) -> str:
    v = r.get("verification") or {}
    lines = [f"{r['domain']} ({r['account_id']}): "
             + (f"verified at {r['verified_at']}" if r["verified"] else "not verified")
             + (f"; DMARC {'yes' if r['dmarc'] else 'no'}; return path "
                f"{r['return_path'] or '-'}"),
             "keys:", table(r["keys"], ("selector", "algorithm", "state", "created_at")),
             "records to publish:", table(r["records"], _RECORD_COLUMNS)]
    if v:
        lines.append(f"last verification {v.get('at')}: "
                     + ("verified" if v.get("verified") else "missing: "
                        + "; ".join(v.get("missing") or [])))
        bulk = v.get("bulk_sender") or {}
        if bulk:
            lines.append("Gmail/Yahoo bulk-sender requirements: " + (
                "met" if bulk["met"] else "NOT met: missing " + ", ".join(bulk["missing"])))
    return "\n".join(lines)


def cmd_rotate(args: argparse.Namespace) -> int:
    shown = _run(args, lambda store, cfg: store.rotate(args.account_id, args.domain,
                                                       actor=args.actor))
    print_records(shown, args.json, _show_text)
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    shown = _run(args, lambda store, cfg: store.retire(args.account_id, args.domain,
                                                       selector=args.selector,
                                                       actor=args.actor))
    print_records(shown, args.json, _show_text)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    gone = _run(args, lambda store, cfg: store.remove(args.account_id, args.domain,
                                                      actor=args.actor))
    print_records({"account": args.account_id, "domain": gone["domain"], "removed": True},
                  args.json, lambda r: f"{r['domain']} removed from {r['account']}")
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    method = "share" if args.action == "share" else "unshare"
    result = _run(args, lambda store, cfg: getattr(store, method)(
        args.account_id, args.domain, actor=args.actor, reason=args.reason))
    print_records({"account": args.account_id, **result}, args.json,
                  lambda r: f"{r['domain']}: owner {r['owner'] or '-'}, shared with "
                            f"{', '.join(r['shared_with']) or '-'}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "add": cmd_add, "verify": cmd_verify, "show": cmd_show, "rotate": cmd_rotate,
    "retire": cmd_retire, "remove": cmd_remove, "share": cmd_share, "unshare": cmd_share}
