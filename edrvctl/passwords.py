"""Station passwords (OCPP security profiles 1 and 2): generated strong, shown once, stored only
as a salted scrypt hash, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import string

# scrypt cost: ~50 ms per check on this project's 2-core machine. Every station pays it at its
# first connection after a server start (checks run in threads; the server then remembers a
# keyed fast digest of a verified password for the rest of its run, see Fleet.check_password).
N, R, P = 2**13, 8, 1
ALPHABET = string.ascii_letters + string.digits  # no symbols: chargers' config UIs mangle them
LENGTH = 32  # OCPP 1.6 security whitepaper: AuthorizationKey 16-40 characters; 2.0.1 allows 40


def generate() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32
    )


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password, salt, N, R, P)
    b64 = base64.b64encode
    return f"scrypt${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def verify(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)
