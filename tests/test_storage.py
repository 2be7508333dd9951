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
    with pytest.raises(ValueError, match="no bucket"):
        store.path("other-bucket", "key")


def test_local_store_keys_never_clash_or_escape(tmp_path: Path) -> None:
    """Files are named by the key's hash: a key and a key under it can both exist, and no key,
    however odd or long, names a file outside its bucket."""
    store = LocalStore(tmp_path, ["attachments"])
    asyncio.run(store.start())
    keys = ["data", "data/part-1", "../../escape", "x" * 1000, "é/😀 ?#%", "/absolute"]
    paths = [store.path("attachments", key) for key in keys]
    assert len(set(paths)) == len(keys)
    for path, key in zip(paths, keys, strict=True):
        assert (tmp_path / "attachments") in path.parents
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key)
    assert [path.read_text() for path in paths] == keys


def test_local_store_adopts_objects_stored_under_their_keys(tmp_path: Path) -> None:
    """Objects of earlier versions (a file per key path) move to their hashed names at start."""
    legacy = {"mitosis-artifacts": {"3f2a/result.tar.gz": b"result"}, "mitosis-attachments": {"lab/in/data.csv": b"a,b", "ab": b"short"}}
    for bucket, objects in legacy.items():
        for key, data in objects.items():
            (tmp_path / bucket / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / bucket / key).write_bytes(data)
    store = LocalStore(tmp_path, list(legacy))
    asyncio.run(store.start())
    for bucket, objects in legacy.items():
        for key, data in objects.items():
            assert store.path(bucket, key).read_bytes() == data
        assert len([p for p in (tmp_path / bucket).rglob("*") if p.is_file()]) == len(objects)
    assert (tmp_path / ".layout").read_text() == LocalStore.LAYOUT
    # a later start leaves the hashed layout alone
    asyncio.run(LocalStore(tmp_path, list(legacy)).start())
    assert store.path("mitosis-attachments", "ab").read_bytes() == b"short"


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
    assert asyncio.run(store.size("mito-artifacts", "t/result.tar.gz")) == 5  # what arrived
    assert asyncio.run(store.size("mito-artifacts", "t/never-uploaded")) is None
    link = store.download_url("mito-artifacts", "t/result.tar.gz", timedelta(hours=1))
    with urllib.request.urlopen(link) as answer:
        assert answer.read() == b"hello"
    assert http("GET", link.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status == 403
    asyncio.run(store.delete("mito-artifacts", "t/result.tar.gz"))
    assert http("GET", link).status == 404
