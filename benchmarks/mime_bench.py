"""Render 10,000 realistic marketing emails with sender.mime and with EmailMessage; print µs each.

    .venv/bin/python benchmarks/mime_bench.py [N]

The job: a ~2 KB html + text marketing message (English with some Chinese), a Chinese subject, a
Chinese display name, one custom header, and per recipient a List-Unsubscribe header and footers
carrying the recipient's own unsubscribe link (so the bodies differ message to message).
"""

from __future__ import annotations

import sys
import time
from email import policy
from email.message import EmailMessage
from email.utils import formatdate

from sender.mime import render_email
from sender.models import EmailJob

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
DOMAIN = "mail.outbox.example"
SUBJECT = "【春季優惠】全場八折，只限本週！Spring sale: 20% off everything this week"
FROM = "Acme 亞克美 <sales@acme.example>"

HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Spring sale</title></head>
<body style="margin:0;padding:0;font-family:Helvetica,Arial,sans-serif;background:#f4f4f4">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td align="center">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" style="background:#ffffff">
<tr><td style="padding:24px"><h1 style="font-size:24px;color:#222">Spring sale: 20% off
everything</h1>
<p style="font-size:16px;line-height:24px;color:#444">Dear customer, our spring collection has
arrived and for one week only everything in store and online is 20% off. Use the code
<strong>SPRING20</strong> at checkout.</p>
<p style="font-size:16px;line-height:24px;color:#444">
親愛的顧客：春季新品已經到店，本週內全場貨品八折優惠，結帳時輸入優惠碼 <strong>SPRING20</strong>
即可。</p>
<p><a
href="https://shop.acme.example/spring?utm_source=email&amp;utm_medium=newsletter&amp;utm_campaign=spring"
style="display:inline-block;padding:12px 24px;background:#d33;color:#fff;text-decoration:none;
border-radius:4px"
>Shop now 立即選購</a></p>
<p style="font-size:14px;line-height:20px;color:#666">Offer valid until 31 March. Cannot be
combined with other offers. Free delivery on orders over HK$500 to addresses in Hong Kong.</p>
</td></tr></table></td></tr></table>
</body></html>
"""
if len(HTML.encode()) < 2048:  # pad to a typical 2 KiB newsletter body
    HTML = HTML + "<!-- " + "x" * max(0, 2048 - len(HTML.encode()) - 9) + " -->\n"
TEXT = """Spring sale: 20% off everything

Dear customer, our spring collection has arrived and for one week only everything in store and
online is 20% off. Use the code SPRING20 at checkout.

親愛的顧客：春季新品已經到店，本週內全場貨品八折優惠，結帳時輸入優惠碼 SPRING20 即可。

Shop now: https://shop.acme.example/spring?utm_source=email&utm_medium=newsletter&utm_campaign=spring

Offer valid until 31 March. Cannot be combined with other offers. Free delivery on orders over
HK$500 to addresses in Hong Kong.
"""


def make_jobs(n: int) -> list[EmailJob]:
    return [
        EmailJob.model_validate({
            "v": 1, "id": f"01JD6Y3M9Q0B8ZP6X2N4K{i:05d}", "account_id": "acct_1042",
            "channel": "email", "category": "marketing", "to": f"customer{i}@example.com",
            "from": FROM, "subject": SUBJECT,
            "text": TEXT, "html": HTML, "headers": {"X-Campaign": "spring-2026"},
        })
        for i in range(n)
    ]


def unsub(i: int) -> str:
    return f"https://outbox.acme.example/u/tok{i:08d}abcdefghijklmnopqrstuvwxyz"


def footers(i: int) -> tuple[str, str]:
    url = unsub(i)
    return (f"\n--\nAcme Ltd, 1 Queen's Road Central, Hong Kong. Unsubscribe: {url}\n",
            f'<p style="font-size:12px;color:#999">Acme Ltd, 1 Queen\'s Road Central, Hong Kong. '
            f'<a href="{url}">Unsubscribe 取消訂閱</a></p>')


def with_mime(jobs: list[EmailJob]) -> float:
    now = time.time()
    t0 = time.perf_counter()
    for i, job in enumerate(jobs):
        ft, fh = footers(i)
        render_email(job, message_id_domain=DOMAIN, date=now, footer_text=ft, footer_html=fh,
                     extra_headers=(("List-Unsubscribe", f"<{unsub(i)}>"),
                                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
    return time.perf_counter() - t0


def with_emailmessage(jobs: list[EmailJob]) -> float:
    now = time.time()
    t0 = time.perf_counter()
    for i, job in enumerate(jobs):
        ft, fh = footers(i)
        msg = EmailMessage()
        msg["From"] = job.from_
        msg["To"] = job.to
        msg["Subject"] = job.subject
        msg["Date"] = formatdate(now)
        msg["Message-ID"] = f"<{job.id}@{DOMAIN}>"
        msg["List-Unsubscribe"] = f"<{unsub(i)}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        for k, v in job.headers.items():
            msg[k] = v
        assert job.text is not None and job.html is not None  # make_jobs sets both
        msg.set_content(job.text + ft)
        i_body = job.html.rfind("</body>")
        msg.add_alternative(job.html[:i_body] + fh + job.html[i_body:], subtype="html")
        msg.as_bytes(policy=policy.SMTP)
    return time.perf_counter() - t0


def main() -> None:
    jobs = make_jobs(N)
    with_mime(jobs[:200])  # warm up
    with_emailmessage(jobs[:50])
    t_mime = min(with_mime(jobs) for _ in range(3))
    t_em = with_emailmessage(jobs)
    size = len(render_email(jobs[0], message_id_domain=DOMAIN, footer_text=footers(0)[0],
                            footer_html=footers(0)[1]).data)
    print(f"{N} messages of ~{size} bytes "
          f"(html {len(HTML.encode())} B + text {len(TEXT.encode())} B)")
    print(f"sender.mime.render_email:               {t_mime / N * 1e6:8.1f} µs/message")
    print(f"EmailMessage + policy.SMTP as_bytes():  {t_em / N * 1e6:8.1f} µs/message")
    print(f"speed-up: {t_em / t_mime:.0f}x")


if __name__ == "__main__":
    main()
