"""Tests for suppression.classify: key cases, the real-bounce corpus, and fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suppression.classify import (
    Outcome,
    classify_provider,
    classify_reply,
    classify_smtp,
    classify_twilio,
)
from suppression.classify_rules import KINDS, REASON_KIND, REASONS

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bounces" / "corpus.jsonl"


@pytest.mark.parametrize(
    ("reply", "kind", "reason"),
    [
        ("550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown", "hard", "userunknown"),
        ("550 5.1.1 user unknown", "hard", "userunknown"),
        ("550 5.7.1 Service unavailable; client [192.0.2.1] blocked using Spamhaus", "block", "blocked"),
        ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked", "block", "blocked"),
        ("452 4.2.2 mailbox full", "soft", "mailboxfull"),
        ("550 5.7.1 Our system has detected that this message is likely suspicious due to the very low "
         "reputation of the sending IP address/domain.", "block", "badreputation"),
        ("550 5.1.6 recipient no longer on server: bob@icloud.com", "hard", "hasmoved"),
        ("550 5.2.1 Host Unknown", "hard", "hostunknown"),
        ("552 5.3.4 Message size exceeds fixed maximum message size", "soft", "mesgtoobig"),
        ("451 4.4.2 Timeout - closing connection.", "transient", "expired"),
        ("530 5.7.0 Must issue a STARTTLS command first.", "transient", "failedstarttls"),
        ("550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
         "block", "authfailure"),
        ("550 5.0.0 Relaying Denied", "block", "norelaying"),
        ("450 4.1.8 <a@example.jp>: Sender address rejected: Domain not found", "block", "rejected"),
        ("I am out of the office until 02/02/2018", None, "vacation"),
        ("250 2.0.0 Ok: queued as 4D8E32E0F1", None, "delivered"),
        ("X-Unix; 255", "transient", "mailererror"),
        ("550 something nobody has a rule for", "soft", "undefined"),
        ("450 something nobody has a rule for", "transient", "undefined"),
        ("451 something nobody has a rule for", "transient", "systemerror"),
        ("5.1.1", "hard", "userunknown"),
        ("4.2.2", "soft", "mailboxfull"),
        ("", "transient", "undefined"),
    ],
)
def test_classify_reply_key_cases(reply: str, kind: str | None, reason: str) -> None:
    out = classify_reply(reply)
    assert (out.kind, out.reason) == (kind, reason)


def test_gmail_rate_closing_connection_is_a_rate_block() -> None:
    out = classify_reply("421 4.7.0 Try again later, closing connection.")
    assert out.kind == "block"
    assert out.reason in ("speeding", "toomanyconn")


def test_reputation_block_with_5xx_is_block_not_hard() -> None:
    out = classify_reply("554 Connection refused. This IP has a poor reputation on Cloudmark Sender Intelligence (CSI). IB103")
    assert (out.kind, out.reason, out.permanent, out.retryable) == ("block", "badreputation", False, True)


def test_classify_reply_extracts_codes() -> None:
    out = classify_reply("550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown")
    assert out == Outcome("hard", "userunknown", 550, "5.1.1")
    assert out.as_dict() == {"kind": "hard", "reason": "userunknown", "code": 550, "enhanced": "5.1.1"}
    assert out.permanent is True and out.retryable is False


def test_classify_reply_multiline() -> None:
    reply = ("550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
             "550-5.1.1 double-checking the recipient's email address for typos or\n"
             "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser")
    out = classify_reply(reply)
    assert (out.kind, out.reason, out.code, out.enhanced) == ("hard", "userunknown", 550, "5.1.1")


def test_classify_smtp_matches_classify_reply() -> None:
    assert classify_smtp(452, "The recipient's inbox is out of storage space.", "4.2.2") == Outcome(
        "soft", "mailboxfull", 452, "4.2.2")
    assert classify_smtp(250, "OK") == Outcome(None, "delivered", 250, None)
    assert classify_smtp(None, "", "5.2.2").reason == "mailboxfull"
    assert classify_smtp(550, "", "not-a-code") == Outcome("soft", "undefined", 550, None)


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (21211, "hard", "userunknown"), ("21614", "hard", "userunknown"), (21610, "hard", "suppressed"),
        (30003, "soft", "networkerror"), (30005, "hard", "userunknown"), (30006, "hard", "notaccept"),
        (30007, "block", "filtered"), (20429, "transient", "speeding"), (429, "transient", "speeding"),
        (30001, "transient", "systemfull"), (30008, "transient", "undefined"), (30004, "block", "blocked"),
        (21408, "block", "policyviolation"), (21612, "hard", "notaccept"), (None, None, "delivered"),
        (99999, "transient", "undefined"), ("junk", "transient", "undefined"),
    ],
)
def test_classify_twilio(code: int | str | None, kind: str | None, reason: str) -> None:
    out = classify_twilio(code)
    assert (out.kind, out.reason) == (kind, reason)


@pytest.mark.parametrize(
    ("args", "kind", "reason"),
    [
        (("ses", "Permanent", "NoEmail"), "hard", "userunknown"),
        (("ses", "Permanent", "OnAccountSuppressionList"), "hard", "suppressed"),
        (("ses", "Transient", "MailboxFull"), "soft", "mailboxfull"),
        (("ses", "Transient", "MessageTooLarge"), "soft", "mesgtoobig"),
        (("ses", "Transient", "ContentRejected"), "block", "contenterror"),
        (("ses", "Undetermined", None), "transient", "undefined"),
        (("ses", "Complaint", None), "complaint", "feedback"),
        (("ses", "Permanent", "General", "smtp; 550 5.1.1 user unknown"), "hard", "userunknown"),
        (("ses", "Permanent", "General", "smtp; 550 5.7.1 blocked using Spamhaus"), "block", "blocked"),
        (("ses", "Permanent", "General"), "hard", "undefined"),
        (("sendgrid", "bounce", "bounce", "550 5.1.1 The email account that you tried to reach does not exist."),
         "hard", "userunknown"),
        (("sendgrid", "bounce", "blocked", "554 5.7.1 Client host blocked"), "block", "blocked"),
        (("sendgrid", "dropped", "Bounced Address"), "hard", "suppressed"),
        (("sendgrid", "spamreport", None), "complaint", "feedback"),
        (("mailgun", "permanent", "suppress-bounce"), "hard", "suppressed"),
        (("mailgun", "temporary", "generic", "452 4.2.2 The email account that you tried to reach is over quota."),
         "soft", "mailboxfull"),
        (("mailgun", "permanent", "generic", "550 5.1.1 No such user"), "hard", "userunknown"),
        (("postmark", "HardBounce", None), "hard", "undefined"),
        (("postmark", "SpamComplaint", None), "complaint", "feedback"),
        (("postmark", "BadEmailAddress", None), "hard", "userunknown"),
        (("postmark", "DnsError", None), "transient", "networkerror"),
        (("postmark", "AutoResponder", None), None, "vacation"),
        (("postmark", "Blocked", None, "550 5.7.1 Message rejected due to local policy"), "block", "policyviolation"),
        (("postmark", "SoftBounce", None, "452 4.2.2 Mailbox full"), "soft", "mailboxfull"),
        (("unknownesp", "whatever", None), "transient", "undefined"),
    ],
)
def test_classify_provider(args: tuple, kind: str | None, reason: str) -> None:
    out = classify_provider(*args)
    assert (out.kind, out.reason) == (kind, reason)


def test_complaint_is_not_refined_by_diagnostic() -> None:
    out = classify_provider("ses", "Complaint", None, "550 5.1.1 user unknown")
    assert (out.kind, out.reason) == ("complaint", "feedback")


def test_reason_kind_table_is_complete() -> None:
    assert REASONS == {
        "userunknown", "hostunknown", "hasmoved", "notaccept", "suppressed", "mailboxfull", "exceedlimit",
        "mesgtoobig", "expired", "networkerror", "systemerror", "systemfull", "toomanyconn", "speeding",
        "mailererror", "suspend", "blocked", "badreputation", "spamdetected", "virusdetected",
        "policyviolation", "securityerror", "authfailure", "requireptr", "notcompliantrfc", "contenterror",
        "rejected", "norelaying", "filtered", "syntaxerror", "failedstarttls", "feedback", "delivered",
        "vacation", "onhold", "undefined",
    }
    assert set(REASON_KIND.values()) <= KINDS


def _corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_corpus_accuracy() -> None:
    rows = _corpus()
    assert len(rows) >= 150
    assert len({r["reply"] for r in rows}) == len(rows)
    results = [(classify_reply(r["reply"]), r) for r in rows]
    kind_acc = sum(o.kind == r["kind"] for o, r in results) / len(rows)
    reason_acc = sum(o.reason == r["reason"] for o, r in results) / len(rows)
    misses = [(r["reply"][:80], r["reason"], o.reason) for o, r in results if o.reason != r["reason"]]
    print(f"corpus={len(rows)} kind_accuracy={kind_acc:.3f} reason_accuracy={reason_acc:.3f} misses={misses}")
    assert kind_acc >= 0.90
    assert reason_acc >= 0.80


def test_corpus_labels_are_in_vocabulary() -> None:
    for row in _corpus():
        assert row["reason"] in REASONS
        # a hard reason is soft on a temporary reply or words (no guess made hard)
        assert row["kind"] == REASON_KIND[row["reason"]] or (
            REASON_KIND[row["reason"]] == "hard" and row["kind"] == "soft")
        assert row["source"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_classify_reply_never_raises(text: str) -> None:
    out = classify_reply(text)
    assert out.reason in REASONS
    assert out.kind in KINDS


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(-1000, 1000)), st.text(max_size=200), st.one_of(st.none(), st.text(max_size=12)))
def test_classify_smtp_never_raises(code: int | None, text: str, enhanced: str | None) -> None:
    out = classify_smtp(code, text, enhanced)
    assert out.reason in REASONS
    assert out.kind in KINDS


def test_the_classify_command_reads_one_reply_per_line(monkeypatch, capsys):
    import io
    import json as _json

    from outbox.cli import main

    lines = "550 5.1.1 <bob@example.com>: User unknown\n\n452 4.2.2 Mailbox full\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["classify", "-"]) == 0
    out = [_json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["kind"], o["reason"]) for o in out] == [("hard", "userunknown"),
                                                      ("soft", "mailboxfull")]
    assert main(["classify", "421 4.7.0 Try again later"]) == 0
    assert _json.loads(capsys.readouterr().out)["kind"] in ("block", "transient")


# --- no guess made hard (issue 20) ---------------------------------------------------------

NOT_HARD = CORPUS.parent / "not-hard.jsonl"


@pytest.mark.parametrize(
    ("reply", "kind", "reason"),
    [
        # evidence that names the recipient: hard
        ("550 5.2.1 The email account that you tried to reach is disabled.", "hard", "suspend"),
        ("550 5.4.4 Unable to route: no such domain", "hard", "hostunknown"),
        ("550 5.1.9 something", "hard", "userunknown"),  # any 5.1.x but the sender ones
        ("550 No such user here", "hard", "userunknown"),
        # the same evidence on a temporary reply, or with words saying it is temporary: soft
        ("450 4.1.1 user unknown", "soft", "userunknown"),
        ("550 4.2.1 mailbox disabled", "soft", "suspend"),
        ("550 5.2.1 mailbox temporarily disabled, try again later", "soft", "suspend"),
        # a basic code alone is no evidence
        ("551 User not local", "soft", "undefined"),
        ("553 Requested action not taken: mailbox name not allowed", "soft", "undefined"),
        ("521 closed", "soft", "undefined"),
        ("550 Requested action not taken: mailbox unavailable", "soft", "undefined"),
        # words about our sender, or a policy wrapped as "Recipient address rejected:"
        ("550 Sender address does not exist", "block", "rejected"),
        ("550 5.7.1 <x@example.com>: Recipient address rejected: Message contains a virus",
         "block", "virusdetected"),
        ("553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", "block",
         "norelaying"),
    ],
)
def test_no_guess_made_hard(reply: str, kind: str, reason: str) -> None:
    out = classify_reply(reply)
    assert (out.kind, out.reason) == (kind, reason)


def test_the_not_hard_reply_corpus_reads_none_hard() -> None:
    rows = [json.loads(line) for line in NOT_HARD.read_text().splitlines() if line.strip()]
    assert len(rows) >= 50 and all(r["kind"] != "hard" and r["source"] for r in rows)
    outcomes = [classify_reply(r["reply"]) for r in rows]
    assert [r["reply"] for r, o in zip(rows, outcomes, strict=True) if o.kind == "hard"] == []
    assert sum(o.kind == r["kind"] for r, o in zip(rows, outcomes, strict=True)) >= 0.9 * len(rows)


def test_every_reason_has_a_meaning_and_the_cli_prints_the_taxonomy() -> None:
    import os
    import subprocess
    import sys

    from suppression.classify_rules import REASON_DOCS

    assert set(REASON_DOCS) == REASONS
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "outbox", "classify", "--reasons"],
                          capture_output=True, cwd=root, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert {x["reason"] for x in lines} == REASONS
    assert {x["reason"]: x["kind"] for x in lines}["suspend"] == "hard"
    assert all(x["meaning"] for x in lines)
