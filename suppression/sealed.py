"""Secrets sealed for storage (DKIM private keys): AES-256-GCM under a key derived with HKDF
from each ``OUTBOX_SECRET_KEY``.

Sealed with the first key of the list; opened by trying each in turn, so a rotated list (a new
key first, the old one kept after it) still opens what the old key sealed. The associated data
names the secret's place (e.g. ``account/domain/selector``): a sealed value copied to another
place does not open. Format: ``v1.<base64url(nonce 12 bytes | ciphertext | tag)>``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "v1"
_INFO = b"outbox sealed secrets v1"
_NONCE = 12


class Unsealable(ValueError):
    """No key of the list opens the value (the key that sealed it was removed), or it is not
    a sealed value."""


def derive(secret: str) -> bytes:
    """The AES-256 key of one secret key (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode())


class Sealer:
    """Seal with the first secret key, open with any."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        self._keys = [AESGCM(derive(k)) for k in secret_keys]

    def seal(self, plaintext: bytes, place: str) -> str:
        """``plaintext`` sealed for ``place``."""
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._keys[0].encrypt(nonce, plaintext, place.encode())
        return f"{VERSION}.{base64.urlsafe_b64encode(sealed).decode('ascii')}"

    def open(self, value: str, place: str) -> bytes:
        """The plaintext sealed for ``place``; Unsealable when no key opens it."""
        version, _, body = value.partition(".")
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
        except ValueError:
            raw = b""
        if version != VERSION or len(raw) <= _NONCE:
            raise Unsealable("not a sealed value")
        for key in self._keys:
            try:
                return key.decrypt(raw[:_NONCE], raw[_NONCE:], place.encode())
            except InvalidTag:
                continue
        raise Unsealable("no key of OUTBOX_SECRET_KEY opens it (was the key that sealed it "
                         "removed from the list?)")
