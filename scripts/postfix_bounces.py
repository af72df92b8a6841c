"""Make genuine Postfix (or Exim) bounces for the test corpus (tests/data/bounces/mail/<mta>/).

Runs a private Postfix instance (or Exim: ``--exim DIR``, the unpacked ``exim4-daemon-light``
package, whose Debian package cannot be installed beside Postfix; it runs with its own
configuration and spool, :data:`EXIM_CONF`) (its own config and queue directories under a temporary
directory, SMTP on 127.0.0.1:10025 only; needs root and Debian's ``postfix`` package, whose
system instance is left alone) that relays ``@refuse.test`` to a local aiosmtpd refusing each
recipient with the reply chosen in :data:`REPLIES`, and every other domain (the bounces, sent to
our VERP sender's domain) to a local aiosmtpd that keeps them. Each bounce Postfix makes is
written as ``<case>.eml``; ``labels.json`` beside them says what each case's reply was, and the
kind a reader should find.

    sudo PYTHONPATH=. .venv/bin/python scripts/postfix_bounces.py tests/data/bounces/mail/postfix
    apt-get download exim4-daemon-light exim4-base libidn12; for f in *.deb; do dpkg -x $f x; done
    sudo PYTHONPATH=. .venv/bin/python scripts/postfix_bounces.py tests/data/bounces/mail/exim \
        --exim x   # needs the system user Debian-exim (useradd --system Debian-exim)
"""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from suppression.verp import verp_address

KEY = "current-key-0123456789abcdef"  # tests/integration/test_bounces_listener.py's KEY
BOUNCE_DOMAIN = "bounces.outbox.example"
MSGID_DOMAIN = "mail.outbox.example"
ACCOUNT = "acct_pf"
REFUSER, KEEPER, POSTFIX, EXIM = 2526, 2527, 10025, 10026

#: local part -> (reply at RCPT (or at DATA when it starts with "DATA "), expected kind)
REPLIES: dict[str, tuple[str, str | None]] = {
    "nouser": ("550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual "
               "mailbox table", "hard"),
    "nosuch": ("550 No such user here", "hard"),
    "disabled": ("550 5.2.1 The email account that you tried to reach is disabled.", "hard"),
    "quota": ("552 5.2.2 <{rcpt}>: Mailbox full, quota exceeded", "soft"),
    "quota4": ("452 4.2.2 The email account that you tried to reach is over quota.", "soft"),
    "moved": ("551 5.1.6 User has moved; please try <new@elsewhere.test>", "hard"),
    "spamhaus": ("554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using "
                 "zen.spamhaus.org", "block"),
    "reputation": ("550 5.7.1 Our system has detected that this message is likely "
                   "unsolicited mail. To reduce the amount of spam sent to Gmail, this message "
                   "has been blocked.", "block"),
    "relay": ("554 5.7.1 <{rcpt}>: Relay access denied", "block"),
    "dmarc": ("550 5.7.26 Unauthenticated email from outbox.example is not accepted due to "
              "domain's DMARC policy.", "block"),
    "ratelimit": ("421 4.7.0 Try again later, closing connection.", "block"),
    "toobig": ("DATA 552 5.3.4 Message size exceeds fixed maximum message size", "soft"),
    "content": ("DATA 554 5.6.0 Message content rejected, UBE, id=12345-01", "block"),
    "busy": ("451 4.3.0 Temporary local problem - please try later", "transient"),
    "vague": ("550 Requested action not taken", "soft"),
}
#: cases: (case name, local parts in one message, extra RCPT options, VERP sender or not)
CASES: list[tuple[str, list[str], str, bool]] = [
    *[(part, [part], "", True) for part in REPLIES if part not in ("ratelimit", "busy",
                                                                  "quota4")],
    ("multi", ["nouser", "quota", "spamhaus"], "", True),
    ("msgid-only", ["nouser"], "", False),
    ("expired-quota4", ["quota4"], "", True),
    ("expired-busy", ["busy"], "", True),
    ("expired-ratelimit", ["ratelimit"], "", True),
    ("success", ["accept"], "NOTIFY=SUCCESS", True),
]

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
myhostname = mx1.sender-relay.test
mydomain = sender-relay.test
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = texthash:{dir}/conf/transport
default_transport = smtp:[127.0.0.1]:{keeper}
alias_maps =
alias_database =
maillog_file_prefixes = /tmp, /var, /dev/stdout
maillog_file = {dir}/maillog
smtputf8_enable = no
delay_warning_time = 2s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 8s
bounce_queue_lifetime = 8s
smtp_connect_timeout = 5s
"""


EXIM_CONF = """\
spool_directory = {dir}/spool
exim_path = {dir}/exim
dsn_advertise_hosts = *
log_file_path = {dir}/%slog
primary_hostname = mx2.sender-relay.test
qualify_domain = sender-relay.test
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
acl_smtp_rcpt = accept
host_lookup =
rfc1413_hosts =
delay_warning = 3s
begin routers
refuse:
  driver = manualroute
  domains = refuse.test
  transport = to_refuser
  route_list = * 127.0.0.1
  self = send
keep:
  driver = manualroute
  transport = to_keeper
  route_list = * 127.0.0.1
  self = send
begin transports
to_refuser:
  driver = smtp
  port = {refuser}
  allow_localhost
  hosts_avoid_tls = *
to_keeper:
  driver = smtp
  port = {keeper}
  allow_localhost
  hosts_avoid_tls = *
begin retry
* * F,8s,1s
"""


class Refuser:
    """Refuse each recipient of ``@refuse.test`` with the reply its local part chooses."""

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = REPLIES.get(address.split("@")[0], ("250 2.1.5 OK", None))[0]
        if reply.startswith("DATA "):
            reply = "250 2.1.5 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply.format(rcpt=address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:
            reply = REPLIES.get(address.split("@")[0], ("250", None))[0]
            if reply.startswith("DATA "):
                return reply[5:]
        return "250 2.0.0 Ok: queued"


class Keeper:
    """Keep every message (the bounces) in memory with its envelope."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                              envelope.original_content or b""))
        return "250 2.0.0 Ok"


def postfix(conf: Path, *args: str) -> None:
    subprocess.run(["postfix", "-c", str(conf), *args], check=True)


def configure(root: Path) -> Path:
    root.chmod(0o755)  # the postfix user reaches its data directory through it
    conf = root / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text(MAIN_CF.format(dir=root, keeper=KEEPER))
    (conf / "transport").write_text(f"refuse.test smtp:[127.0.0.1]:{REFUSER}\n")
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if fields[:2] == ["smtp", "inet"]:
            line = f"127.0.0.1:{POSTFIX} inet n - n - - smtpd"
        elif len(fields) >= 8 and not line.startswith(("#", " ")) and fields[4] == "y":
            fields[4] = "n"  # no chroot: the private queue is not set up for it
            line = " ".join(fields)
        lines.append(line)
    (conf / "master.cf").write_text("\n".join(lines) + "\n")
    for sub in ("queue", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    subprocess.run(["postfix", "-c", str(conf), "set-permissions"], check=False,
                   capture_output=True)
    return conf


def start_exim(root: Path, unpacked: Path) -> subprocess.Popen[bytes]:
    (root / "spool").mkdir()
    shutil.chown(root / "spool", "Debian-exim")
    shutil.chown(root, "Debian-exim")
    conf = root / "exim.conf"
    conf.write_text(EXIM_CONF.format(dir=root, port=EXIM, refuser=REFUSER, keeper=KEEPER))
    unpacked = unpacked.resolve()
    wrapper = root / "exim"  # Exim re-executes itself with a cleared environment
    wrapper.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={unpacked}/usr/lib/x86_64-linux-gnu "
                       f"exec {unpacked}/usr/sbin/exim4 \"$@\"\n")
    wrapper.chmod(0o755)
    daemon = subprocess.Popen([str(wrapper), "-C", str(conf), "-bdf", "-q1s"])
    time.sleep(2)
    return daemon


def test_message(job: str, case: str, parts: list[str], account: str) -> EmailMessage:
    """The receipt every generator here sends (to ``parts`` at refuse.test), with our
    Message-ID and account header, as Outbox would send it."""
    msg = EmailMessage()
    msg["From"] = "Acme <sales@acme.example>"
    msg["To"] = ", ".join(f"{p}@refuse.test" for p in parts)
    msg["Subject"] = f"Receipt for {case}"
    msg["Message-ID"] = f"<{job}@{MSGID_DOMAIN}>"
    msg["X-Outbox-Account"] = account
    msg.set_content(f"Thank you ({case}).\n")
    return msg


def expected(job: str, account: str, sender: str, parts: list[str]) -> dict[str, Any]:
    """What the bounce of ``job`` must be read as: each recipient's reply and kind."""
    return {"job": job, "account": account, "sender": sender,
            "recipients": {f"{p}@refuse.test": {"reply": REPLIES.get(p, ("250 2.0.0 Ok", None))[0]
                                               .removeprefix("DATA ").format(
                                                   rcpt=f"{p}@refuse.test"),
                                               "kind": REPLIES.get(p, ("", None))[1]}
                           for p in parts}}


def send(case: str, parts: list[str], options: str, verp: bool,
         port: int = POSTFIX) -> dict[str, Any]:
    job = f"job-pf-{case}"
    msg = test_message(job, case, parts, ACCOUNT)
    sender = verp_address(ACCOUNT, job, BOUNCE_DOMAIN, KEY) if verp \
        else f"bounces@{BOUNCE_DOMAIN}"
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("outbox.test")
        rcpt_options = [options] if options else []
        client.sendmail(sender, [f"{p}@refuse.test" for p in parts], msg.as_bytes(),
                        rcpt_options=rcpt_options)
    return expected(job, ACCOUNT, sender, parts)


def main(out: Path, exim: Path | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    keeper = Keeper()
    servers = [Controller(Refuser(), hostname="127.0.0.1", port=REFUSER),
               Controller(keeper, hostname="127.0.0.1", port=KEEPER)]
    for server in servers:
        server.start()
    root = Path(tempfile.mkdtemp(prefix="outbox-mta-"))
    daemon = start_exim(root, exim) if exim else None
    conf = None if exim else configure(root)
    if conf:
        postfix(conf, "start")
    try:
        sent = {case: send(case, parts, options, verp, EXIM if exim else POSTFIX)
                for case, parts, options, verp in CASES}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(keeper.messages) < len(CASES) + 3:
            time.sleep(1)
        time.sleep(3)
    finally:
        if conf:
            postfix(conf, "stop")
        if daemon:
            daemon.terminate()
            daemon.wait()
        for server in servers:
            server.stop()
    labels: dict[str, Any] = {}
    for n, (mail_from, rcpt_tos, data) in enumerate(keeper.messages):
        case = next((c for c, s in sent.items() if s["job"].encode() in data), f"unknown-{n}")
        delayed = b"Action: delayed" in data or b"Warning: message" in data
        kind = "delayed" if delayed else "report"
        name = f"{case}-{kind}" if kind == "delayed" else case
        (out / f"{name}.eml").write_bytes(data.replace(b"\r\n", b"\n"))
        labels[name] = {**sent.get(case, {}), "envelope_to": rcpt_tos,
                        "envelope_from": mail_from}
        print(name, mail_from, rcpt_tos, file=sys.stderr)
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    shutil.copy(root / "maillog", out.parent / "postfix-maillog.txt") \
        if (root / "maillog").exists() else None
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[3]) if sys.argv[2:3] == ["--exim"] else None))
