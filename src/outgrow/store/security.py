"""Password hashing and API token secrets.

Passwords: ``hashlib.scrypt`` (n=2**14, r=8, p=1, 32 bytes) with a 16-byte random salt,
stored as ``scrypt$<salt hex>$<hash hex>``. Tokens: the secret ``og_`` + 40 URL-safe
characters is shown once; only its sha256 (hex) and its first 8 characters are stored.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SCRYPT_MAXMEM = 64 * 1024 * 1024  # n=2**14, r=8 needs 16 MiB; OpenSSL's default cap is 32 MiB
TOKEN_PREFIX = "og_"
TOKEN_SHOWN_CHARS = 8


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=SCRYPT_DKLEN,
        maxmem=SCRYPT_MAXMEM,
    )


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${salt.hex()}${_scrypt(password, salt).hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches the stored ``scrypt$salt$hash`` (constant-time compare)."""
    try:
        scheme, salt_hex, hash_hex = stored.split("$")
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(hash_hex)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    return hmac.compare_digest(_scrypt(password, salt), expected)


@functools.cache
def dummy_hash() -> str:
    """Checked against when the user does not exist, so that an unknown name costs the
    same time as a wrong password (made on first use: scrypt takes tens of ms)."""
    return hash_password(secrets.token_urlsafe(16))


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str, str]:
    """A new API token: ``(secret, prefix, sha256 hex)``; the secret is never stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(30)
    return secret, secret[:TOKEN_SHOWN_CHARS], token_hash(secret)
