"""Rule tables for :mod:`suppression.classify` (data only, no logic).

Reasons are Sisimai's vocabulary.  Matching is done on the lower-cased reply
``"<code> <enhanced> <text>"``, so a text rule may also pin an enhanced code
(e.g. Microsoft's ``5.7.504`` vs ``5.4.1`` with the same wording).

Order of precedence used by the classifier:

1. ``TEXT_RULES``: ordered, the first rule that matches anywhere wins.
2. ``ENHANCED_RULES``: RFC 3463 status code, exact ``"5.1.1"`` first, then the
   class-free ``"x.1.1"`` form, then the subject only ``"x.1"``.
3. ``BASIC_RULES``: SMTP basic reply code.
4. ``"undefined"``; its kind then comes from the reply class (5xx soft: never suppress on a guess,
   anything else transient).

Most phrases come from Sisimai's per-host tables (go-sisimai ``rhost/*.go``,
``reason/*.go``) and the receivers' published error pages (Google, Microsoft,
Yahoo, Apple, GoDaddy, Mimecast).
"""

from __future__ import annotations

# --------------------------------------------------------------------------
# reason -> kind.  ``None`` for non-failures; "undefined" is decided by code.
# --------------------------------------------------------------------------
REASON_KIND: dict[str, str | None] = {
    # hard: permanent recipient failure, the address is suppressed
    "userunknown": "hard",
    "hostunknown": "hard",
    "hasmoved": "hard",
    "notaccept": "hard",
    "suppressed": "hard",
    # hard only on a permanent reply (see PERMANENT_ONLY): the mailbox is disabled or suspended
    "suspend": "hard",
    # soft: temporary recipient-side, retried
    "mailboxfull": "soft",
    "exceedlimit": "soft",
    "mesgtoobig": "soft",
    # block: receiver policy / reputation / rate; retried later, never suppresses
    "blocked": "block",
    "badreputation": "block",
    "spamdetected": "block",
    "virusdetected": "block",
    "policyviolation": "block",
    "authfailure": "block",
    "requireptr": "block",
    "notcompliantrfc": "block",
    "contenterror": "block",
    "rejected": "block",
    "norelaying": "block",
    "filtered": "block",
    "speeding": "block",
    "toomanyconn": "block",
    # complaint
    "feedback": "complaint",
    # transient: our side, the network, or a system problem
    "expired": "transient",
    "networkerror": "transient",
    "systemerror": "transient",
    "systemfull": "transient",
    "mailererror": "transient",
    "failedstarttls": "transient",
    "securityerror": "transient",
    "syntaxerror": "transient",
    "onhold": "transient",
    # not failures
    "delivered": None,
    "vacation": None,
    # decided by the reply class at run time
    "undefined": "transient",
}

REASONS: frozenset[str] = frozenset(REASON_KIND)

# --------------------------------------------------------------------------
# The taxonomy: what each reason means (Sisimai's reason names and definitions, the words
# support and CRM tools use). ``outbox classify --reasons`` prints it with each kind.
# --------------------------------------------------------------------------
REASON_DOCS: dict[str, str] = {
    "userunknown": "the recipient's mailbox does not exist at the destination",
    "hostunknown": "the recipient's domain does not exist or has no mail server",
    "hasmoved": "the recipient has moved; the server names the new address",
    "notaccept": "the destination accepts no mail (null MX, 521/556)",
    "suppressed": "the address is on a suppression list (ours or the provider's)",
    "suspend": "the mailbox is disabled, suspended or archived (hard only on a permanent reply)",
    "mailboxfull": "the recipient's mailbox is over quota",
    "exceedlimit": "the message exceeds a recipient-side limit (header size, attachments)",
    "mesgtoobig": "the message is larger than the destination accepts",
    "expired": "delivery was given up when the queue lifetime ended",
    "networkerror": "DNS or network failure, a mail loop, too many hops",
    "systemerror": "the destination server's own error or misconfiguration",
    "systemfull": "the destination server is out of disk or resources",
    "toomanyconn": "too many connections or recipients per connection",
    "speeding": "sending too fast for the destination (rate limit)",
    "mailererror": "the destination's local delivery program failed",
    "blocked": "our sending IP or host is refused (blocklist, DNSBL, banned)",
    "badreputation": "refused for the sender's or the IP's reputation",
    "spamdetected": "the message was judged spam",
    "virusdetected": "the message carries malware",
    "policyviolation": "refused by the receiver's policy (content, attachment, organisation rule)",
    "securityerror": "authentication or credentials refused on the way",
    "authfailure": "SPF, DKIM or DMARC failed",
    "requireptr": "the sending IP has no PTR record (reverse DNS)",
    "notcompliantrfc": "the message does not comply with RFC 5322",
    "contenterror": "the message's content is malformed or refused",
    "rejected": "our envelope sender was refused, or a mailing list refused the post",
    "norelaying": "the server refused to relay",
    "filtered": "the recipient's own filter refused the message",
    "syntaxerror": "an SMTP command was refused as a syntax error",
    "failedstarttls": "TLS was required or failed",
    "feedback": "a complaint (ARF or feedback loop report)",
    "onhold": "held for a decision (list moderator, challenge-response)",
    "delivered": "delivered (or relayed)",
    "vacation": "an auto-reply, not a failure",
    "undefined": "no rule knows the words: soft for a 5xx reply, transient otherwise",
}

# --------------------------------------------------------------------------
# No guess made hard.  A ``hard`` reason above comes only from evidence that names the
# recipient (an enhanced code 5.1.x, 5.2.1, 5.4.4, or words the text rules know mean "no such
# user / host / mailbox disabled"); even then the kind is ``soft`` when the reply is not
# permanent (a 4xx or 2xx basic code, a 4.x.x or 2.x.x enhanced code) or its words say the
# failure is temporary (TEMPORARY_WORDS).  A basic code alone never says ``hard``
# (BASIC_RULES maps no code to a hard reason).
# --------------------------------------------------------------------------
TEMPORARY_WORDS: list[str] = [
    r"\btemporar(?:y|ily)\b", r"\btry (?:again )?later\b", r"\bplease try again\b",
    r"\bretry (?:later|in)\b", r"\bwill (?:be )?retr(?:y|ied)\b",
]
KINDS: frozenset[str | None] = frozenset({"hard", "soft", "block", "complaint", "transient", None})

# --------------------------------------------------------------------------
# Orange and La Poste (FrancePTT) reply labels: the number after OFR/LPN/OUK names the cause
# (Sisimai's ``Rhost::FrancePTT``); numbers that only say "try later" are left to the words.
# --------------------------------------------------------------------------
ORANGE_CODES: dict[str, str] = {
    "101": "blocked", "102": "blocked", "103": "blocked", "104": "toomanyconn",
    "305": "securityerror", "401": "authfailure", "402": "securityerror", "403": "rejected",
    "405": "rejected", "415": "rejected", "416": "userunknown", "417": "mailboxfull",
    "418": "userunknown", "420": "suspend", "421": "rejected", "426": "suspend",
    "505": "systemerror", "506": "spamdetected", "510": "blocked", "514": "mesgtoobig",
    "517": "policyviolation", "630": "policyviolation", "999": "blocked",
}

# --------------------------------------------------------------------------
# Text rules: (reason, [regex, ...]); ordered, first match wins.
# Specific phrases come before generic words ("rejected", "blocked", ...).
# --------------------------------------------------------------------------
TEXT_RULES: list[tuple[str, list[str]]] = [
    ("vacation", [
        r"away on vacation", r"out of (?:the )?office", r"\bi am away\b", r"i will be traveling",
        r"auto[- ]?reply", r"automatic reply",
    ]),
    # provider specific error labels (GoDaddy IBxxx, Cox AUP#)
    ("securityerror", [r"\bib401\b", r"aup#cx(?:thrt|mj)\b"]),
    ("notcompliantrfc", [r"\bib50[12]\b"]),
    ("rejected", [r"\bib506\b", r"aup#cxsmtp\b"]),
    ("authfailure", [r"\bib508\b", r"aup#cxsndr\b"]),
    ("requireptr", [r"\bib108\b", r"aup#cxdns\b"]),
    ("spamdetected", [r"\bib212\b", r"aup#urlbl\d+"]),
    ("virusdetected", [r"\bib705\b"]),
    ("toomanyconn", [r"\bib(?:605|007)\b", r"aup#cx(?:cnct|mxrt)\b"]),
    ("speeding", [r"\bib(?:101|504|510|607)\b"]),
    ("badreputation", [r"\bib103\b"]),
    ("blocked", [r"\bib1(?:0[456]|1[0-3])\b", r"aup#(?:cxbl|cdrbl|ipbl\d+)\b"]),
    # Orange / La Poste (Sisimai's FrancePTT table): OFR004_405, LPN105-104, OFR_416, OUK_513
    *[(reason, [rf"\b(?:lpnaaa|lpn|ofr|ouk)(?:\d{{3}})?[-_]{code}\b"])
      for code, reason in ORANGE_CODES.items()],
    ("notaccept", [r"malformed or unexpected name server reply"]),  # AOL (Sisimai's Aol)
    # --- mailing lists refusing or holding a post (Google Groups, fml, Mailman) -------
    ("onhold", [r"held (?:until|for) (?:the )?(?:list )?moderat", r"awaits moderator approval"]),
    ("rejected", [
        r"not (?:a )?member of this (?:mailing )?list", r"not member article", r"members?-only list",
        r"non-?members? (?:are )?not allowed to post", r"post by non-?member",
        r"may not have permission to post", r"not (?:allowed|authorized|permitted) to post",
        r"reject spammers", r"rejected by the list moderator",
    ]),
    # --- specific phrases that contain words of other reasons ---------------
    ("syntaxerror", [r"protocol violation", r"unrecognized authentication type"]),
    ("systemerror", [r"loops back to myself", r"message is looping", r"domain policy size",
                     r"address ambiguous"]),
    ("rejected", [
        r"sender address rejected", r"domain of sender", r"spam abuse detected", r"envelope from address",
        r"bad outbound sender", r"unknown sender",
        # a refusal of our sender, whose words ("does not exist", "invalid") name no recipient
        r"sender (?:address |domain |e-?mail )?(?:does not|doesn't) exist",
        r"sender (?:address )?(?:is )?invalid",
    ]),
    ("norelaying", [r"list of allowed rcpthosts"]),
    ("authfailure", [r"this (?:e-?)?mail is unauthenticated", r"\bunauthenticated (?:e-?)?mail"]),
    ("blocked", [r"service refus[eé]\b"]),  # Orange / Wanadoo (FrancePTT) OFRxxx
    ("notcompliantrfc", [r"duplicate header", r"sender address .{0,60}not a valid rfc ?5321"]),
    ("filtered", [r"user reject", r"blocked by the recipient"]),
    ("blocked", [r"unusual rate of"]),
    ("notaccept", [r"host unknown \(name server", r"null mx", r"does not accept mail\b"]),
    # --- rate and volume (before "quota"/"mailbox" words) ---------------------
    ("policyviolation", [r"sending messages with the same message-id"]),
    ("speeding", [
        r"receiving mail (?:too quickly|at a rate)", r"relay (?:sending )?limit exceeded",
        r"daily (?:user )?sending (?:quota|limit) exceeded", r"submission quota exceeded",
        r"daily limit for message recipients", r"per hour message receive limit",
        r"exceeded their limit for", r"exceeded permitted limits", r"try again slower",
        r"due to excessive volume", r"thread limit exceeded", r"frequency of receiving messages",
        r"has been rate limited\b(?!.*(?:reputation|authenticat|spf|dkim|dmarc|ptr|tls))",
        r"too many messages this hour", r"max(?:imum)? number of messages per session",
        r"sent too many to too many recipients",
    ]),
    ("toomanyconn", [
        r"too many (?:connections|sessions|concurrent)", r"connection rate limit",
        r"maximum number of connections", r"max(?:imum)? message per connection",
        r"too many recipients", r"account service is temporarily unavailable",
        r"outbound thread limit", r"message threshold exceeded", r"(?:ip|domain|sender|connection) frequency limited",
        r"try again later, closing connection",
    ]),
    # --- recipient state --------------------------------------------------------
    # our side suspended (sending, our IP or account at the receiver): not the recipient's
    ("blocked", [r"(?:sending|outbound|submission|your (?:access|ip|account)|sender|\bip)\b"
                 r".{0,40}\bsuspended"]),
    ("suspend", [
        r"temporar(?:y|ily) locked", r"\bsuspend", r"tried to reach is (?:inactive|disabled)",
        r"is no longer valid", r"mailbox (?:is )?disabled", r"account (?:is )?disabled",
        r"deactivated mailbox", r"mailbox cannot be accessed", r"banned recipient", r"\b5\.7\.50[45]\b",
    ]),
    ("hasmoved", [r"has been replaced by", r"no longer on (?:this )?server", r"\buser has moved\b"]),
    ("rejected", [r"(?:sender|from|mail from|envelope) domain (?:does not exist|doesn'?t exist|"
                  r"not found)"]),
    ("hostunknown", [r"domain (?:does not exist|doesn'?t exist|not found)"]),
    ("userunknown", [
        r"\b5\.4\.1 recipient address rejected: access denied",
        r"user(?:name)? (?:is )?unknown", r"unknown (?:user|recipient|address|or illegal alias)",
        r"no such (?:user|mailbox|recipient|address)", r"(?:user|mailbox|recipient|address|account) (?:does not|doesn't) exist",
        r"(?<!domain )does not exist", r"doesn't have a .{0,40}account", r"invalid (?:recipient|mailbox)",
        r"(?:recipient|mailbox|user|address) not found", r"not a valid rfc ?5321 address",
        r"inactive email address", r"bad destination mailbox",
        r"recipnotfound|exrecipnotfound", r"invalid recipient address", r"recipient (?:address )?rejected$",
        r"find the recipient domain", r"account does not exist", r"unknown local part",
        r"no mailbox here", r"not our customer", r"(?<!sender )(?<!from )address (?:is )?(?:invalid|rejected)(?!:)",
        # Domino ("not listed in Domino Directory"), RFC 3464's example gateway reply
        r"not listed in (?:the )?(?:domino directory|public name (?:&|and) address book)",
        r"is not a registered (?:gateway )?user",
        # IMail, Verizon MMS, Lotus Notes (Japanese), KDDI
        r"invalid final delivery userid", r"no valid recipients for this mm", r"unverified address",
        r"ディレクトリのリストにありません",
    ]),
    ("mailboxfull", [
        r"mailbox (?:is )?full", r"over ?quota", r"quota (?:exceeded|full)", r"out of storage space",
        r"insufficient disk space", r"storage limit", r"mailbox (?:size )?limit exceeded",
        r"exceeded storage allocation", r"quotaexceeded", r"mailbox.{0,20}\bfull\b",
        r"mailbox exceeds allowed size",
    ]),
    # --- sizes and limits ----------------------------------------------------------
    ("exceedlimit", [r"header size exceeds", r"limit of .{0,20}attachments", r"per individual header size",
                     r"header size limit", r"\b5\.2\.3 message too large\b"]),
    ("mesgtoobig", [
        r"message (?:is )?too (?:big|large)", r"message size (?:exceeds|limit)", r"size limits?",
        r"maximum (?:email |message )?size", r"recipsizelimit", r"message too big",
    ]),
    # --- authentication / ptr / tls -------------------------------------------------
    ("failedstarttls", [
        r"starttls", r"tls required", r"requires? (?:encryption|tls)", r"use tls/ssl", r"mta-sts",
        r"certificate-expired|certificate-host-mismatch|tlsa-invalid|dnssec-invalid",
        r"high-strength ciphers", r"encryption needed",
    ]),
    ("requireptr", [
        r"\bptr record", r"reverse dns", r"\brdns\b", r"pointer \(ptr\)", r"dns check failure",
    ]),
    ("authfailure", [
        r"\bspf\b", r"\bdkim\b", r"\bdmarc\b", r"sender policy framework", r"authentication level",
        r"authentication checks", r"sender is unauthenticated",
    ]),
    ("securityerror", [
        r"authenticat(?:ion|e) (?:required|failure|failed|data|not allowed)", r"authrequired",
        r"login attempts", r"password", r"log in (?:with|through) your web browser",
        r"no identity changes permitted", r"submitter failed to",
        r"exchange server authentication", r"not authenticated to send anonymous",
    ]),
    # --- reputation and blocklists ---------------------------------------------------
    ("badreputation", [
        r"reputation", r"user complaints", r"internal resources are temporarily unavailable",
    ]),
    ("virusdetected", [r"\bvirus", r"malware", r"infected"]),
    ("spamdetected", [
        r"(?<!from )(?<!amount of )\bspam\b(?!haus|cop)(?!-like)", r"unsolicited mail(?! originating)", r"message scoring|mail score",
        r"nature of the content", r"content filter", r"spam content",
    ]),
    ("blocked", [
        r"spamhaus|spamcop|sorbs|barracuda|mailspike|spamrats|proofpoint|cloudmark|\brbl\b|dnsbl|blacklist|blocklist|block list",
        r"unusual rate of", r"not in whitelist", r"access denied, (?:bad helo|rejected by recipient|banned send|please try again later)",
        r"does not accept email over ipv6", r"client host .{0,60}blocked", r"(?:ip|host|address|access).{0,40}\bblocked",
        r"blocked (?:by|using|from|for|due)", r"not accepting connections", r"helo/ehlo argument",
        r"invalid ip for sending", r"server access forbidden", r"too many (?:invalid recipients|bad commands)",
        r"connection denied", r"connection dropped", r"suspected (?:spam ip|bounce attacks)",
        r"poor (?:email )?reputation", r"rbl reject",
    ]),
    # --- relaying, sender, policy ------------------------------------------------------
    ("norelaying", [
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)", r"unable to relay",
        r"open relay (?:is )?not allowed", r"invalid credentials for relay", r"not authorized to send email directly",
        r"we do not relay", r"relay access",
    ]),
    ("notcompliantrfc", [
        r"rfc ?5322", r"rfc ?2822", r"not rfc compliant", r"duplicate header", r"multiple (?:subject|from|to|date) headers",
        r"missing a valid", r"malformed", r"encoded-word syntax", r"disallowed header", r"blank from",
        r"not allowed as a from", r"from: header",
    ]),
    ("rejected", [
        r"sender (?:address )?(?:rejected|denied|not)", r"domain of sender", r"sender domain", r"unknown sender",
        r"bad outbound sender", r"spam abuse detected", r"mail sending denied", r"not authenticated (?:by organization|for)",
        r"allowed-senders", r"envelope blocked", r"administrative prohibition", r"permanently deferred",
        r"unresolvable rfc\.?5321", r"from: domain is invalid", r"delivery not authorized(?!, message refused)",
        r"\b5\.1\.8\b", r"\(in reply to mail from command\)", r"access denied \(in reply to mail",
        r"rejected by recipients",
    ]),
    ("policyviolation", [
        r"polic(?:y|ies)", r"illegal attachment", r"potential security issue", r"attachment extension",
        r"content examination", r"anti-spoofing", r"host network,? not allowed", r"not allowed\b.{0,10}\[ph",
        r"\b5\.7\.9\d\d\b",
    ]),
    ("filtered", [r"user reject", r"blocked by the recipient", r"filtered", r"rejected by (?:the )?recipient"]),
    ("contenterror", [r"improperly-formatted", r"invalid message content", r"bare ?line ?feeds?", r"invalid characters",
                      r"content (?:rejected|denied)", r"too many related errors", r"mail content denied"]),
    # --- transport / system --------------------------------------------------------------
    ("expired", [
        r"message expired", r"expired", r"time(?:d)? ?out\b|timeout", r"queue too long", r"retry timeout",
        r"has been delayed", r"delivery time",
    ]),
    ("hostunknown", [
        r"host (?:is )?unknown", r"unknown host", r"domain (?:does not exist|not found|not reachable|is not reachable)",
        r"no such domain", r"domain is not reachable", r"host not found", r"nonexistent domain",
        r"name service error", r"no mx", r"unrouteable address", r"unroutable",
    ]),
    ("networkerror", [
        r"hops?\b.{0,20}(?:exceeded|count)|too many hops|exceeded \d+ hops", r"loop", r"no route to host",
        r"dns query failed", r"connection (?:refused|reset)", r"network is unreachable",
        r"incorrect hostname used for inbounds",
    ]),
    ("mailererror", [r"x-unix", r"procmail", r"pipe to \|", r"\|.*exit \d+", r"command (?:died|failed)", r"mailer error"]),
    ("systemfull", [r"system (?:is )?full", r"insufficient system (?:resources|storage)", r"out of disk"]),
    ("systemerror", [
        r"system (?:config|configuration|problem|error)", r"configuration error", r"incorrectly configured",
        r"server busy", r"agent busy", r"temporar(?:y|ily) (?:server error|not available|unavailable|rejected)",
        r"failed to be replicated", r"suspiciousremoteservererror", r"service not (?:available|active)",
        r"multiple destination domains", r"domain policy size", r"unable to process", r"message ended early",
        r"loops back to myself", r"local error", r"internal (?:server )?error",
    ]),
    ("notaccept", [
        r"not accepting network messages", r"does not accept mail", r"null mx", r"no mail-enabled subscriptions",
        r"account inbounds disabled", r"smtp protocol returned a permanent error", r"host unknown \(name server",
        r"bad storedriver mdb",
    ]),
    ("onhold", [r"account outbounds disabled", r"hostname is not authorized", r"journal message"]),
    ("syntaxerror", [
        r"syntax error", r"protocol violation", r"bad sequence", r"unrecognized command", r"unimplemented",
        r"send hello first", r"(?:ehlo/helo|mail|rcpt) first", r"no data after bdat", r"bad address syntax",
        r"command not (?:recognized|implemented)",
    ]),
    # generic words, last
    ("blocked", [r"\bblocked\b", r"\bblacklisted\b", r"\bdenied\b", r"forbidden"]),
    ("rejected", [r"\brejected\b"]),
]

# --------------------------------------------------------------------------
# RFC 3463 enhanced status codes; keys are "C.S.D", "x.S.D" or "x.S".
# --------------------------------------------------------------------------
ENHANCED_RULES: dict[str, str] = {
    "x.1.0": "userunknown", "x.1.1": "userunknown", "x.1.2": "hostunknown", "x.1.3": "userunknown",
    "x.1.4": "systemerror", "x.0.350": "policyviolation", "x.1.5": "userunknown", "x.1.6": "hasmoved", "x.1.7": "rejected",
    "x.1.8": "rejected", "x.1.10": "userunknown", "x.1.351": "userunknown", "x.1.90": "speeding",
    "x.2.0": "undefined", "x.2.1": "suspend", "x.2.2": "mailboxfull", "x.2.3": "mesgtoobig",
    "x.2.4": "systemerror", "x.2.121": "speeding", "x.2.122": "speeding",
    "x.3.0": "systemerror", "x.3.1": "systemfull", "x.3.2": "notaccept", "x.3.3": "syntaxerror",
    "x.3.4": "mesgtoobig", "x.3.5": "systemerror",
    "x.4.0": "networkerror", "x.4.1": "networkerror", "x.4.2": "networkerror", "x.4.3": "systemerror",
    "5.4.4": "hostunknown", "4.4.4": "networkerror", "x.4.5": "systemfull", "x.4.6": "networkerror",
    "x.4.7": "expired", "x.4.8": "failedstarttls", "x.4.300": "expired", "x.4.312": "networkerror",
    "x.4.316": "networkerror", "x.4.317": "failedstarttls", "x.4.318": "systemerror",
    "x.5.3": "toomanyconn", "x.5.4": "syntaxerror",
    "x.6.0": "contenterror", "x.6.1": "contenterror", "x.6.11": "contenterror",
    "x.7.0": "policyviolation", "x.7.1": "policyviolation", "x.7.2": "rejected", "x.7.3": "securityerror",
    "x.7.4": "securityerror", "x.7.5": "failedstarttls", "x.7.7": "policyviolation", "x.7.8": "securityerror",
    "x.7.9": "securityerror", "x.7.10": "failedstarttls", "x.7.11": "failedstarttls", "x.7.12": "rejected",
    "x.7.13": "suspend", "x.7.14": "securityerror", "x.7.23": "authfailure", "x.7.24": "authfailure",
    "x.7.25": "requireptr", "x.7.26": "authfailure", "x.7.27": "authfailure", "x.7.28": "blocked",
    "x.7.29": "failedstarttls", "x.7.30": "authfailure", "x.7.32": "authfailure", "x.7.40": "authfailure",
    "x.7.57": "securityerror", "x.7.64": "norelaying", "x.7.124": "rejected", "x.7.133": "rejected",
    "x.7.134": "rejected", "x.7.135": "rejected", "x.7.136": "rejected", "x.7.321": "failedstarttls",
    "x.7.322": "failedstarttls", "x.7.323": "failedstarttls", "x.7.324": "failedstarttls",
    "x.7.325": "failedstarttls", "x.7.504": "suspend", "x.7.505": "suspend", "x.7.506": "blocked",
    "x.7.507": "blocked", "x.7.508": "speeding", "x.7.509": "authfailure", "x.7.510": "blocked",
    "x.7.511": "blocked", "x.7.512": "rejected", "x.7.513": "blocked", "x.7.515": "authfailure",
    "x.7.650": "badreputation", "x.7.652": "toomanyconn",
    # subject only
    "x.1": "userunknown", "x.2": "mailboxfull", "x.3": "systemerror", "x.4": "networkerror",
    "x.5": "syntaxerror", "x.6": "contenterror", "x.7": "policyviolation",
}

# --------------------------------------------------------------------------
# SMTP basic reply codes (RFC 5321 4.2.3) when nothing else matched.
# --------------------------------------------------------------------------
BASIC_RULES: dict[int, str] = {
    421: "systemerror", 450: "undefined", 451: "systemerror", 452: "systemfull", 454: "securityerror",
    500: "syntaxerror", 501: "syntaxerror", 502: "syntaxerror", 503: "syntaxerror", 504: "syntaxerror",
    530: "securityerror", 535: "securityerror", 550: "undefined", 552: "mailboxfull",
    554: "undefined",
    # 521, 551, 553, 556 alone are no evidence that names the recipient (553 is as often a
    # sender or relay refusal): "undefined", soft for a 5xx
}

# --------------------------------------------------------------------------
# Twilio error codes -> (kind, reason).  https://www.twilio.com/docs/api/errors
# --------------------------------------------------------------------------
TWILIO_RULES: dict[int, tuple[str, str]] = {
    21211: ("hard", "userunknown"),        # invalid 'To' phone number
    21614: ("hard", "userunknown"),        # 'To' number is not a valid mobile number
    21610: ("hard", "suppressed"),         # recipient replied STOP (unsubscribed)
    21612: ("hard", "notaccept"),          # Twilio cannot route to this number
    21408: ("block", "policyviolation"),   # permission to send to this region not enabled
    # 30003 unreachable handset: powered off / no signal / roaming; the number
    # exists, the handset is temporarily unreachable.  Closest Sisimai reason
    # for "exists but cannot take delivery right now" is networkerror on the
    # recipient side, so kind soft (retried, not suppressed).
    30003: ("soft", "networkerror"),
    30005: ("hard", "userunknown"),        # unknown destination handset
    30006: ("hard", "notaccept"),          # landline or unreachable carrier
    30007: ("block", "filtered"),          # carrier filtering; caller counts it on the account
    30004: ("block", "blocked"),           # message blocked (by recipient or carrier)
    30001: ("transient", "systemfull"),    # queue overflow
    30008: ("transient", "undefined"),     # unknown error
    20429: ("transient", "speeding"),      # too many requests
    429: ("transient", "speeding"),        # HTTP 429
}

# --------------------------------------------------------------------------
# ESP bounce records -> (kind, reason).  Keys: (provider, bounce_type, sub_type),
# all lower-cased with non-alphanumerics removed; "*" matches any sub_type.
# Entries whose reason is in PROVIDER_REFINABLE let a diagnostic SMTP reply
# refine the reason (and kind).
# --------------------------------------------------------------------------
PROVIDER_RULES: dict[tuple[str, str, str], tuple[str | None, str]] = {
    # Amazon SES: bounceType / bounceSubType, complaint, delivery
    ("ses", "permanent", "general"): ("hard", "undefined"),
    ("ses", "permanent", "noemail"): ("hard", "userunknown"),
    ("ses", "permanent", "suppressed"): ("hard", "suppressed"),
    ("ses", "permanent", "onaccountsuppressionlist"): ("hard", "suppressed"),
    ("ses", "permanent", "*"): ("hard", "undefined"),
    ("ses", "transient", "general"): ("soft", "undefined"),
    ("ses", "transient", "mailboxfull"): ("soft", "mailboxfull"),
    ("ses", "transient", "messagetoolarge"): ("soft", "mesgtoobig"),
    ("ses", "transient", "contentrejected"): ("block", "contenterror"),
    ("ses", "transient", "attachmentrejected"): ("block", "policyviolation"),
    ("ses", "transient", "*"): ("soft", "undefined"),
    ("ses", "undetermined", "*"): ("transient", "undefined"),
    ("ses", "complaint", "*"): ("complaint", "feedback"),
    ("ses", "delivery", "*"): (None, "delivered"),
    # SendGrid: event (bounce/blocked/dropped/deferred/spamreport/delivered), type or reason
    ("sendgrid", "bounce", "bounce"): ("hard", "undefined"),
    ("sendgrid", "bounce", "blocked"): ("block", "blocked"),
    ("sendgrid", "bounce", "*"): ("hard", "undefined"),
    ("sendgrid", "blocked", "*"): ("block", "blocked"),
    ("sendgrid", "dropped", "bouncedaddress"): ("hard", "suppressed"),
    ("sendgrid", "dropped", "unsubscribedaddress"): ("hard", "suppressed"),
    ("sendgrid", "dropped", "spamreportingaddress"): ("hard", "suppressed"),
    ("sendgrid", "dropped", "invalid"): ("hard", "userunknown"),
    ("sendgrid", "dropped", "invalidsmtpapiheader"): ("transient", "syntaxerror"),
    ("sendgrid", "dropped", "spamcontent"): ("block", "spamdetected"),
    ("sendgrid", "dropped", "*"): ("hard", "suppressed"),
    ("sendgrid", "deferred", "*"): ("transient", "undefined"),
    ("sendgrid", "spamreport", "*"): ("complaint", "feedback"),
    ("sendgrid", "delivered", "*"): (None, "delivered"),
    # Mailgun: severity (permanent/temporary) or event, reason
    ("mailgun", "permanent", "suppressbounce"): ("hard", "suppressed"),
    ("mailgun", "permanent", "suppresscomplaint"): ("hard", "suppressed"),
    ("mailgun", "permanent", "suppressunsubscribe"): ("hard", "suppressed"),
    ("mailgun", "permanent", "espblock"): ("block", "blocked"),
    ("mailgun", "permanent", "old"): ("transient", "expired"),
    ("mailgun", "permanent", "*"): ("hard", "undefined"),
    ("mailgun", "temporary", "espblock"): ("block", "blocked"),
    ("mailgun", "temporary", "*"): ("transient", "undefined"),
    ("mailgun", "complained", "*"): ("complaint", "feedback"),
    ("mailgun", "delivered", "*"): (None, "delivered"),
    # Postmark: Type
    ("postmark", "hardbounce", "*"): ("hard", "undefined"),
    ("postmark", "softbounce", "*"): ("soft", "undefined"),
    ("postmark", "transient", "*"): ("transient", "undefined"),
    ("postmark", "spamcomplaint", "*"): ("complaint", "feedback"),
    ("postmark", "blocked", "*"): ("block", "blocked"),
    ("postmark", "bademailaddress", "*"): ("hard", "userunknown"),
    ("postmark", "dnserror", "*"): ("transient", "networkerror"),
    ("postmark", "autoresponder", "*"): (None, "vacation"),
    ("postmark", "unsubscribe", "*"): ("hard", "suppressed"),
    ("postmark", "manuallydeactivated", "*"): ("hard", "suppressed"),
    ("postmark", "spamnotification", "*"): ("block", "spamdetected"),
    ("postmark", "virusnotification", "*"): ("block", "virusdetected"),
    ("postmark", "addresschange", "*"): ("hard", "hasmoved"),
    ("postmark", "dmarcpolicy", "*"): ("block", "authfailure"),
    ("postmark", "challengeverification", "*"): ("transient", "onhold"),
    ("postmark", "unconfirmed", "*"): ("transient", "onhold"),
    ("postmark", "smtpapierror", "*"): ("transient", "syntaxerror"),
    ("postmark", "inbounderror", "*"): ("transient", "systemerror"),
    ("postmark", "templaterenderingfailed", "*"): ("transient", "systemerror"),
    ("postmark", "openrelaytest", "*"): ("transient", "onhold"),
    ("postmark", "subscribe", "*"): (None, "delivered"),
    ("postmark", "unknown", "*"): ("transient", "undefined"),
}

PROVIDER_ALIASES: dict[str, str] = {"amazonses": "ses", "aws": "ses", "amazon": "ses"}

# Provider verdicts that a diagnostic reply may refine.
PROVIDER_REFINABLE: frozenset[str] = frozenset({"undefined", "blocked", "onhold"})

# --------------------------------------------------------------------------
# Slow-down replies: a temporary reply (4xx basic code or 4.x.x enhanced code) that says the
# destination wants less mail from us for a while (a rate limit or a temporary reputation
# deferral). Such a reply slows its destination (:mod:`suppression.destinations`); it changes
# nothing in the outcome above (kind and reason stay as classified). Rows: (name, pattern
# on the lower-cased ``"<code> <enhanced> <text>"`` as for TEXT_RULES, an example reply the
# tests check it against). First match wins; texts from the providers' postmaster pages.
# A permanent reply is never a slow-down (it is a refusal, whatever its words); nor is one
# recipient's own rate (Gmail's "450 4.2.1 ... receiving mail at a rate"): that mailbox, not
# the destination, is busy.
# --------------------------------------------------------------------------
SLOW_DOWN_RULES: list[tuple[str, str, str]] = [
    # Gmail: IP, SPF, DKIM or URL domain rate limited (support.google.com/mail/?p=UnsolicitedRateLimitError)
    ("google-unsolicited-rate", r"\b4\.7\.28\b",
     "421-4.7.28 [203.0.113.42] Our system has detected an unusual rate of unsolicited mail "
     "originating from your IP address. To protect our users from spam, mail sent from your IP "
     "address has been temporarily rate limited. - gsmtp"),
    # Gmail's older form, and its low-reputation deferral
    ("google-unusual-rate", r"\b4\.7\.0\b.{0,300}(?:unusual rate|temporarily rate limited)",
     "421-4.7.0 Our system has detected that this message is suspicious due to the very low "
     "reputation of the sending IP address. To protect our users from spam, mail sent from "
     "your IP address has been temporarily rate limited. - gsmtp"),
    # Gmail closes the connection when one client opens too many
    ("google-try-again-later", r"\b4\.7\.0 try again later, closing connection",
     "421 4.7.0 Try again later, closing connection. (EHLO) - gsmtp"),
    # Yahoo / AOL: [TS01] .. [TS03], [TSS04] .. (postmaster.yahooinc.com/error-codes)
    ("yahoo-deferred", r"\[tss?\d{2}\]",
     "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
     "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"),
    ("yahoo-deferred-numeric", r"message temporarily deferred - \[?4\.16\.5\d",
     "421 Message temporarily deferred - 4.16.52"),
    # Microsoft (Outlook.com, Hotmail, Live, MSN): IP reputation rate limits (postmaster.live.com)
    ("microsoft-ip-reputation", r"\b4\.7\.65[01]\b",
     "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
     "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)"),
    ("microsoft-server-busy", r"\b4\.7\.500\b.{0,100}server busy",
     "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)"),
    # any receiver: words that ask for fewer connections or a lower rate
    ("too-many-connections",
     r"too many (?:connections|concurrent connections|sessions|concurrent smtp connections)",
     "421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again "
     "later"),
    ("rate-limited",
     r"\brate[- ]?limit(?:ed|ing)?\b|\bsending (?:too fast|too quickly)\b|try again slower"
     r"|due to excessive volume",
     "450 4.7.1 Rate limit exceeded for this sender, try again later"),
    ("policy-try-again-later", r"\b4\.7\.\d{1,3}\b.{0,300}\btry again later\b",
     "421 4.7.1 Deferred: try again later"),
]
