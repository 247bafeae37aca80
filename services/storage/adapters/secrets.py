"""Secrets at rest: AES-256-GCM under a key ring (the current key encrypts; older keys still decrypt).

A sealed value is `v1.<key id>.<base64url(nonce | ciphertext+tag)>`. The key id is the first 8
hex digits of the SHA-256 of the key, so a value names the key that opens it and rotation can
find what is still under an old key. The associated data binds a value to its row (account and
connection id): a ciphertext copied to another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION = "v1"


class SecretsError(Exception):
    """A key is missing or malformed, or a sealed value does not open; never carries plaintext."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(text: str) -> bytes:
    """A key written as base64 (standard or URL-safe) or hex; 32 bytes."""
    text = text.strip()
    for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise SecretsError(f"an encryption key must be {KEY_BYTES} bytes, written as base64 or hex")


def load_or_create_key_file(path: Path) -> bytes:
    """The key in `path`; a new random one written there (mode 0600) when the file does not exist."""
    try:
        return parse_key(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return parse_key(path.read_text(encoding="ascii"))  # another process made it first
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(base64.b64encode(key).decode() + "\n")
    return key


class KeyRing:
    def __init__(self, current: bytes, previous: Sequence[bytes] = ()):
        if len(current) != KEY_BYTES or any(len(key) != KEY_BYTES for key in previous):
            raise SecretsError(f"encryption keys must be {KEY_BYTES} bytes")
        self.current_id = key_id(current)
        self._keys = {key_id(key): AESGCM(key) for key in (*previous, current)}
        self._current = AESGCM(current)

    def seal(self, plaintext: bytes, associated: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._current.encrypt(nonce, plaintext, associated)
        return f"{_VERSION}.{self.current_id}.{base64.urlsafe_b64encode(sealed).decode()}"

    def open(self, sealed: str, associated: bytes) -> bytes:
        version, kid, body = _split(sealed)
        cipher = self._keys.get(kid)
        if version != _VERSION or cipher is None:
            raise SecretsError(f"no key {kid!r} in the key ring for a sealed value")
        raw = base64.urlsafe_b64decode(body.encode())
        try:
            return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], associated)
        except InvalidTag as exc:
            raise SecretsError("a sealed value does not open: wrong key or altered data") from exc

    def is_current(self, sealed: str) -> bool:
        return _split(sealed)[1] == self.current_id


def _split(sealed: str) -> tuple[str, str, str]:
    parts = sealed.split(".", 2)
    if len(parts) != 3:
        raise SecretsError("not a sealed value")
    return parts[0], parts[1], parts[2]
