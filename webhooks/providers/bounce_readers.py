"""How mail servers write bounces that are not (only) RFC 3464: rules as data, read by
:mod:`webhooks.providers.dsn`. No logic here.

Every pattern is a Python regex, matched case-insensitively and multi-line. ``ADDR`` stands
for an e-mail address. Sources: each server's own documentation where it has one (qmail's
``qsbmf.txt``, Exim's spec chapter "Customizing bounce and warning messages", Postfix's
``bounce(5)`` templates, Microsoft's "Non-delivery reports in Exchange Online", Google's and
Yahoo's sender help pages, Amazon SES's notification contents), bounces made here with real
Postfix and Exim (tests/data/bounces/mail/), and how Sisimai's per-server modules (BSD-2,
``sisimai/p5-sisimai`` ``lib/Sisimai/Lhost/*.pm``) recognise each family.
"""

from __future__ import annotations

from dataclasses import dataclass

ADDR = (r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+"
        r"@[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")
#: Where a report may leave a line blank or indent: line-bounded, so no pattern runs over a
#: long stretch of white space again and again (the text is normalised before, see
#: :func:`webhooks.providers.dsn.scan_text`).
BLANK = r"(?:[ \t]*\n)?[ \t]*"


@dataclass(frozen=True, slots=True)
class Family:
    """One kind of mail server's bounce text.

    ``detect``: any of these, found in the report's ``From``/``Subject`` header lines or its
    first text, says the report is this family's. ``begin``: the error section starts after
    it (else at the top). ``recipients``: patterns with a ``rcpt`` group (and optionally a
    ``diag`` group; else the diagnostic is the text up to the next recipient). ``delayed``:
    markers of a delay notice (a warning, not a failure).
    """

    name: str
    detect: tuple[str, ...]
    recipients: tuple[str, ...]
    begin: str | None = None
    delayed: tuple[str, ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family("postfix", (r"^This is the mail system at host", r"^[ \t]*The mail system[ \t]*$",
                       r"^Subject: (?:Undelivered Mail Returned to Sender|Delayed Mail)"),
           (rf"^<(?P<rcpt>{ADDR})>(?: \(expanded from <[^>]*>\))?: (?P<diag>.+(?:\n[ \t]+.+)*)",),
           begin=r"^[ \t]*The mail system[ \t]*$",
           delayed=(r"^Subject: Delayed Mail", r"This is a warning only")),
    Family("exim", (r"^This message was created automatically by mail delivery software",
                    r"^Subject: Mail delivery failed", r"^Subject: Warning: message \S+ delayed"),
           (rf"^[ ]{{2}}\"?(?P<rcpt>{ADDR})\"?(?:[ \t]+<{ADDR}>)?[ \t]*:?[ \t]*\n"
            r"(?P<diag>(?:[ ]{4}.*\n?|[ \t]*\n(?=[ ]{4}))+)",
            rf"^\"?(?P<rcpt>{ADDR})\"?:?[ \t]*\n{BLANK}"
            r"(?P<diag>SMTP error from remote .+(?:\n.+)*)",
            rf"^(?P<rcpt>{ADDR}), ERROR CODE :(?P<diag>.+)"),
           begin=r"(?:following address(?:\(es\)|es)? (?:failed|has)|has not yet been delivered|"
                 r"could not be delivered)",
           delayed=(r"^Subject: Warning: message", r"has not yet been delivered",
                    r"Delivery attempts will continue")),
    Family("qmail", (r"^Hi\. This is the qmail", r"I'm afraid I wasn't able to deliver",
                     r"^Subject: failure notice", r"Sorry, we were unable to deliver your message"),
           (rf"^<(?P<rcpt>{ADDR})>:[ \t]*\n(?P<diag>(?:.+\n?)+)",),
           begin=r"(?:wasn't able to deliver|unable to deliver your message)",
           delayed=(r"I'm not going to try again; this message has been in the queue too long",
                    r"This is a temporary error")),
    Family("sendmail", (r"^Subject: Returned mail:", r"^Subject: Warning: could not send message",
                        r"(?<!-)-{3,} Transcript of session follows -{3}",
                        r"The original message was received at"),
           (rf"^[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*\n{BLANK}\(reason: (?P<diag>[^)\n]*)\)",
            rf"^(?P<diag>[245]\d\d[ -][245]\.\d+\.\d+ <?(?P<rcpt>{ADDR})>?\.\.\. .+)",
            rf"^>>> RCPT To:[ \t]*<(?P<rcpt>{ADDR})>[ \t]*\n<<< (?P<diag>.+(?:\n<<< .+)*)"),
           begin=r"(?<!-)-{3,} The following addresses had",
           delayed=(r"^Subject: Warning: could not send message", r"will keep trying until",
                    r"Will be retried")),
    Family("gmail", (r"Delivery to the following recipients? (?:failed|has been delayed)",
                     r"Technical details of (?:permanent|temporary) failure",
                     r"Google tried to deliver your message"),
           (rf"^[ \t]+(?P<rcpt>{ADDR})[ \t]*\n"
            r"(?P<diag>(?:.*\n)*?)(?=^-{3,} Original message|.*\Z)",),
           begin=r"Delivery to the following recipients? (?:failed|has been delayed)",
           delayed=(r"has been delayed", r"Technical details of temporary failure",
                    r"will retry for")),
    Family("exchange", (r"^Subject: Undeliverable:", r"Delivery has failed to these recipients",
                        r"did not reach (?:some or all of )?the intended recipient",
                        r"Diagnostic information for administrators",
                        r"^Subject: Delivery delayed:"),
           (rf"^[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*\n{BLANK}"
            r"(?:#|Remote Server returned ')(?P<diag>.+)",
            rf"^[ \t]*(?:'[^'\n@]*'[ \t]*)?[<(']?(?P<rcpt>{ADDR})[>)']?[ \t]+on\s.*\n{BLANK}"
            r"[ \t](?P<diag>.+)",
            rf"^[ \t]*(?P<rcpt>{ADDR})[ \t]*(?:\(|<){ADDR}(?:\)|>)[ \t]*\n(?P<diag>(?:.+\n?)+)"),
           begin=r"(?:Delivery has failed to these recipients or groups|"
                 r"following recipient\(s\) cannot be reached|Delivery is delayed to these|"
                 r"Diagnostic information for administrators)",
           delayed=(r"^Subject: Delivery delayed", r"Delivery is delayed to these",
                    r"will keep trying", r"This is a delivery delay notification")),
    Family("domino", (r"^Subject: DELIVERY[ _]FAILURE:", r"was not delivered to:[ \t]*$"),
           (rf"was not delivered to:[ \t]*\n{BLANK}(?P<rcpt>{ADDR})[ \t]*\n{BLANK}because:[ \t]*\n"
            rf"{BLANK}(?P<diag>.+)",),
           delayed=(r"^Subject: DELIVERY[ _]DELAYED",)),
    Family("groupwise", (r"The message that you sent was undeliverable to the following",
                         r"^Subject: Message status - undeliverable"),
           (rf"^[ \t]+(?P<rcpt>{ADDR})[ \t]*\((?P<diag>[^)\n]*)\)",),
           begin=r"undeliverable to the following"),
    Family("courier", (r"running the Courier mail server",),
           (rf"^<(?P<rcpt>{ADDR})>:[ \t]*\n(?P<diag>(?:.+\n?)+)",),
           begin=r"cannot be delivered|UNDELIVERABLE MAIL|DELAYED MAIL",
           delayed=(r"DELAYED MAIL", r"has not been delivered yet")),
    Family("mdaemon", (r"The attached message had PERMANENT fatal delivery errors",
                       r"-{3} Session Transcript -{3}", r"MDaemon"),
           (rf"RCPT To:[ \t]*<(?P<rcpt>{ADDR})>[ \t]*\n.*?<-- (?P<diag>[245]\d\d.+)",),
           delayed=(r"had a TEMPORARY", r"will attempt to deliver")),
    Family("opensmtpd", (r"This is the MAILER-DAEMON, please DO NOT REPLY",),
           (rf"^(?P<rcpt>{ADDR}): (?P<diag>.+)",),
           begin=r"following list of recipients",
           delayed=(r"temporary failure", r"Delivery attempts will continue")),
    Family("imail", (r"^Subject: Undeliverable Mail[ \t]*$", r"^Unknown user: "),
           (rf"^(?P<diag>Unknown user|User mailbox exceeds allowed size|"
            rf"Requested action not taken: mailbox unavailable): (?P<rcpt>{ADDR})",)),
    Family("kerio", (r"Unable to deliver the message to the recipient",
                     r"^Subject: Undeliverable message"),
           (rf"^[ \t]*(?P<rcpt>{ADDR})[ \t]*\n(?P<diag>(?:.+\n?)+)",
            rf"Recipient:[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*\n(?P<diag>(?:.+\n?)+)")),
    Family("notes", (r"^Subject: Undeliverable message[ \t]*$", r"^-+ Failure Reasons -+"),
           (rf"^-+ Failure Reasons -+[ \t]*\n{BLANK}(?P<diag>.+)\n[ \t]*(?P<rcpt>{ADDR})",)),
    Family("mailmarshal", (r"^Subject: Undeliverable Mail: ", r"MailMarshal"),
           (rf"could not be delivered to (?:the following|one or more) .*\n{BLANK}"
            rf"<?(?P<rcpt>{ADDR})>?[ \t]*\n(?P<diag>(?:.+\n?)+)",)),
)

#: Sender local parts and subjects that say "this is a bounce" for a family we do not know.
BOUNCE_SENDERS = r"^(?:From|Sender|Return-Path):.*\b(?:mailer-daemon|postmaster|mail delivery " \
                 r"(?:system|subsystem)|mail administrator|MAILER_DAEMON|bounces?@)"
BOUNCE_SUBJECTS = (
    r"^Subject:.*(?:undeliver|undelivered|delivery (?:status notification|failure|failed|"
    r"problem|report|has failed|notification)|returned (?:mail|to sender)|failure notice|"
    r"mail delivery failed|could not be delivered|non[- ]?delivery|nondeliverable|"
    r"not delivered|delivery delayed|delayed mail|message status|rejected|"
    r"Zustellung|Unzustellbar|Non remis|No se puede entregar|Mensagem n[aã]o entregue)"
)

#: The returned original starts at the first of these (its text is not the server's words).
ORIGINAL_MARKERS = (
    r"^-+ ?Below this line is a copy of the message",
    r"^-+ This is a copy of the message",
    r"^-+ ?Original message",
    r"^-+ ?(?:The )?original message (?:follows|header)",
    r"^Original message follows",
    r"^-+ ?Returned message",
    r"^-+ ?Undelivered message",
    r"^Possibly truncated original message follows",
    r"^-+ ?(?:Unsent|Returned|Your) message",
    r"^[ \t]*-+ ?Original message headers",
    r"^Original message headers:",
    r"^Received: from .+\n[ \t]+by ",
)

#: Generic recipient lines, tried when no family pattern found one.
GENERIC_RECIPIENTS = (
    rf"^[ \t]*<(?P<rcpt>{ADDR})>:?[ \t]*(?P<diag>.*(?:\n(?![ \t]*<{ADDR}>).+)*)",
    rf"(?:RCPT TO|rcpt to):[ \t]*<(?P<rcpt>{ADDR})>[^\n]*\n(?:<<<\s*)?(?P<diag>[245]\d\d.*)",
    rf"(?:Original|Final)-Recipient:[ \t]*(?:rfc822;)?[ \t]*<?(?P<rcpt>{ADDR})>?",
    rf"^[ \t]*(?:Recipient|Addressee|To|Address|Recipient address)[ \t]*:[ \t]*(?:\n[ \t]*)?"
    rf"<?(?P<rcpt>{ADDR})>?",
)

#: A delay notice, whatever the family.
DELAY_MARKERS = (
    r"^Subject:.*(?:delayed|delay|still being retried|warning: could not send|"
    r"Delivery Status Notification \(Delay\))",
    r"(?:has|have) not (?:yet )?been delivered",
    r"(?:will|shall) (?:continue to )?(?:retry|keep trying|try again)",
    r"this is a warning only", r"no action is required on your part",
    r"delivery attempts will continue",
)

#: RFC 3834 auto-replies and their kin (vacation, out of office, challenge-response):
#: never a bounce, never acted on. Header rules first, then the subject.
AUTO_REPLY_HEADERS = (
    r"^Auto-Submitted:\s*auto-(?:replied|generated)",
    r"^X-Autoreply:", r"^X-Autorespond:", r"^X-Autoresponder:", r"^X-Auto-Reply:",
    r"^Precedence:\s*auto_reply", r"^X-Precedence:\s*auto_reply",
    r"^X-Mailer:.*(?:vacation|autorespond)", r"^X-Vacation:",
    r"^X-Boxtrapper:", r"^X-Spamarrest-", r"^X-TMDA-", r"^X-Challenge:",
    r"^X-Yahoo-Newman-Property:\s*ym-vacation",
)
AUTO_REPLY_SUBJECTS = (
    r"^Subject:\s*(?:Auto(?:matic)?[ -]?(?:reply|response|antwort|réponse)|Auto:|"
    r"Out of (?:the )?Office|Away from|On vacation|Vacation|Abwesenheit|"
    r"Absence|R[ée]ponse automatique|Respuesta autom[aá]tica|Please confirm your message|"
    r"Confirm your (?:message|e-?mail)|Verification required|Challenge)",
)

#: Complaint reports that are not ARF (RFC 5965): an abuse report by mail all the same.
COMPLAINT_MARKERS = (
    r"^X-HmXmrOriginalRecipient:", r"^Subject:.*(?:abuse report|complaint|spam report|"
    r"Feedback[- ]Report|junk mail report)", r"This is an e-?mail abuse report",
    r"^Feedback-Type:\s*(?:abuse|fraud)",
)
COMPLAINT_RECIPIENTS = (
    rf"^X-HmXmrOriginalRecipient:[ \t]*<?(?P<rcpt>{ADDR})>?",
    rf"^Original-Rcpt-To:[ \t]*<?(?P<rcpt>{ADDR})>?",
)

#: Amazon SES notifications that arrive by mail (an SNS e-mail subscription): the body is the
#: notification's JSON.
SES_MAIL = (r"^From:.*@(?:sns\.amazonaws\.com|amazonses\.com)", r'"notificationType"\s*:')
