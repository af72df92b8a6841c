"""sender.validation: the corpus' reasons, the SMS cost notes, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sender.client import sms_job, sms_warnings
from sender.compliance import SenderInfo
from sender.models import InvalidJob
from sender.validation import Rules, sms_notes, validate
from tests.refusals import CORPUS

ROOT = Path(__file__).resolve().parents[2]
SHOP = SenderInfo("Demo Shop Ltd", "1 Queen's Road Central, Hong Kong", "hello@demo.example", "")


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_corpus_body_is_refused_with_its_words(name):
    body, _, words = CORPUS[name]
    with pytest.raises(InvalidJob) as caught:
        validate(body)
    assert words in caught.value.reason


def test_the_rules_follow_the_settings():
    body = json.dumps({"v": 1, "id": "r1", "account_id": "a", "channel": "sms",
                       "category": "transactional", "to": "2025550123", "body": "x" * 200}
                      ).encode()
    with pytest.raises(InvalidJob, match="to: not a possible phone number"):
        validate(body)  # HK: 10 digits are no number
    with pytest.raises(InvalidJob, match="2 GSM-7 segments, over the maximum of 1"):
        validate(body, Rules(sms_region="US", sms_max_segments=1))
    assert validate(body, Rules(sms_region="US")).to == "2025550123"  # kept as given


def _sms(body: str, category: str = "transactional") -> object:
    return sms_job(id="n1", account_id="acct_demo", category=category, to="+85291234567",
                   body=body)


def test_a_plain_gsm7_transactional_sms_has_no_notes():
    assert sms_warnings(_sms("Your code is 1234")) == ()
    assert sms_warnings(_sms("€{[]}~ fine")) == ()


def test_a_character_outside_gsm7_is_named_with_what_it_costs():
    [note] = sms_warnings(_sms("It’s " + "x" * 150))
    assert "'’' (U+2019) at 2 not in GSM-7" in note
    assert "the whole SMS is UCS-2" in note and "3 segments (1 segment in GSM-7 without it)" in note


def test_the_marketing_footer_makes_a_short_sms_ucs2_and_two_segments():
    """The issue's case: a 10-character marketing SMS, 2 UCS-2 segments with the footer."""
    job = _sms("Sale today", "marketing")
    [note] = sms_notes(job, sender=SHOP)
    assert note == ("the marketing footer (sender information and the bilingual STOP line) "
                    "makes the SMS UCS-2, 70 characters a segment (67 when split): 2 segments "
                    "(1 segment in GSM-7 without it)")
    [unknown] = sms_warnings(job)  # the client does not know the account's footer
    assert "at least 1 segment" in unknown


def test_the_footer_over_the_maximum_is_said():
    notes = sms_notes(_sms("好" * 660, "marketing"), sender=SHOP, max_segments=10)
    assert notes[0].startswith("'好' (U+597D) at 0")
    assert "the marketing footer adds 1 segment(s): 11 segments instead of 10 segments" in notes
    assert notes[-1] == ("with the marketing footer the SMS is 11 segments, over the maximum "
                         "of 10: the worker will refuse it")


def test_validation_and_the_client_import_no_sender():
    """sender.validation (what the client validates with) loads no channel's sender."""
    code = ("import sys, sender.validation; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiosmtplib', 'twilio', 'aiohttp', 'dns', 'aio_pika', 'redis')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
