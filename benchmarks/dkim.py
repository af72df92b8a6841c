"""CPU per message of DKIM signing: sender.dkim (RSA-2048, Ed25519, both) beside dkimpy's
``dkim.sign``, in one run, on the typical rendered marketing message of benchmarks/mime_bench.py.

    .venv/bin/python -m benchmarks.dkim [N]        # N messages per round (default 2,000)

Each message is rendered first (its own recipient and unsubscribe link, so every body
differs); then the rows take turns over ``ROUNDS`` rounds and each row's median of the rounds
is printed, as CPU µs per message (``time.process_time``: this process's user + system time,
so other load on the machine counts less than with wall time). dkimpy is slow (pure-Python
RSA), so its rows sign N / 10 messages a round. Reference rows: sender.dkim with a key whose
signature costs nothing (its own work: parse, canonicalise, hash, format), the OpenSSL
signature alone (a SHA-256 digest signed through ``cryptography``, as sender.dkim calls it)
and the rendering alone (what a message costs with signing off).
"""

from __future__ import annotations

import base64
import platform
import statistics
import sys
import time
from collections.abc import Callable

import cryptography
import dkim
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from benchmarks.mime_bench import DOMAIN, footers, make_jobs, unsub
from sender.dkim import DkimKey, DkimSigner, generate_ed25519, generate_rsa
from sender.mime import render_email
from sender.models import EmailJob

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
ROUNDS = 5
NOW = int(time.time())


def render(jobs: list[EmailJob]) -> list[bytes]:
    out = []
    for i, job in enumerate(jobs):
        ft, fh = footers(i)
        out.append(render_email(
            job, message_id_domain=DOMAIN, date=NOW, footer_text=ft, footer_html=fh,
            extra_headers=(("List-Unsubscribe", f"<{unsub(i)}>"),
                           ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))).data)
    return out


class _NoSignature(ed25519.Ed25519PrivateKey):
    """An Ed25519 key whose signature is 64 zero bytes at no cost: sender.dkim's own work
    (parse, canonicalise, hash, format) measured without OpenSSL's."""

    def sign(self, data: bytes) -> bytes:
        return bytes(64)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        raise NotImplementedError

    def private_bytes(self, *args: object) -> bytes:
        raise NotImplementedError

    def private_bytes_raw(self) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> _NoSignature:
        return self

    def __deepcopy__(self, memo: dict) -> _NoSignature:
        return self


def cpu_per_item(fn: Callable[[object], object], items: list[object]) -> float:
    """CPU µs per call of ``fn`` over ``items``."""
    t0 = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - t0) / len(items) * 1e6


def rows(messages: list[bytes], jobs: list[EmailJob]) -> dict[str, tuple[Callable, list]]:
    """name -> (function of one item, items)."""
    rsa_key = DkimKey.from_pem("acme.example", "s2026", generate_rsa())
    ed_key = DkimKey.from_pem("acme.example", "e2026", generate_ed25519())
    rsa_pem = generate_rsa()
    # dkimpy takes an Ed25519 key as the base64 of its 32 raw bytes
    ed_raw = base64.b64encode(ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
    signer = DkimSigner()
    few = messages[:max(1, len(messages) // 10)]
    include = [h.lower().encode() for h in ("From", "Subject", "Date", "To", "Message-ID",
                                            "MIME-Version", "Content-Type", "List-Unsubscribe",
                                            "List-Unsubscribe-Post")]
    digest = b"\x5a" * 32
    assert isinstance(rsa_key.private_key, rsa.RSAPrivateKey)
    assert isinstance(ed_key.private_key, ed25519.Ed25519PrivateKey)
    from sender.dkim import _PKCS1, _PREHASHED  # the exact signature call sender.dkim makes

    private_rsa, private_ed = rsa_key.private_key, ed_key.private_key
    no_sig = DkimKey("acme.example", "n2026", "ed25519-sha256", _NoSignature())
    return {
        "sender.dkim RSA-2048": (lambda m: signer.sign(m, [rsa_key], now=NOW), messages),
        "sender.dkim Ed25519": (lambda m: signer.sign(m, [ed_key], now=NOW), messages),
        "sender.dkim RSA-2048 + Ed25519": (
            lambda m: signer.sign(m, [rsa_key, ed_key], now=NOW), messages),
        "dkimpy dkim.sign RSA-2048": (
            lambda m: dkim.sign(m, b"s2026", b"acme.example", rsa_pem, include_headers=include,
                                canonicalize=(b"relaxed", b"relaxed")), few),
        "dkimpy dkim.sign Ed25519": (
            lambda m: dkim.sign(m, b"e2026", b"acme.example", ed_raw, include_headers=include,
                                canonicalize=(b"relaxed", b"relaxed"),
                                signature_algorithm=b"ed25519-sha256"), few),
        "reference: sender.dkim's own work (a no-op signature)": (
            lambda m: signer.sign(m, [no_sig], now=NOW), messages),
        "reference: OpenSSL RSA-2048 signature alone": (
            lambda _: private_rsa.sign(digest, _PKCS1, _PREHASHED), messages),
        "reference: OpenSSL Ed25519 signature alone": (
            lambda _: private_ed.sign(digest), messages),
        "reference: render_email alone (signing off)": (lambda j: render([j]), jobs),
    }


def main() -> None:
    jobs = make_jobs(N)
    messages = render(jobs)
    table = rows(messages, jobs)
    for fn, items in table.values():  # warm up
        cpu_per_item(fn, items[:20])
    samples: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(ROUNDS):
        for name, (fn, items) in table.items():
            samples[name].append(cpu_per_item(fn, items))
    size = statistics.mean(map(len, messages))
    print(f"{N} rendered messages of ~{size:,.0f} bytes, {ROUNDS} rounds, medians; "
          f"Python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"dkimpy {_version('dkimpy')}")
    print("| signer | CPU µs per message (median) | min-max of the rounds |")
    print("| --- | ---: | ---: |")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):,.1f} | "
              f"{min(values):,.1f}-{max(values):,.1f} |")
    for algorithm in ("RSA-2048", "Ed25519"):
        overhead = (statistics.median(samples[f"sender.dkim {algorithm}"])
                    - statistics.median(samples[f"reference: OpenSSL {algorithm} signature alone"]))
        print(f"sender.dkim {algorithm} minus OpenSSL's signature alone: {overhead:,.1f} µs")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
