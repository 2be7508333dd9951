"""Tokens and accounts: tampered, forged, expired and cross-kind tokens, locked and deleted users,
and password changes that end the other sessions. Every refusal is a 401 or 403 with a message."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization

from conftest import Platform, http


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def private_key(platform: Platform) -> object:
    return serialization.load_pem_private_key((platform.home / "coordinator-data" / "private.pem").read_bytes(), None)


def resigned(platform: Platform, token: str, **changes: object) -> str:
    """``token``'s own claims (its user's real signature included) with ``changes`` (``None``
    drops a claim), signed with the coordinator's real key: only what changed can refuse it."""
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return jwt.encode({name: value for name, value in claims.items() if value is not None}, private_key(platform), "EdDSA")


def refused(platform: Platform, token: str, path: str = "/auth", method: str = "GET") -> bool:
    answer = http(method, f"{platform.url}{path}", token=token)
    return answer.status == 401 and answer.json == {"msg": "Authentication error: Invalid token"}


def test_tampered_tokens_are_refused(platform: Platform) -> None:
    platform.add_user("victim")
    token = platform.token()
    header, payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    public_pem = (platform.home / "coordinator-data" / "public.pem").read_bytes()
    hs256 = b64url(b'{"alg":"HS256","typ":"JWT"}')
    tampered = [
        f"{header}.{b64url(json.dumps({**claims, 'sub': 'victim'}).encode())}.{signature}",  # another user
        f"{header}.{b64url(json.dumps({**claims, 'exp': claims['exp'] + 10**6}).encode())}.{signature}",  # a longer life
        f"{header}.{payload}.{signature[:-4]}{'AAAA' if not signature.endswith('AAAA') else 'BBBB'}",  # a damaged signature
        f"{header}.{payload}.",  # no signature
        token[:-1],
        f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}.",  # alg "none"
        # algorithm confusion: an HMAC signed with the public key as the secret
        f"{hs256}.{payload}." + b64url(hmac.new(public_pem, f"{hs256}.{payload}".encode(), hashlib.sha256).digest()),
        base64.b64encode(f"{header}.{payload}.x".encode()).decode(),  # the reference's base64 wrapping, damaged inside
        "",
        "a.b.c",
        "caf\xe9",  # not ASCII
    ]
    for bad in tampered:
        answer = http("GET", f"{platform.url}/auth", token=bad) if bad else http("GET", f"{platform.url}/auth", headers={"Authorization": "Bearer "})
        assert answer.status == 401 and answer.json["msg"].startswith("Authentication error"), (bad, answer.body)
    assert http("GET", f"{platform.url}/auth", token=token).body == b"mitosis_admin"  # the real one still works


def test_expired_and_cross_kind_tokens(platform: Platform) -> None:
    token = platform.token()
    assert http("GET", f"{platform.url}/auth", token=resigned(platform, token)).body == b"mitosis_admin"  # re-signing alone keeps it valid
    assert refused(platform, resigned(platform, token, exp=int(time.time()) - 1))  # only its expiry refuses it
    # right key, user and signature, but a worker token where a user token belongs and back
    assert refused(platform, resigned(platform, token, kind="worker"))
    registered = platform.api("POST", "/workers", {"groups": ["mitosis_admin"]}).json
    assert refused(platform, registered["token"])  # a worker's token on a user route
    assert http("POST", f"{platform.url}/workers/heartbeat", token=platform.token()).status == 401  # and the reverse
    assert http("GET", f"{platform.url}/workers/tasks", token=platform.token()).status == 401
    # tokens without a kind (as the reference issues them) still open only their own kind of route
    kindless = resigned(platform, token, kind=None)
    assert http("GET", f"{platform.url}/auth", token=kindless).body == b"mitosis_admin"
    assert http("POST", f"{platform.url}/workers/heartbeat", token=kindless).status == 401
    kindless_worker = resigned(platform, registered["token"], kind=None)
    assert http("POST", f"{platform.url}/workers/heartbeat", token=kindless_worker).status == 200
    assert http("GET", f"{platform.url}/auth", token=kindless_worker).status == 401
    assert http("POST", f"{platform.url}/workers/heartbeat", token=registered["token"]).status == 200


def test_locked_and_deleted_users(platform: Platform) -> None:
    token = platform.add_user("lou")
    other_session = http("POST", f"{platform.url}/login", {"username": "lou", "password": "lou-password", "retain": True}).json["token"]
    assert platform.api("POST", "/admin/users/lou/state", {"state": "Locked"}).status == 200
    for session in (token, other_session):
        locked = http("GET", f"{platform.url}/auth", token=session)
        assert locked.status == 403 and locked.json["msg"] == "Authentication error: Permission denied: user lou is Locked"
    assert http("POST", f"{platform.url}/login", {"username": "lou", "password": "lou-password"}).status == 403
    assert http("POST", f"{platform.url}/tasks", {"task_spec": {"args": ["true"]}}, token=token).status == 403
    assert platform.api("POST", "/admin/users/lou/state", {"state": "Active"}).status == 200
    assert http("GET", f"{platform.url}/auth", token=token).body == b"lou"  # unlocking restores the sessions

    assert platform.api("DELETE", "/admin/users/lou").status == 200
    assert http("GET", f"{platform.url}/auth", token=token).status == 403
    assert http("POST", f"{platform.url}/login", {"username": "lou", "password": "lou-password"}).status == 403
    assert platform.api("POST", "/admin/users", {"username": "lou", "password": "x"}).status == 409  # the name stays taken


def test_a_submit_checks_the_token_in_the_statement_that_takes_its_ids(platform: Platform) -> None:
    """A submit authenticates as it writes: a user the coordinator has seen submit (whose id it
    keeps) is refused as soon as their access ends, with the error an authentication gives."""
    token = platform.add_user("sam")
    platform.add_user("tess")
    submit = lambda group=None: http("POST", f"{platform.url}/tasks", {"task_spec": {"args": ["true"]}, "group_name": group}, token=token)  # noqa: E731
    assert submit().status == 200
    assert platform.api("POST", "/admin/users/sam/state", {"state": "Locked"}).status == 200
    locked = submit()
    assert locked.status == 403 and locked.json["msg"] == "Authentication error: Permission denied: user sam is Locked"
    assert platform.api("POST", "/admin/users/sam/state", {"state": "Active"}).status == 200
    assert submit().status == 200
    assert submit("tess").status == 403  # a group to which sam may not write: the group's error, not the token's
    assert submit("nobody").status == 404
    fresh = http("POST", f"{platform.url}/login", {"username": "sam", "password": "sam-password"}).json["token"]  # ends the other sessions
    ended = submit()
    assert ended.status == 401 and ended.json == {"msg": "Authentication error: Wrong credentials"}
    assert http("POST", f"{platform.url}/tasks/query", {"count": True}, token=fresh).json["count"] == 2  # nothing refused was written


def test_a_password_change_ends_every_other_session(platform: Platform) -> None:
    first = platform.add_user("pia")
    second = http("POST", f"{platform.url}/login", {"username": "pia", "password": "pia-password", "retain": True}).json["token"]
    digest = lambda text: list(hashlib.md5(text.encode()).digest())  # noqa: E731
    wrong_old = http("POST", f"{platform.url}/users/pia/password", {"old_md5_password": digest("nope"), "new_md5_password": digest("new")}, token=first)
    assert wrong_old.status == 401
    assert http("GET", f"{platform.url}/auth", token=second).status == 200  # a failed change ends nothing
    changed = http("POST", f"{platform.url}/users/pia/password", {"old_md5_password": digest("pia-password"), "new_md5_password": digest("new")}, token=first)
    assert changed.status == 200
    assert http("GET", f"{platform.url}/auth", token=first).status == 401
    assert http("GET", f"{platform.url}/auth", token=second).status == 401
    assert http("GET", f"{platform.url}/auth", token=changed.json["token"]).body == b"pia"
    assert http("POST", f"{platform.url}/login", {"username": "pia", "password": "pia-password"}).status == 401
    assert http("POST", f"{platform.url}/login", {"username": "pia", "password": "new"}).status == 200
    # nobody changes another user's password through the user route, not even with the right old one
    platform.add_user("quin")
    other = http("POST", f"{platform.url}/users/quin/password", {"old_md5_password": digest("quin-password"), "new_md5_password": digest("x")}, token=changed.json["token"])
    assert other.status in (401, 403)
    assert http("POST", f"{platform.url}/login", {"username": "quin", "password": "quin-password"}).status == 200
