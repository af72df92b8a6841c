"""Make genuine DragonFly Mail Agent (dma) bounces for the test corpus (``.../mail/dma/``).

dma has no option for its configuration file (always ``/etc/dma/dma.conf``) and Debian's
package conflicts with Postfix, so the script runs the unpacked package (``apt-get download dma;
dpkg -x dma_*.deb x``) in a private mount namespace (``unshare -m``) where ``/etc`` is an
overlay whose upper layer (a temporary directory) holds ``/etc/dma/dma.conf``: the system's
files are not touched. dma sends everything to a smarthost, a local aiosmtpd on
127.0.0.1:2528 that refuses each ``@refuse.test`` recipient with the reply of
:data:`postfix_bounces.REPLIES` (permanent ones only: dma retries a 4xx for days) and keeps
every other message (the bounces dma sends back to our VERP sender through it).

    sudo PYTHONPATH=. .venv/bin/python scripts/dma_bounces.py tests/data/bounces/mail/dma x
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from postfix_bounces import BOUNCE_DOMAIN, KEY, REPLIES, expected, test_message  # scripts/

from suppression.verp import verp_address

ACCOUNT = "acct_dma"
SMARTHOST = 2528
CASES = [(p, [p]) for p, (reply, _) in REPLIES.items()
         if not reply.removeprefix("DATA ").startswith("4")] + [
    ("multi", ["nouser", "quota", "spamhaus"])]
DMA_CONF = """\
SMARTHOST 127.0.0.1
PORT {port}
SPOOLDIR {spool}
MAILNAME mx3.sender-relay.test
"""


class Smarthost:
    """Refuse ``@refuse.test`` recipients with their reply; keep every other message."""

    def __init__(self) -> None:
        self.kept: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = REPLIES.get(address.split("@")[0], ("250 2.1.5 OK", None))[0] \
            if address.endswith("@refuse.test") else "250 2.1.5 OK"
        if reply.startswith(("DATA ", "2")):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        return reply.format(rcpt=address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:
            reply = REPLIES.get(address.split("@")[0], ("250", None))[0]
            if address.endswith("@refuse.test") and reply.startswith("DATA "):
                return reply[5:]
        if not any(a.endswith("@refuse.test") for a in envelope.rcpt_tos):
            self.kept.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                              envelope.original_content or b""))
        return "250 2.0.0 Ok"


def send(dma: Path, case: str, parts: list[str]) -> dict[str, Any]:
    job = f"job-dma-{case}"
    msg = test_message(job, case, parts, ACCOUNT)
    sender = verp_address(ACCOUNT, job, BOUNCE_DOMAIN, KEY)
    subprocess.run([str(dma), "-f", sender, *[f"{p}@refuse.test" for p in parts]],
                   input=msg.as_bytes(), check=True, timeout=30)
    return expected(job, ACCOUNT, sender, parts)


def in_private_namespace(flag: str) -> None:
    """Re-run this script in a private mount namespace (``unshare -m``) unless the environment
    variable ``flag`` says it already runs in one."""
    if os.environ.get(flag) != "1":
        os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                               *sys.argv], {**os.environ, flag: "1"})


def overlaid(target: str, prefix: str) -> Path:
    """A new temporary directory (mode 755) whose ``upper`` layer takes every write to
    ``target``, mounted over it as an overlay (in this mount namespace only)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    for sub in ("upper", "work"):
        (root / sub).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={target},upperdir="
                    f"{root / 'upper'},workdir={root / 'work'}", target], check=True)
    return root


def main(out: Path, unpacked: Path) -> int:
    in_private_namespace("OUTBOX_DMA_NS")
    out.mkdir(parents=True, exist_ok=True)
    # /etc seen through an overlay in this namespace only: /etc/dma/dma.conf is ours
    root = overlaid("/etc", "outbox-dma-")
    (root / "etc").mkdir()
    (root / "spool").mkdir(mode=0o1777)
    (root / "spool").chmod(0o1777)  # dma drops to the mail group
    (root / "etc" / "dma.conf").write_text(DMA_CONF.format(port=SMARTHOST, spool=root / "spool"))
    (root / "etc" / "auth.conf").write_text("")
    shutil.copytree(root / "etc", "/etc/dma", dirs_exist_ok=True)
    smarthost = Smarthost()
    server = Controller(smarthost, hostname="127.0.0.1", port=SMARTHOST)
    server.start()
    try:
        sent = {case: send(unpacked.resolve() / "usr/sbin/dma", case, parts)
                for case, parts in CASES}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(smarthost.kept) < sum(
                len(p) for _, p in CASES):
            time.sleep(1)
        time.sleep(2)
    finally:
        server.stop()
        subprocess.run(["umount", "/etc"], check=False)
    labels: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for mail_from, rcpt_tos, data in smarthost.kept:
        case = next((c for c, s in sent.items() if s["job"].encode() in data), "unknown")
        rcpt = next((r for r in sent.get(case, {}).get("recipients", {})
                     if f"<{r}>".encode() in data), None)
        counts[case] = counts.get(case, 0) + 1
        name = case if counts[case] == 1 else f"{case}-{counts[case]}"
        (out / f"{name}.eml").write_bytes(data.replace(b"\r\n", b"\n"))
        recipients = {r: v for r, v in sent[case]["recipients"].items() if r == rcpt} \
            if case in sent else {}
        labels[name] = {**sent.get(case, {}), "recipients": recipients,
                        "envelope_to": rcpt_tos, "envelope_from": mail_from}
        print(name, mail_from, rcpt_tos, file=sys.stderr)
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
