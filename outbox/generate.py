"""``python -m outbox.generate [--check]``: the files that list the declared channels
(:mod:`sender.channels.registry`), written from it, so a new channel reaches them without a
hand edit (``make definitions`` runs it):

======================================  ====================================================
file                                    what is generated
======================================  ====================================================
``deploy/rabbitmq/definitions.json``    the whole topology (:func:`sender.topology.definitions`
                                        for the default retry tiers)
``deploy/prometheus/outbox-rules.yml``  the job queues the ``OutboxQueueBacklog`` alert
                                        watches (its ``queue=~"..."`` matcher; the rest of
                                        the file is written by hand)
``README.md``, ``docs/*.md``            the channel table between ``<!-- channels -->`` and
                                        ``<!-- /channels -->`` (one row per channel)
======================================  ====================================================

The admin page needs no file: it reads the channels from the admin API (``GET
/admin/channels``). ``--check`` writes nothing and exits 1 naming the files that are stale
(``tests/unit/test_generated.py`` fails the same way).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from config.settings import DEFAULT_RETRY_TIERS
from sender import topology
from sender.channels import registry

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = Path("deploy/rabbitmq/definitions.json")
RULES = Path("deploy/prometheus/outbox-rules.yml")
BACKLOG_ALERT = "OutboxQueueBacklog"
TABLE_START, TABLE_END = "<!-- channels -->", "<!-- /channels -->"
_BACKLOG = re.compile(r'(- alert: ' + BACKLOG_ALERT + r'\n\s+expr: [^\n]*?queue=~")([^"]*)(")')
_TABLE = re.compile(re.escape(TABLE_START) + r"\n.*?" + re.escape(TABLE_END), re.S)


class NotGenerated(ValueError):
    """A file lacks the place its generated part goes (it was edited by hand)."""


def definitions_json() -> str:
    """``deploy/rabbitmq/definitions.json`` as it should be."""
    return json.dumps(topology.definitions(DEFAULT_RETRY_TIERS), indent=2) + "\n"


def job_queues() -> list[str]:
    """Every lane of every channel: ``outbox.email``, ``outbox.email.bulk``, ``outbox.sms``..."""
    return [queue for d in registry.deliveries() for _, _, queue in d.lanes()]


def backlog_matcher() -> str:
    """The backlog alert's regular expression over the job queues, a PromQL string's
    content (anchored by Prometheus; ``\\\\.`` is a literal dot)."""
    return "|".join(q.replace(".", "\\\\.") for q in job_queues())


def rules(text: str) -> str:
    """The alerting rules ``text`` with the backlog alert's queue matcher generated."""
    if not _BACKLOG.search(text):
        raise NotGenerated(f"{RULES}: no `- alert: {BACKLOG_ALERT}` whose expr has "
                           'queue=~"..." on its first line')
    return _BACKLOG.sub(lambda m: m.group(1) + backlog_matcher() + m.group(3), text, count=1)


def channel_table() -> str:
    """The Markdown table of the declared channels, between its markers."""
    rows = [TABLE_START,
            "| channel | addresses | an opt-out's suppression reason | "
            "priority lane (routing key) | bulk lane, marketing (routing key) | sender factory |",
            "| --- | --- | --- | --- | --- | --- |"]
    for d in registry.deliveries():
        lanes = [f"`{queue}` (`{key}`)" for _, key, queue in d.lanes()]
        rows.append(f"| `{d.name}` | {d.channel.address.name} | `{d.channel.opt_out}` | "
                    f"{' | '.join(lanes)} | `{d.sender}` |")
    return "\n".join([*rows, TABLE_END])


def document(text: str) -> str:
    """A Markdown ``text`` with every channel table in it generated (none: unchanged)."""
    return _TABLE.sub(lambda _: channel_table(), text)


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold a channel table, relative to ``root``."""
    return [Path("README.md"), *sorted(p.relative_to(root)
                                       for p in (root / "docs").glob("*.md"))]


def targets(root: Path = ROOT) -> dict[Path, Callable[[str], str]]:
    """Each generated file (relative to ``root``) and what makes it from its current text."""
    made: dict[Path, Callable[[str], str]] = {DEFINITIONS: lambda _: definitions_json(),
                                              RULES: rules}
    made.update({path: document for path in documents(root) if (root / path).exists()})
    return made


def stale(root: Path = ROOT, *, write: bool = False) -> list[Path]:
    """The generated files whose content is not what the registry makes (rewritten when
    ``write``)."""
    found = []
    for path, make in targets(root).items():
        current = (root / path).read_text() if (root / path).exists() else ""
        wanted = make(current)
        if wanted != current:
            found.append(path)
            if write:
                (root / path).write_text(wanted)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outbox.generate",
                                description="write the files that list the channels")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a generated file is stale")
    args = p.parse_args(argv)
    try:
        changed = stale(write=not args.check)
    except NotGenerated as exc:
        print(f"outbox.generate: {exc}", file=sys.stderr)
        return 2
    for path in changed:
        print(f"{'stale' if args.check else 'written'}: {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
