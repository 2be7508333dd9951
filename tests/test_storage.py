"""Both object stores hand out URLs that work, expire and cannot be tampered with."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import Platform, S3Server, http
from mito_lab.server.storage import LocalStore, S3Store


def test_local_store_signatures(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, ["artifacts"])
    asyncio.run(store.start())
    url = store.upload_url("artifacts", "t/result.tar.gz", 10)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert store.verify("PUT", "artifacts", "t/result.tar.gz", query["expires"], query["sig"], query["size"]) is None
    assert store.verify("GET", "artifacts", "t/result.tar.gz", query["expires"], query["sig"], query["size"]) == "signature does not match"
    assert store.verify("PUT", "artifacts", "t/other", query["expires"], query["sig"], query["size"]) == "signature does not match"
    assert store.verify("PUT", "artifacts", "t/result.tar.gz", query["expires"], query["sig"], "11") == "signature does not match"
    expired = store.download_url("artifacts", "t/result.tar.gz", timedelta(seconds=-1))
    old = {k: v[0] for k, v in parse_qs(urlsplit(expired).query).items()}
    assert store.verify("GET", "artifacts", "t/result.tar.gz", old["expires"], old["sig"], None) == "signed URL has expired"
    with pytest.raises(ValueError, match="outside its bucket"):
        store.upload_url("artifacts", "../escape", 1)
    with pytest.raises(ValueError):
        store.path("other-bucket", "key")


def _signed_upload(platform: Platform, size: int) -> str:
    task = platform.api("POST", "/tasks", {"task_spec": {"args": ["true"]}}).json["uuid"]
    return platform.url + platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": size}).json["url"]


def test_local_blob_route_refuses_bad_requests(platform: Platform) -> None:
    url = _signed_upload(platform, 4)
    octets = {"Content-Type": "application/octet-stream"}
    assert http("PUT", url.replace("sig=", "sig=0"), raw=b"data", headers=octets).status == 403
    assert http("PUT", url, raw=b"too long", headers=octets).status == 400
    assert http("GET", url).status == 403  # a PUT signature does not allow reading
    assert http("PUT", url, raw=b"data", headers=octets).status == 200


def test_s3_store_against_seaweedfs(s3: S3Server) -> None:
    import urllib.request

    store = S3Store(s3.url, s3.access_key, s3.secret_key, "us-east-1", ["mito-artifacts", "mito-attachments"])
    asyncio.run(store.start())
    asyncio.run(store.start())  # idempotent: buckets that exist are kept
    put = urllib.request.Request(store.upload_url("mito-artifacts", "t/result.tar.gz", 5), data=b"hello", method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(put) as answer:
        assert answer.status == 200
    link = store.download_url("mito-artifacts", "t/result.tar.gz", timedelta(hours=1))
    with urllib.request.urlopen(link) as answer:
        assert answer.read() == b"hello"
    assert http("GET", link.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status == 403
    asyncio.run(store.delete("mito-artifacts", "t/result.tar.gz"))
    assert http("GET", link).status == 404
