"""The object store behind artifacts and attachments, with two backends that hand out URLs.

Clients and workers cannot tell them apart: they ask the coordinator for a URL and PUT or GET it.
- ``LocalStore`` (embedded default): a directory in the data dir, served by the coordinator itself
  (``server/handlers/blobs.py``) through HMAC-signed, expiring, streamed URLs. They are absolute, as
  S3's are: at the configured ``public_url``, else where the request that asked for one arrived.
- ``S3Store``: any S3 endpoint through the ``minio`` client's presigned URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import shutil
import time
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, urlencode, urlsplit

from minio import Minio
from minio.error import S3Error

from mito_lab.server.errors import InvalidRequest

UPLOAD_URL_LIFETIME = timedelta(hours=1)
BATCH_DOWNLOAD_URL_LIFETIME = timedelta(hours=24)


def download_url_lifetime(size: int) -> timedelta:
    """As the reference: one second per MB, at least an hour, at most a day."""
    return timedelta(seconds=min(max(size // 1_000_000, 3600), 86400))


class ObjectStore(Protocol):
    async def start(self) -> None:
        """Create the buckets (or directories) if they are missing."""

    def upload_url(self, bucket: str, key: str, size: int, lifetime: timedelta = UPLOAD_URL_LIFETIME) -> str:
        """A URL that accepts one PUT of exactly ``size`` bytes."""

    def download_url(self, bucket: str, key: str, lifetime: timedelta) -> str:
        """A URL that serves the object to a GET."""

    async def delete(self, bucket: str, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    async def size(self, bucket: str, key: str) -> int | None:
        """The object's size in bytes, ``None`` if there is none (an upload lands whole or not at all)."""

    async def digest(self, bucket: str, key: str) -> str | None:
        """``md5:<hex>`` of the object's content, ``None`` if there is no object or the store cannot
        tell (result caching keys resources by it; objects are never rewritten, so it never changes)."""


class Arrival(NamedTuple):
    """Where the request being served came in: its scheme and its ``Host`` header (``None``: it
    sent none, as HTTP/1.0 may)."""

    scheme: str
    host: str | None


ARRIVAL: ContextVar[Arrival] = ContextVar("arrival")
"""Set for each request by ``ApiHandler.prepare``: a service that asks ``LocalStore`` for a URL
need not pass the request down to it."""

# A host name, an IPv4 address or a bracketed IPv6 one, and a port: what a URL can carry as is.
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?")


def request_origin() -> str:
    """``scheme://host[:port]`` of the request being served, as its client addressed it; a Host
    header that is no ``HOST[:PORT]`` (Tornado lets ``;``, ``%41`` or an empty one through) is
    refused, so that no URL is built from it."""
    arrival = ARRIVAL.get(None)
    if arrival is None:
        raise RuntimeError("a local store URL was asked for outside a request, and no public_url is configured")
    host = arrival.host
    found = _HOST.fullmatch(host) if host is not None else None
    if found is None or int(found.group(1) or 0) > 65535:
        shown = "none" if host is None else repr(host)
        raise InvalidRequest(f"the Host header ({shown}) is not HOST[:PORT]; the coordinator's URLs are made from it unless [coordinator] public_url is set")
    return f"{arrival.scheme}://{host}"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class LocalStore:
    """Objects as files under ``root/<bucket>/<hh>/<sha256 of the key>``. Naming files by the key's
    hash, not the key, keeps every key storable: ``a`` and ``a/b`` can both exist, a 1,000-character
    key fits, and no key can name a path outside.

    URLs are absolute: under ``public_url`` (the coordinator's address as clients reach it, e.g.
    behind a proxy), else under ``request_origin()``. The signature covers the method, object,
    expiry and size, not the host: a URL works at every address of the coordinator."""

    ROUTE = "/blobs/"
    LAYOUT = "sha256-1"  # written to ``root/.layout`` once the objects are stored that way

    def __init__(self, root: Path, buckets: list[str], public_url: str | None = None) -> None:
        self.root = root
        self.buckets = buckets
        self.public_url = public_url.rstrip("/") if public_url else None
        secret_file = root / ".url-secret"
        root.mkdir(parents=True, exist_ok=True)
        if not secret_file.exists():
            secret_file.write_bytes(secrets.token_bytes(32))
            secret_file.chmod(0o600)
        self._secret = secret_file.read_bytes()

    async def start(self) -> None:
        for bucket in self.buckets:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)
        marker = self.root / ".layout"
        if not marker.exists():
            await asyncio.to_thread(self._adopt_key_named_files)
            marker.write_text(self.LAYOUT)

    def _adopt_key_named_files(self) -> None:
        """Move objects that earlier versions stored under their keys to their hashed names (by way
        of a staging directory: a key-named file may stand where a hashed directory goes)."""
        staging = self.root / ".adopting"
        for bucket in self.buckets:
            base, fresh = self.root / bucket, staging / bucket
            for file in [p for p in base.rglob("*") if p.is_file()]:
                digest = _digest(file.relative_to(base).as_posix())
                target = fresh / digest[:2] / digest
                target.parent.mkdir(parents=True, exist_ok=True)
                file.replace(target)
            shutil.rmtree(base)  # only directories are left
            fresh.mkdir(parents=True, exist_ok=True)
            fresh.replace(base)
        shutil.rmtree(staging, ignore_errors=True)

    def path(self, bucket: str, key: str) -> Path:
        """The file of an object."""
        if bucket not in self.buckets:
            raise ValueError(f"no bucket {bucket!r}")
        digest = _digest(key)
        return self.root / bucket / digest[:2] / digest

    def _signature(self, method: str, bucket: str, key: str, expires: int, size: int | None) -> str:
        message = f"{method}\n{bucket}\n{key}\n{expires}\n{'' if size is None else size}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _url(self, method: str, bucket: str, key: str, lifetime: timedelta, size: int | None) -> str:
        self.path(bucket, key)
        expires = int(time.time() + lifetime.total_seconds())
        query = {"expires": expires, "sig": self._signature(method, bucket, key, expires, size)}
        if size is not None:
            query["size"] = size
        origin = self.public_url or request_origin()
        return f"{origin}{self.ROUTE}{quote(bucket)}/{quote(key)}?{urlencode(query)}"

    def upload_url(self, bucket: str, key: str, size: int, lifetime: timedelta = UPLOAD_URL_LIFETIME) -> str:
        return self._url("PUT", bucket, key, lifetime, size)

    def download_url(self, bucket: str, key: str, lifetime: timedelta) -> str:
        return self._url("GET", bucket, key, lifetime, None)

    def verify(self, method: str, bucket: str, key: str, expires: str, sig: str, size: str | None) -> str | None:
        """Why a signed request is refused, or ``None`` when it is good."""
        try:
            expires_at = int(expires)
            declared = None if size is None else int(size)
        except ValueError:
            return "malformed signed URL"
        expected = self._signature(method, bucket, key, expires_at, declared)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return "signature does not match"
        if expires_at < time.time():
            return "signed URL has expired"
        return None

    async def delete(self, bucket: str, key: str) -> None:
        self.path(bucket, key).unlink(missing_ok=True)

    async def size(self, bucket: str, key: str) -> int | None:
        try:
            return self.path(bucket, key).stat().st_size
        except FileNotFoundError:
            return None

    async def digest(self, bucket: str, key: str) -> str | None:
        """Read whole, off the loop: the same MD5 as S3's ETag of a single-part upload."""
        return await asyncio.to_thread(_file_md5, self.path(bucket, key))


def _file_md5(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return "md5:" + hashlib.file_digest(handle, "md5").hexdigest()
    except FileNotFoundError:
        return None


_PLAIN_ETAG = re.compile(r"[0-9a-f]{32}")


class S3Store:
    """S3 through minio; presigning is a local computation, bucket calls run in a thread."""

    def __init__(self, url: str, access_key: str, secret_key: str, region: str, buckets: list[str]) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,
        )
        self.buckets = buckets

    async def start(self) -> None:
        def ensure() -> None:
            for bucket in self.buckets:
                if not self.client.bucket_exists(bucket):
                    try:
                        self.client.make_bucket(bucket)
                    except S3Error as exc:  # another coordinator created it meanwhile
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise

        await asyncio.to_thread(ensure)

    def upload_url(self, bucket: str, key: str, size: int, lifetime: timedelta = UPLOAD_URL_LIFETIME) -> str:
        return self.client.presigned_put_object(bucket, key, expires=lifetime)

    def download_url(self, bucket: str, key: str, lifetime: timedelta) -> str:
        return self.client.presigned_get_object(bucket, key, expires=lifetime)

    async def delete(self, bucket: str, key: str) -> None:
        await asyncio.to_thread(self.client.remove_object, bucket, key)

    async def _stat(self, bucket: str, key: str) -> Any:
        try:
            return await asyncio.to_thread(self.client.stat_object, bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise

    async def size(self, bucket: str, key: str) -> int | None:
        found = await self._stat(bucket, key)
        return None if found is None else found.size

    async def digest(self, bucket: str, key: str) -> str | None:
        """The ETag, where it is the content's MD5: that of a single-part upload, which a presigned
        PUT is (a multipart upload's is ``<md5 of the parts' md5s>-<parts>``)."""
        found = await self._stat(bucket, key)
        etag = "" if found is None else (found.etag or "").strip('"').lower()
        return f"md5:{etag}" if _PLAIN_ETAG.fullmatch(etag) else None
