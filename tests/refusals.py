"""The worker's refusal corpus: every job body the tests show the worker refusing, with the
words its reason must contain. Gathered from the tests that found them (hostile input, poison
bodies, rejected jobs, the model's unit cases) and the refusals that used to come later than
validation (the gate's phone-number key, the Twilio channel's number and segment checks, the
renderer's address and header checks). ``tests/integration/test_one_validation.py`` feeds all
of it to the worker, the client and ``outbox enqueue`` and expects the same reason from each.

Not here: a job on the wrong queue (a routing refusal: the client always routes it right) and
refusals that need the account's records (an unverified sender, missing sender information).
"""

from __future__ import annotations

import json
from typing import Any

ACCOUNT = "acct_corpus"


def _email(job_id: str, **fields: Any) -> dict[str, Any]:
    job = {"v": 1, "id": job_id, "account_id": ACCOUNT, "channel": "email",
           "category": "transactional", "to": "someone@example.com",
           "from": "Acme <sales@acme.example>", "subject": "Receipt", "text": "Thank you"}
    job.update(fields)
    return {k: v for k, v in job.items() if v is not ...}


def _sms(job_id: str, **fields: Any) -> dict[str, Any]:
    job = {"v": 1, "id": job_id, "account_id": ACCOUNT, "channel": "sms",
           "category": "transactional", "to": "+85291234567", "body": "Your code is 1234"}
    job.update(fields)
    return {k: v for k, v in job.items() if v is not ...}


def _raw(job: dict[str, Any]) -> bytes:
    return json.dumps(job, ensure_ascii=False).encode()


def _deep(job_id: str, depth: int) -> bytes:
    return (json.dumps(_email(job_id))[:-1] + ', "metadata": ' + '{"a": ' * depth + "1"
            + "}" * depth + "}").encode()


def _literal(job_id: str, literal: str) -> bytes:
    return json.dumps(_email(job_id, metadata={"score": 0})).replace(
        '"score": 0', f'"score": {literal}').encode()


#: name → (body, the channel's routing key, words the reason contains)
CORPUS: dict[str, tuple[bytes, str, str]] = {
    # test_poison: hostile bodies
    "deep": (_deep("c-deep", 5000), "email", "nested more than 64 levels deep"),
    "nan": (_literal("c-nan", "NaN"), "email", "NaN and Infinity are not JSON numbers"),
    "inf": (_literal("c-inf", "1e999"), "email", "a number is out of range (not finite)"),
    "v-true": (_raw(_email("c-vtrue", v=True)), "email", "v: must be the integer 1"),
    "v-float": (_raw(_email("c-vfloat", v=1.0)), "email", "v: must be the integer 1"),
    "not-after-number": (_raw(_email("c-na", not_after=12345)), "email",
                         "not_after: must be an RFC 3339"),
    "huge": (_raw(_email("c-huge", text="x" * 3_000_000)), "email", "over the limit of"),
    "no-id": (b'{"v": 1, "channel": "email", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
              "email", "nested more than 64 levels deep"),
    "not-json": (b"this is not json {", "email", "not valid JSON"),
    # test_poison's renderer case and more the renderer refused after the claim
    "from-no-address": (_raw(_email("c-from", **{"from": "nobody"})), "email",
                        "From: 'nobody' is not an email address"),
    "from-bad-domain": (_raw(_email("c-fromdom", **{"from": "Acme <s@acme_shop.example>"})),
                        "email", "From: invalid domain"),
    "from-two": (_raw(_email("c-from2", **{"from": "a@x.example, b@y.example"})), "email",
                 "From:"),
    "reply-to-bad": (_raw(_email("c-reply", reply_to="Support <help@>")), "email",
                     "Reply-To:"),
    "header-name-space": (_raw(_email("c-hname", headers={"X-Bad Name": "1"})), "email",
                          "invalid header name 'X-Bad Name'"),
    "header-name-long": (_raw(_email("c-hlong", headers={"X-" + "a" * 80: "1"})), "email",
                         "is over 76 characters"),
    # test_hostile_input: invisible characters and relay-control headers
    "to-zero-width": (_raw(_email("c-zw", to="us\u200ber@example.com")), "email",
                      "U+200B (ZERO WIDTH SPACE)"),
    **{f"header-{name}": (_raw(_email(f"c-h-{name.lower()}", headers={name: value})), "email",
                          f"header {name} is refused")
       for name, value in (("X-SES-CONFIGURATION-SET", "no-events"), ("X-SMTPAPI", "{}"),
                           ("Resent-Bcc", "spy@evil.example"), ("Errors-To", "spy@evil.example"))},
    # test_dead_letters: rejected jobs found by `jobs show`
    "to-not-an-address": (_raw(_email("c-toaddr", to="not an address")), "email",
                          "to: not an e-mail address"),
    "sms-to-123": (_raw(_sms("c-sms123", to="123")), "sms",
                   "to: not a possible phone number: '123'"),
    # the Twilio channel's refusals, made at validation now
    "sms-landline": (_raw(_sms("c-landline", to="+85221234567")), "sms",
                     "to: cannot take SMS (fixed_line)"),
    "sms-not-valid": (_raw(_sms("c-notvalid", to="+85230000000")), "sms",
                      "to: not a valid phone number"),
    "sms-too-long": (_raw(_sms("c-long", body="x" * 1600)), "sms",
                     "body: 11 GSM-7 segments, over the maximum of 10"),
    "sms-too-long-ucs2": (_raw(_sms("c-long2", body="好" * 700)), "sms",
                          "body: 11 UCS-2 segments, over the maximum of 10"),
    # tests/unit/test_models.py: the model's reasons
    "v-2": (_raw(_email("c-v2", v=2)), "email", "v: Input should be 1"),
    "id-space": (_raw(_email("has space")), "email", "id: job id must be 1-128 characters"),
    "id-colon": (_raw(_email("crm:991")), "email", "id: job id must be 1-128 characters"),
    "account-braces": (_raw({**_email("c-acct"), "account_id": "{acct}"}), "email",
                       "account_id: account id must be 1-128 characters"),
    "category": (_raw(_email("c-cat", category="spam")), "email",
                 "category: Input should be 'marketing'"),
    "no-body": (_raw(_email("c-nobody", text=None)), "email", "needs text or html"),
    "subject-crlf": (_raw(_email("c-subj", subject="a\r\nBcc: x@y")), "email",
                     "subject: String should match pattern"),
    "header-crlf": (_raw(_email("c-hcrlf", headers={"X-A": "1\r\nBcc: victim@x"})), "email",
                    "headers.X-A"),
    "notification-no-topic": (_raw(_email("c-topic", category="notification")), "email",
                              "needs a topic"),
    "not-after-words": (_raw(_email("c-na2", not_after="tomorrow")), "email", "not_after"),
    "not-after-no-zone": (_raw(_email("c-na3", not_after="2026-01-01T00:00:00")), "email",
                          "timezone"),
    "extra-field": (_raw(_email("c-extra", surprise=1)), "email",
                    "surprise: Extra inputs are not permitted"),
    "no-from": (_raw(_email("c-nofrom", **{"from": ...})), "email", "from: Field required"),
    "channel-unknown": (_raw({**_email("c-chan"), "channel": "fax"}), "email",
                        "channel must be "),
}
