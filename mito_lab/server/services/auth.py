"""Tokens, keys and passwords.

Tokens are plain EdDSA (Ed25519) JWTs with the reference's claims ``sub``, ``exp`` and ``sign``,
plus ``kind`` ("user" or "worker") so that one kind of token never opens the other's routes. A
bearer that is base64 of a JWT (what reference clients send) is accepted too.
"""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mito_lab.server.errors import InvalidRequest, InvalidToken

VERIFIED_TOKENS_KEPT = 4096

_hasher = PasswordHasher()


async def hash_password(md5_digest: bytes) -> str:
    """Argon2 over the MD5 digest bytes, as the reference; off the event loop (it is slow on purpose)."""
    return await asyncio.to_thread(_hasher.hash, md5_digest)


_unknown_user_hash: str | None = None


async def unknown_user_hash() -> str:
    """A hash of the same cost as the users', of a secret no one knows: made once (at start)."""
    global _unknown_user_hash
    if _unknown_user_hash is None:
        _unknown_user_hash = await hash_password(secrets.token_bytes(16))
    return _unknown_user_hash


async def verify_password(encrypted: str | None, md5_digest: bytes) -> bool:
    """Off the event loop. ``None`` (no such user) is checked against ``unknown_user_hash`` and
    fails: a wrong name takes as long as a wrong password, and tells no more."""
    checked = encrypted if encrypted is not None else await unknown_user_hash()

    def check() -> bool:
        try:
            return _hasher.verify(checked, md5_digest)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check) and encrypted is not None


def new_signature() -> int:
    return secrets.randbits(63)


class KeyFileError(Exception):
    """The configured key files cannot be used."""


def load_or_create_keys(
    data_dir: Path, private_path: Path | None, public_path: Path | None
) -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """Configured PEM paths must exist; without configuration a pair is generated into the data dir."""
    if private_path is None and public_path is None:
        private_path, public_path = data_dir / "private.pem", data_dir / "public.pem"
        if not private_path.exists():
            key = Ed25519PrivateKey.generate()
            data_dir.mkdir(parents=True, exist_ok=True)
            private_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            private_path.chmod(0o600)
            public_path.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
    if private_path is None or public_path is None:
        raise KeyFileError("give both access_token_private_path and access_token_public_path, or neither")
    try:
        private_key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        public_key = serialization.load_pem_public_key(public_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the token keys ({private_path}, {public_path}): {exc}") from exc
    if not isinstance(private_key, Ed25519PrivateKey) or not isinstance(public_key, Ed25519PublicKey):
        raise KeyFileError("the token keys must be Ed25519 (openssl genpkey -algorithm ed25519)")
    return private_key, public_key


@dataclass(frozen=True)
class Claims:
    sub: str
    sign: int
    kind: str
    exp: datetime


class Tokens:
    def __init__(self, private_key: Ed25519PrivateKey, public_key: Ed25519PublicKey) -> None:
        self._private = private_key
        self._public = public_key
        # Checking a signature costs more than the rest of a worker's report: a token's verified
        # claims are kept (bounded) and only their expiry is checked again. Revocation is not a
        # signature matter: it is checked by the callers on every request (``sign``, the user's state).
        self._verified: OrderedDict[tuple[str, str], Claims] = OrderedDict()

    def issue(self, subject: str, kind: str, lifetime: timedelta, sign: int = 0) -> str:
        expires = datetime.now(timezone.utc) + lifetime
        try:
            exp = math.ceil(expires.timestamp())  # a token lives at least as long as asked
        except (OverflowError, ValueError) as exc:
            raise InvalidRequest(f"Invalid lifetime {lifetime}") from exc
        return jwt.encode({"sub": subject, "exp": exp, "sign": sign, "kind": kind}, self._private, "EdDSA")

    def verify(self, bearer: str, kind: str) -> Claims:
        claims = self._verified.get((bearer, kind))
        if claims is None:
            claims = self._decode(bearer, kind)
            self._verified[(bearer, kind)] = claims
            if len(self._verified) > VERIFIED_TOKENS_KEPT:
                self._verified.popitem(last=False)
        if claims.exp <= datetime.now(timezone.utc):
            self._verified.pop((bearer, kind), None)
            raise InvalidToken()
        return claims

    def _decode(self, bearer: str, kind: str) -> Claims:
        token = bearer.strip()
        if token.count(".") != 2:  # reference clients send base64 of the JWT
            try:
                token = base64.b64decode(token, validate=True).decode("ascii")
            except ValueError:  # not base64 (binascii.Error), not ASCII, not text
                raise InvalidToken() from None
        try:
            claims = jwt.decode(token, self._public, algorithms=["EdDSA"], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError:
            raise InvalidToken() from None
        if claims.get("kind", kind) != kind or not isinstance(claims.get("sign", 0), int):
            raise InvalidToken()
        return Claims(
            sub=str(claims["sub"]),
            sign=claims.get("sign", 0),
            kind=kind,
            exp=datetime.fromtimestamp(claims["exp"], timezone.utc),
        )
