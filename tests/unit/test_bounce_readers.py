"""Bounces by mail, per server family and per format, on the corpus of tests/data/bounces/mail
(genuine Postfix and Exim bounces, RFC examples, and messages written from each server's
documentation; see its README). ``outbox bounces parse`` is checked as a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

import pytest
from bounce_corpus_score import (  # scripts/ (tests/conftest.py)
    CORPUS,
    expected,
    replies_score,
    score,
)

from sender.provider_event_applier import evidence
from webhooks.providers import dsn
from webhooks.providers.base import PayloadError

ROOT = Path(__file__).resolve().parents[2]
CASES = [(d.name, f, want) for d in sorted(CORPUS.iterdir()) if (d / "labels.json").exists()
         for f, want in sorted(expected(d).items())]


@pytest.mark.parametrize(("directory", "file", "want"), CASES,
                         ids=[f"{d}/{f}" for d, f, _ in CASES])
def test_each_message_reads_with_the_right_kind_per_recipient(directory, file, want):
    report = dsn.read((CORPUS / directory / file).read_bytes(), (), "mail.outbox.example")
    got = {line["recipient"]: line for line in dsn.describe(report)}
    if not want:
        assert report.format == "none" and list(got) == [None]
        with pytest.raises(PayloadError, match="auto-reply"):
            dsn.parse((CORPUS / directory / file).read_bytes())
        return
    assert report.format != "none", report.why
    delayed = "-delayed" in file
    for recipient, kind in want.items():
        assert got[recipient]["kind"] == ("soft" if delayed and kind == "hard" else kind)
        if delayed:
            assert got[recipient]["type"] == "soft_bounced"  # a delay suppresses nothing
        assert got[recipient]["type"] != "bounced" or got[recipient]["kind"] == "hard"
    assert report.ids.job_id and report.ids.job_id.startswith("job-") or directory in (
        "docs", "families")  # messages written from documentation may attach no original


#: file prefix in families/ (and the genuine directories) -> the ``format`` that must read it
FAMILY_FORMATS = {
    "googlegroups": "googlegroups", "fml": "fml", "mailman": "mailman", "james": "james",
    "verizon": "verizon", "imail": "imail", "kddi": "kddi", "notes": "notes",
    "anonymous": "anonymous", "v5sendmail": "sendmail", "interscan": "interscan",
    "yahoo": "qmail", "orange": "postfix", "messagelabs": "rfc3464", "aol": "rfc3464",
    "exchange2003": "exchange", "arf": "complaint",
}


@pytest.mark.parametrize("family", sorted(FAMILY_FORMATS))
def test_each_family_is_read_by_its_own_reader(family):
    files = sorted((CORPUS / "families").glob(f"{family}-*.eml"))
    assert files
    for file in files:
        report = dsn.read(file.read_bytes(), (), "mail.outbox.example")
        assert report.format == FAMILY_FORMATS[family], (file.name, report.format, report.why)


@pytest.mark.parametrize(("directory", "fmt"), [("dma", "dma"), ("opensmtpd", "rfc3464")])
def test_genuine_bounces_of_dma_and_opensmtpd_are_read(directory, fmt):
    """Made here by the servers themselves (scripts/dma_bounces.py, opensmtpd_bounces.py)."""
    labels = expected(CORPUS / directory)
    assert len(labels) >= 13
    for file, want in labels.items():
        report = dsn.read((CORPUS / directory / file).read_bytes(), (), "mail.outbox.example")
        assert report.format == fmt
        got = {f.recipient: dsn.outcome_of(f).kind for f in report.findings}
        assert got == want, file
        assert report.ids.attribution in ("verp-quoted", "message-id")  # the VERP is quoted
        assert (report.ids.job_id or "").startswith(
            "job-dma-" if directory == "dma" else "job-osmtpd-")


@pytest.mark.parametrize("file", ["googlegroups-rejected.eml", "fml-notmember.eml",
                                  "mailman-refused.eml", "mailman-rejected.eml"])
def test_a_list_refusing_a_post_is_the_lists_block_never_a_hard_bounce(file):
    raw = (CORPUS / "families" / file).read_bytes()
    [line] = dsn.describe(dsn.read(raw, (), "mail.outbox.example"))
    list_address = next(iter(expected(CORPUS / "families")[file]))
    assert line["recipient"] == list_address  # the list, not our sender nor its owner
    assert line["type"] == "soft_bounced" and line["kind"] in ("block", "transient")
    assert line["reason"] in ("rejected", "onhold")


def test_the_false_hard_corpus_has_no_hard_reading():
    """Soft, block and transient bounces only (the mail corpus' non-hard recipients and the
    replies of not-hard.jsonl): not one may be read hard."""
    table = score()
    assert sum(r.get("not_hard", 0) for r in table.values()) >= 60
    assert sum(r.get("false_hard", 0) for r in table.values()) == 0
    replies = replies_score()
    assert replies["replies"] >= 50 and replies["false_hard"] == []
    assert replies["right_kind"] >= 0.9 * replies["replies"]


def test_help_text_words_without_a_code_do_not_make_a_recipient_hard():
    """"Possible reasons: the address does not exist..." names no one: without a reply code
    the recipient is not hard; with the server's 550 5.1.1 for it, it is."""
    raw = (CORPUS / "families" / "anonymous-helptext.eml").read_bytes()
    [finding] = dsn.read(raw, (), "mail.outbox.example").findings
    assert finding.recipient == "pat@helpful.example"
    assert dsn.outcome_of(finding).kind == "soft"
    coded = raw.replace(b"pat@helpful.example\n", b"pat@helpful.example: 550 5.1.1 no such user\n")
    [finding] = dsn.read(coded, (), "mail.outbox.example").findings
    assert dsn.outcome_of(finding).kind == "hard"


def test_the_corpus_score_by_family_is_complete():
    table = score()
    assert sum(r.get("bounces", 0) for r in table.values()) >= 60
    for family, row in table.items():
        assert row.get("read", 0) == row.get("bounces", 0), family
        assert row.get("right_kind", 0) == row.get("recipients", 0), (family, row.get("misses"))
        assert row.get("left_alone", 0) == row.get("not_bounces", 0), family


@pytest.mark.parametrize(("mta", "family"), [("postfix", "postfix"), ("exim", "exim")])
def test_the_text_of_a_genuine_bounce_alone_is_read_by_its_family(mta, family):
    """Older releases (and relays that strip the report) send only the notification text."""
    msg = message_from_bytes((CORPUS / mta / "multi.eml").read_bytes())
    notification = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    header = "".join(f"{k}: {v}\n" for k, v in msg.items() if k.lower() in (
        "from", "to", "subject", "message-id", "auto-submitted"))
    text = (header + "\n" + notification.get_payload()).encode()
    report = dsn.read(text, (), "mail.outbox.example")
    kinds = {f.recipient: dsn.outcome_of(f).kind for f in report.findings}
    assert report.format == family
    assert kinds == {"nouser@refuse.test": "hard", "quota@refuse.test": "soft",
                     "spamhaus@refuse.test": "block"}
    assert all(f.reply_code and f.status for f in report.findings)


def test_attribution_prefers_verp_then_our_message_id():
    raw = (CORPUS / "postfix" / "msgid-only.eml").read_bytes()
    report = dsn.read(raw, (), "mail.outbox.example")
    assert (report.ids.job_id, report.ids.account_id, report.ids.attribution) == (
        "job-pf-msgid-only", "acct_pf", "message-id")
    other = dsn.read(raw, (), "elsewhere.example")  # not our Message-ID: no job
    assert other.ids.job_id is None and other.ids.provider_message_id
    nouser = (CORPUS / "postfix" / "nouser.eml").read_bytes()
    envelope = json.loads((CORPUS / "postfix" / "labels.json").read_text())["nouser"]
    verp = dsn.read(nouser, envelope["envelope_to"], "mail.outbox.example")
    assert (verp.ids.job_id, verp.ids.account_id, verp.ids.attribution) == (
        "job-pf-nouser", "acct_pf", "verp")
    quoted = dsn.read(nouser, (), "elsewhere.example")  # X-Postfix-Sender quotes the VERP
    assert (quoted.ids.job_id, quoted.ids.attribution) == ("job-pf-nouser", "verp-quoted")


def test_temporary_replies_are_never_hard_and_vague_ones_not_hard():
    assert dsn.outcome_of(dsn.Finding("a@x.example", "failed", "4.1.1", 450,
                                      "450 4.1.1 user unknown")).kind == "soft"
    assert dsn.outcome_of(dsn.Finding("a@x.example", "delayed", "5.1.1", 550,
                                      "550 5.1.1 user unknown")).kind == "soft"
    assert dsn.outcome_of(dsn.Finding("a@x.example", "failed", None, 550,
                                      "550 Requested action not taken")).kind == "soft"
    assert dsn.outcome_of(dsn.Finding("a@x.example", "failed", "5.7.1", 554,
                                      "554 5.7.1 blocked using zen.spamhaus.org")).kind == "block"


def test_the_evidence_kept_with_a_suppression():
    [event] = dsn.parse((CORPUS / "postfix" / "nouser.eml").read_bytes())
    text = evidence(event)
    assert text.startswith("smtp; 550 5.1.1 <nouser@refuse.test>")
    assert "report <" in text and "@mx1.sender-relay.test>" in text
    assert f"received {event.at}" in text


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "outbox", "bounces", "parse", *args],
                          input=stdin, capture_output=True, env=env, cwd=ROOT, timeout=60)


def test_bounces_parse_prints_one_line_per_recipient_and_exits_0():
    done = _cli(str(CORPUS / "postfix" / "multi.eml"),
                str(CORPUS / "docs" / "autoreply-rfc3834.eml"))
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert done.returncode == 0
    assert [(x["recipient"], x["type"], x["kind"]) for x in lines] == [
        ("nouser@refuse.test", "bounced", "hard"), ("quota@refuse.test", "soft_bounced", "soft"),
        ("spamhaus@refuse.test", "soft_bounced", "block"), (None, "none", None)]
    first = lines[0]
    assert {k: first[k] for k in ("action", "status", "reply_code", "format", "job_id",
                                  "account_id")} == {
        "action": "failed", "status": "5.1.1", "reply_code": 550, "format": "rfc3464",
        "job_id": "job-pf-multi", "account_id": "acct_pf"}
    assert first["source"].endswith("multi.eml") and "auto-reply" in lines[-1]["why"]


def test_bounces_parse_reads_directories_and_stdin_and_exits_2_for_an_unreadable_path():
    done = _cli(str(CORPUS / "exim"), "-", "/nonexistent/bounce.eml",
                stdin=(CORPUS / "docs" / "qmail-userunknown.eml").read_bytes())
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert done.returncode == 2 and b"cannot read /nonexistent/bounce.eml" in done.stderr
    assert len({x["source"] for x in lines}) == 23  # 21 Exim bounces, labels.json, stdin
    assert [x["type"] for x in lines if x["source"].endswith("labels.json")] == ["none"]
    assert [x["format"] for x in lines if x["source"] == "-"] == ["qmail", "qmail"]
