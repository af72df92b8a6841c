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
    #: patterns (with a ``rcpt`` group) searched in the report's header lines, for families
    #: that name the recipient only there (Google Groups' ``X-Failed-Recipients``)
    headers: tuple[str, ...] = ()
    #: a mailing list's refusal of a post: the refused recipient is the list, its kind
    #: ``block`` (reason ``rejected`` unless the words name a more precise block, or
    #: ``onhold`` for a post held for the moderator); never a bounce of another address
    list_refusal: bool = False


FAMILIES: tuple[Family, ...] = (
    # families with markers of their own first (dma's subject is Exim's)
    # DragonFly Mail Agent (dma, net.c/mail.c): one report per recipient
    Family("dma", (r"^This is the DragonFly Mail Agent", r"^Received: from MAILER-DAEMON\n.*\n"
                   r"[ \t]+by .*\(DragonFly Mail Agent"),
           (rf"There was an error delivering your mail to <(?P<rcpt>{ADDR})>\.?[ \t]*\n{BLANK}"
            r"(?P<diag>(?:.+\n?)+)",)),
    # Apache James (AbstractNotify: "Error message below:", "Message details:  RCPT TO: ...")
    Family("james", (r"^Subject: \[BOUNCE\]", r"^Message-ID:.*\.JavaMail\.",
                     r"JAMES SMTP Server", r"^Error message below:"),
           (rf"^[ \t]+RCPT TO:[ \t]*<?(?P<rcpt>{ADDR})>?",),
           begin=r"^Error message below:"),
    # Verizon Wireless: vtext.com (James-like "Error: ... RCPT TO:"), vzwpix.com (MMS gateway)
    Family("verizon", (r"^From:.*post_master@vtext\.com", r"^From:.*sysadmin@.*vzwpix\.com",
                       r"^Message could not be delivered to mobile"),
           (rf"^[ \t]+RCPT TO:[ \t]*<?(?P<rcpt>{ADDR})>?",
            rf"^Error:[ \t]*(?P<diag>.+)\n(?:.*\n)*?To:[ \t]*(?:.*<)?(?P<rcpt>{ADDR})"),
           begin=r"^(?:Error:|Message could not be delivered to mobile)"),
    # au by KDDI (ezweb.ne.jp / au.com): "Could not be delivered to: <ADDR>", reason indented
    Family("kddi", (r"^From:.*no-reply@.*\.dion\.ne\.jp", r"^Reply-To:.*no-reply@app\.auone-net",
                    r"^Received:.*(?:ezweb\.ne\.jp|\.au\.com) \(",
                    r"^Your mail (?:sent on|attempted to be delivered on):"),
           (rf"Could not be delivered to:[ \t]*<(?P<rcpt>{ADDR})>[ \t]*\n"
            r"(?P<diag>(?:[ \t]+.+\n?)*)",)),
    # Google Groups: the group refused a post; the group is named in X-Failed-Recipients only
    Family("googlegroups", (r"the group you tried to contact \(", r"^X-Google-Group-Id:",
                            r"you may not have permission to post messages to the group"),
           (), headers=(rf"^X-Failed-Recipients:[ \t]*<?(?P<rcpt>{ADDR})>?",),
           list_refusal=True),
    # fml (Japanese mailing-list manager): "You are not a member of this mailing list <ADDR>."
    Family("fml", (r"^X-MLServer:.*fml", r"^Message-ID:.*\.FML", r"fml system error message"),
           (r"^(?P<diag>[^<\n]*(?:member|reject|spam|loop|duplicated message-id|alert|"
            rf"warning)[^<\n]*<(?P<rcpt>{ADDR})>.*)$",), list_refusal=True),
    # Mailman 2/3: a post rejected or held; the list is the refused recipient
    Family("mailman", (r"^X-Mailman-Version:", r"^X-List-Administrivia:\s*yes",
                       r"Is being held until the list moderator can review",
                       r"Your message to the \S+ mailing[- ]list has been rejected"),
           (rf"^X-BeenThere:[ \t]*<?(?P<rcpt>{ADDR})>?",
            rf"^List-Post:[ \t]*<mailto:(?P<rcpt>{ADDR})>"),
           headers=(rf"^X-BeenThere:[ \t]*<?(?P<rcpt>{ADDR})>?",
                    rf"^List-Post:[ \t]*<mailto:(?P<rcpt>{ADDR})>"),
           list_refusal=True),
    Family("postfix", (r"^This is the mail system at host", r"^[ \t]*The mail system[ \t]*$",
                       r"^Subject: (?:Undelivered Mail Returned to Sender|Delayed Mail)"),
           # a forwarded or aliased address: the one we sent to is the "expanded from" one
           (rf"^<{ADDR}> \(expanded from <(?P<rcpt>{ADDR})>\): (?P<diag>.+(?:\n[ \t]+.+)*)",
            rf"^<(?P<rcpt>{ADDR})>: (?P<diag>.+(?:\n[ \t]+.+)*)"),
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
            rf"^(?P<diag>[245]\d\d[ -]<?(?P<rcpt>{ADDR})>?\.\.\. .+)",  # V5 sendmail
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
            rf"^[ \t]*(?P<rcpt>{ADDR})[ \t]*(?:\(|<){ADDR}(?:\)|>)[ \t]*\n(?P<diag>(?:.+\n?)+)",
            # Exchange 5.5/2000: "The following message to <ADDR> was undeliverable."
            rf"The following message to <(?P<rcpt>{ADDR})> was undeliverable\.?"
            r"(?P<diag>(?:.*\n?){0,8})"),
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
    # Ipswitch IMail ("X-Mailer: <SMTP32 vN>"): "Unknown user: ADDR", "undeliverable to ADDR"
    Family("imail", (r"^Subject: Undeliverable Mail\b", r"^X-Mailer: <SMTP32 v",
                     r"^Unknown user: ", r"^Body of message generated response:"),
           (rf"^(?P<diag>[A-Za-z][^:\n@ ]+ [^:\n@]{{2,80}}): <?(?P<rcpt>{ADDR})>?[ \t]*$",
            rf"^undeliverable to <?(?P<rcpt>{ADDR})>?")),
    # Lotus Notes: "------- Failure Reasons  --------", the reason, then the address alone
    Family("notes", (r"^-+ Failure Reasons\s+-+",),
           (rf"^-+ Failure Reasons\s+-+[ \t]*\n{BLANK}(?P<diag>.+)\n[ \t]*<?(?P<rcpt>{ADDR})>?"
            r"[ \t]*$",
            rf"^(?P<diag>[^@\n]{{8,}})\n[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*$"),
           begin=r"^-+ Failure Reasons\s+-+"),
    Family("kerio", (r"Unable to deliver the message to the recipient",
                     r"^Subject: Undeliverable message"),
           (rf"^[ \t]*(?P<rcpt>{ADDR})[ \t]*\n(?P<diag>(?:.+\n?)+)",
            rf"Recipient:[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*\n(?P<diag>(?:.+\n?)+)")),
    # Trend Micro InterScan MSS: "Sent <<< RCPT TO:<ADDR>" then "Received >>> 550 ..."
    Family("interscan", (r'^From:\s*"?InterScan MSS', r"^Subject: Mail could not be delivered",
                         r"^Sent <<< RCPT TO:"),
           (rf"^Sent <<< RCPT TO:[ \t]*<(?P<rcpt>{ADDR})>[ \t]*\nReceived >>> (?P<diag>.+)",
            rf"^Received >>> (?P<diag>[245]\d\d .*<(?P<rcpt>{ADDR})>.*)")),
    # Unknown MTAs' common one-paragraph styles (sendmail-like without its markers, the
    # "could not be delivered" / "Unable to deliver message to the following recipients"
    # texts, Mailman's "simple match" one-liners): a list of addresses after the phrase
    Family("anonymous", (
        r"following addresses had permanent fatal errors",
        r"Unable to deliver (?:the )?message to the following (?:recipients?|address(?:es)?)",
        r"could not be delivered to the following (?:recipients?|address(?:es)?)",
        r"has not been delivered to the following (?:recipients?|address(?:es)?)",
        r"(?:The )?following recipients? did not receive this message",
        r"Delivery to the following recipients? failed",
        r"Your message cannot be delivered to the following recipients",
        r"message (?:to the following address(?:es)?|could not be delivered)",
        r"^Failed addresses follow:", r"^Message delivery to '[^'\n]+@[^'\n]+' failed",
        r"Delivery to the following recipient\(s\) failed", r"^Failed Recipient:",
        r"The following message to <[^>\n]+> was undeliverable",
        r"This Message was undeliverable due to the following reason",
        r"Message not delivered to recipients below", r"The message could not be delivered to:",
        r"^[ \t]*(?:unknown address|undeliverable to|delivery failed for|invalid recipient):?"
        rf"[ \t]*<?{ADDR}>?[ \t]*$"),
        (rf"^[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*(?:[:(\-,;.]|$)",
         rf"^Message delivery to (?P<rcpt>{ADDR})' failed(?P<diag>.*(?:\n.+)*)",  # 'ADDR'
         rf"^Failed Recipient:[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*\n(?:Reason:[ \t]*(?P<diag>.+))?",
         rf"The following message to <(?P<rcpt>{ADDR})> was undeliverable\.?"
         r"(?P<diag>(?:.*\n?){0,8})",
         rf"The message could not be delivered to:[ \t]*<?(?P<rcpt>{ADDR})>?",
         r"^[ \t]*(?P<diag>unknown address|undeliverable to|delivery failed for|"
         rf"invalid recipient):?[ \t]*<?(?P<rcpt>{ADDR})>?[ \t]*$"),
        begin=r"(?:permanent fatal errors|following (?:recipients?|address(?:es)?)(?:\(s\))?"
              r"(?: did not receive this message| failed)?|could not be delivered|"
              r"Failed addresses follow:|recipients below|undeliverable due to the following "
              r"reason)[^\n]*\n"),
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
    r"^Message headers follow\.",  # dma
    r"Original mail as follows:",  # fml
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
    # "has not been delivered" alone ends many final failures ("...to the following
    # recipients"): only "not yet" / "not ... yet" says the delivery is still being tried
    r"(?:has|have) not yet been delivered", r"(?:has|have) not been delivered yet",
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
