"""DKIM key material for ``outbox domains``: new keys and the TXT records that publish them.

Small functions with the names of the signer's module (``sender/dkim.py``: ``generate_rsa``,
``generate_ed25519``, ``public_record``), so the store can switch to it without changing.
Keys are PEM (PKCS #8, unencrypted here: :mod:`suppression.sealed` seals them for Redis).

| algorithm | key | TXT value |
| --- | --- | --- |
| ``rsa-sha256`` | RSA 2048 | ``v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo DER>`` |
| ``ed25519-sha256`` | Ed25519 (RFC 8463) | ``v=DKIM1; k=ed25519; p=<base64 of the 32-byte key>`` |
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
ALGORITHMS = (RSA, ED25519)


def generate_rsa(bits: int = 2048) -> bytes:
    """A new RSA private key, PEM PKCS #8."""
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def generate_ed25519() -> bytes:
    """A new Ed25519 private key, PEM PKCS #8."""
    return _pem(ed25519.Ed25519PrivateKey.generate())


def generate(algorithm: str) -> bytes:
    """A new private key for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm == RSA:
        return generate_rsa()
    if algorithm == ED25519:
        return generate_ed25519()
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")


def public_key(pem: bytes) -> str:
    """The ``p=`` value of a private key: base64 of the SubjectPublicKeyInfo DER (RSA) or of
    the raw 32 bytes (Ed25519, RFC 8463 section 4.2)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raise ValueError("a DKIM key is RSA or Ed25519")
    return base64.b64encode(raw).decode("ascii")


def record_for(algorithm: str, public: str) -> str:
    """The DKIM TXT value publishing ``public`` (a ``p=`` value)."""
    kind = "ed25519" if algorithm == ED25519 else "rsa"
    return f"v=DKIM1; k={kind}; p={public}"


def public_record(pem: bytes) -> str:
    """The DKIM TXT value of a private key."""
    key = serialization.load_pem_private_key(pem, password=None)
    algorithm = ED25519 if isinstance(key, ed25519.Ed25519PrivateKey) else RSA
    return record_for(algorithm, public_key(pem))


def record_tags(value: str) -> dict[str, str]:
    """A DKIM (or DMARC) TXT value's tags (``v=DKIM1; k=rsa; p=...``): names lower-cased,
    whitespace inside values removed (RFC 6376 3.6.1: a long key is often split)."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, eq, tag_value = part.partition("=")
        if eq and name.strip():
            tags[name.strip().lower()] = "".join(tag_value.split())
    return tags


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
