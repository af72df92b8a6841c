"""What a commercial electronic message must carry (UEMO Cap. 593 s.8 and s.9, Cap. 593A s.7):
sender information and an unsubscribe facility, in English and Chinese; for email also the
RFC 8058 one-click ``List-Unsubscribe`` header pair. Transactional messages carry none of it.

Exceptions::

    MissingSenderInfo      the account has not set its business name, address and a contact
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from suppression.tokens import Unsubscribe, make_token


class MissingSenderInfo(ValueError):
    """A marketing message cannot go out without the account's sender information."""


@dataclass(frozen=True, slots=True)
class SenderInfo:
    business_name: str
    address: str
    contact_email: str
    contact_phone: str

    @classmethod
    def require(cls, fields: tuple[str, ...] | None) -> SenderInfo:
        """From the gate's answer; MissingSenderInfo naming what is missing."""
        info = cls(*(fields or ("", "", "", "")))
        missing = [n for n in ("business_name", "address") if not getattr(info, n).strip()]
        if not (info.contact_email.strip() or info.contact_phone.strip()):
            missing.append("contact_email or contact_phone")
        if missing:
            raise MissingSenderInfo(
                "marketing needs the account's sender information (UEMO s.8); missing: "
                f"{', '.join(missing)} (set it with `outbox accounts configure`)")
        return info

    @property
    def contact(self) -> str:
        return " / ".join(c for c in (self.contact_email, self.contact_phone) if c.strip())


@dataclass(frozen=True, slots=True)
class EmailCompliance:
    """Footers and headers of one marketing email."""

    headers: tuple[tuple[str, str], ...]
    footer_text: str
    footer_html: str


def email_compliance(info: SenderInfo, *, secret: str, public_url: str, mail_domain: str,
                     account_id: str, recipient: str, job_id: str) -> EmailCompliance:
    """List-Unsubscribe (https one-click + mailto), List-Unsubscribe-Post, bilingual footer."""
    token = make_token(secret, Unsubscribe(account_id, "email", recipient, job_id))
    url = f"{public_url}/u/{token}"
    mailto = f"mailto:unsubscribe+{token}@{mail_domain}?subject=unsubscribe"
    headers = (("List-Unsubscribe", f"<{url}>, <{mailto}>"),
               ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    text = (f"\n--\nSent by {info.business_name}, {info.address}. Contact: {info.contact}.\n"
            f"To stop receiving these messages, unsubscribe here: {url}\n"
            f"此訊息由{info.business_name}（{info.address}）發出。聯絡：{info.contact}。\n"
            f"如不欲再收到此類訊息，請按此取消訂閱：{url}\n")
    e = {k: html.escape(v) for k, v in (("name", info.business_name), ("addr", info.address),
                                        ("contact", info.contact), ("url", url))}
    footer_html = (
        '<hr><p style="font-size:12px;color:#555">'
        f"Sent by {e['name']}, {e['addr']}. Contact: {e['contact']}.<br>"
        f'To stop receiving these messages, <a href="{e["url"]}">unsubscribe here</a>.<br>'
        f"此訊息由{e['name']}（{e['addr']}）發出。聯絡：{e['contact']}。<br>"
        f'如不欲再收到此類訊息，請<a href="{e["url"]}">按此取消訂閱</a>。</p>')
    return EmailCompliance(headers, text, footer_html)


def sms_marketing_body(body: str, info: SenderInfo) -> str:
    """Sender identification and the opt-out line, in English and Chinese."""
    return (f"{body}\n{info.business_name} {info.contact}\n"
            "Reply STOP to unsubscribe. 回覆STOP取消訂閱。")
