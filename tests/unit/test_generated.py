"""The files that list the channels are generated from the registry (``python -m
outbox.generate``, outbox/generate.py) and are current: a stale one fails here, with the
command that rewrites it. The throwaway channel's pass through the generator:
tests/unit/test_channel_registry.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from outbox import generate

ROOT = generate.ROOT


def test_every_generated_file_is_current() -> None:
    stale = generate.stale()
    assert stale == [], f"run `python -m outbox.generate` (stale: {', '.join(map(str, stale))})"


def test_the_docs_hold_the_channel_table() -> None:
    """At least one document has the generated table (else the check above checks none)."""
    texts = [(ROOT / p).read_text() for p in generate.documents()]
    assert sum(t.count(generate.TABLE_START) for t in texts) >= 1
    for text in texts:
        assert text.count(generate.TABLE_START) == text.count(generate.TABLE_END)


def test_the_backlog_alert_watches_exactly_the_job_lanes() -> None:
    import re

    import yaml

    rules = yaml.safe_load((ROOT / generate.RULES).read_text())
    [expr] = [r["expr"] for g in rules["groups"] for r in g["rules"]
              if r.get("alert") == generate.BACKLOG_ALERT]
    matcher = re.search(r'queue=~"([^"]*)"', expr)
    assert matcher
    pattern = matcher.group(1).replace("\\\\", "\\")  # the PromQL string's content
    queues = ["outbox.email", "outbox.email.bulk", "outbox.sms", "outbox.sms.bulk",
              "outbox.retry.60", "outbox.dead", "outbox.events", "outbox.status", "outboxXsms"]
    assert [q for q in queues if re.fullmatch(pattern, q)] == queues[:4]


def test_a_stale_file_is_named_and_rewritten(tmp_path: Path) -> None:
    for path in generate.targets():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    rules = tmp_path / generate.RULES
    rules.write_text(rules.read_text().replace("outbox\\\\.sms|", ""))  # a channel forgotten
    (tmp_path / generate.DEFINITIONS).write_text("{}\n")
    assert generate.stale(tmp_path) == [generate.DEFINITIONS, generate.RULES]
    assert generate.stale(tmp_path, write=True) == [generate.DEFINITIONS, generate.RULES]
    assert generate.stale(tmp_path) == []
    assert rules.read_text() == (ROOT / generate.RULES).read_text()


def test_a_file_without_its_generated_place_is_refused() -> None:
    with pytest.raises(generate.NotGenerated, match="OutboxQueueBacklog"):
        generate.rules("groups: []\n")


def test_the_check_command_exits_0_when_current() -> None:
    done = subprocess.run([sys.executable, "-m", "outbox.generate", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "")
