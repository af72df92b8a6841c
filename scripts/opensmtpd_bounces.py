"""Make genuine OpenSMTPD bounces for the test corpus (``tests/data/bounces/mail/opensmtpd/``).

Debian's ``opensmtpd`` package starts a system daemon and conflicts with Postfix, so the script
runs the unpacked package (``apt-get download opensmtpd; dpkg -x opensmtpd_*.deb x``) in a
private mount namespace (``unshare -m``) where ``/var`` is an overlay over a temporary
directory (its queue ``/var/spool/smtpd``, its chroot and control socket live there only). It
needs the system users ``opensmtpd`` and ``opensmtpq`` (``useradd --system``; removed again
with ``userdel`` afterwards). ``smtpd -d`` listens on 127.0.0.1:10027 and relays everything to
the smarthost of :mod:`dma_bounces` (127.0.0.1:2528: refuses ``@refuse.test`` recipients with
:data:`postfix_bounces.REPLIES`, keeps the rest: the bounces to our VERP sender).

    sudo PYTHONPATH=. .venv/bin/python scripts/opensmtpd_bounces.py \\
        tests/data/bounces/mail/opensmtpd x
"""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from dma_bounces import CASES, SMARTHOST, Smarthost, in_private_namespace, overlaid  # scripts/
from postfix_bounces import BOUNCE_DOMAIN, KEY, expected, test_message

from suppression.verp import verp_address

ACCOUNT = "acct_osmtpd"
PORT = 10027
SMTPD_CONF = """\
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{smarthost}
match from any for any action "out"
match from local for any action "out"
"""


def send(case: str, parts: list[str]) -> dict[str, Any]:
    job = f"job-osmtpd-{case}"
    msg = test_message(job, case, parts, ACCOUNT)
    sender = verp_address(ACCOUNT, job, BOUNCE_DOMAIN, KEY)
    with smtplib.SMTP("127.0.0.1", PORT) as client:
        client.ehlo("outbox.test")
        client.sendmail(sender, [f"{p}@refuse.test" for p in parts], msg.as_bytes())
    return expected(job, ACCOUNT, sender, parts)


def main(out: Path, unpacked: Path) -> int:
    in_private_namespace("OUTBOX_SMTPD_NS")
    out.mkdir(parents=True, exist_ok=True)
    root = overlaid("/var", "outbox-smtpd-")
    Path("/var/lib/opensmtpd/empty").mkdir(parents=True, exist_ok=True)
    shutil.rmtree("/var/spool/smtpd", ignore_errors=True)
    conf = root / "smtpd.conf"
    conf.write_text(SMTPD_CONF.format(port=PORT, smarthost=SMARTHOST))
    smarthost = Smarthost()
    server = Controller(smarthost, hostname="127.0.0.1", port=SMARTHOST)
    server.start()
    daemon = subprocess.Popen([str(unpacked.resolve() / "usr/sbin/smtpd"), "-d", "-f",
                               str(conf)])
    try:
        time.sleep(2)
        sent = {case: send(case, parts) for case, parts in CASES}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(smarthost.kept) < len(CASES):
            time.sleep(1)
        time.sleep(3)
    finally:
        daemon.terminate()
        daemon.wait()
        server.stop()
        subprocess.run(["umount", "/var"], check=False)
    labels: dict[str, Any] = {}
    for mail_from, rcpt_tos, data in smarthost.kept:
        case = next((c for c, s in sent.items() if s["job"].encode() in data), "unknown")
        (out / f"{case}.eml").write_bytes(data.replace(b"\r\n", b"\n"))
        labels[case] = {**sent.get(case, {}), "envelope_to": rcpt_tos,
                        "envelope_from": mail_from}
        print(case, mail_from, rcpt_tos, file=sys.stderr)
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
