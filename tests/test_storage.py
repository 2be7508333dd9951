"""Both object stores hand out URLs that work, expire and cannot be tampered with."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import timedelta
from http.client import HTTPResponse
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import ADMIN, Platform, S3Server, http, start_platform
from mito_lab.server.storage import LocalStore, S3Store

OCTETS = {"Content-Type": "application/octet-stream"}


def test_local_store_signatures(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, ["artifacts"], public_url="https://mito.example.org/lab/")
    asyncio.run(store.start())
    url = store.upload_url("artifacts", "t/result.tar.gz", 10)
    assert url.startswith("https://mito.example.org/lab/blobs/artifacts/t/result.tar.gz?")
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
    return platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": size}).json["url"]


def test_local_blob_route_refuses_bad_requests(platform: Platform) -> None:
    url = _signed_upload(platform, 4)
    assert http("PUT", url.replace("sig=", "sig=0"), raw=b"data", headers=OCTETS).status == 403
    assert http("PUT", url, raw=b"too long", headers=OCTETS).status == 400
    assert http("GET", url).status == 403  # a PUT signature does not allow reading
    assert http("PUT", url, raw=b"data", headers=OCTETS).status == 200


def _absolute(platform: Platform, url: str) -> str:
    assert url.startswith(f"{platform.url}/blobs/"), url
    return url


def test_local_store_urls_are_absolute_and_followed_as_given(sqlite_platform: Platform) -> None:
    """Every route that hands out a local store URL gives an absolute one, as S3 does: clients
    written for the reference follow it as is (a relative one fails them: "missing an 'http://'")."""
    platform, group = sqlite_platform, ADMIN[0]
    task = platform.api("POST", "/tasks", {"task_spec": {"args": ["true"]}, "tags": ["nowhere"]}).json["uuid"]
    upload = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": 6}).json["url"]
    assert http("PUT", _absolute(platform, upload), raw=b"result", headers=OCTETS).status == 200
    links = [
        platform.api("GET", f"/tasks/{task}/download/artifacts/result").json["url"],
        *(d["url"] for d in platform.api("POST", "/tasks/download/artifacts", {"group_name": group, "content_type": "result"}).json["downloads"]),
        *(d["url"] for d in platform.api("POST", "/tasks/download/artifacts/list", {"uuids": [task], "content_type": "result"}).json["downloads"]),
    ]
    assert len(links) == 3 and all(http("GET", _absolute(platform, url)).body == b"result" for url in links)

    upload = platform.api("POST", f"/groups/{group}/attachments", {"key": "in/data.csv", "content_length": 4}).json["url"]
    assert http("PUT", _absolute(platform, upload), raw=b"a,b\n", headers=OCTETS).status == 200
    links = [
        platform.api("GET", f"/groups/{group}/download/attachments/in/data.csv").json["url"],
        *(d["url"] for d in platform.api("POST", f"/groups/{group}/download/attachments", {"key": "in/"}).json["downloads"]),
        *(d["url"] for d in platform.api("POST", f"/groups/{group}/download/attachments/list", {"keys": ["in/data.csv"]}).json["downloads"]),
    ]
    assert len(links) == 3 and all(http("GET", _absolute(platform, url)).body == b"a,b\n" for url in links)

    # the worker's routes (the reference protocol: v2 hands out no URLs)
    worker = platform.api("POST", "/workers", {"groups": []}).json["token"]
    resource = {"remote_file": {"Attachment": {"key": "in/data.csv"}}, "local_path": "data.csv"}
    consumer = platform.api("POST", "/tasks", {"task_spec": {"args": ["true"], "resources": [resource]}}).json["uuid"]
    work = http("GET", f"{platform.url}/workers/tasks", token=worker).json
    assert work["uuid"] == consumer
    link = http("GET", f"{platform.url}/workers/tasks/{consumer}/attachments/in/data.csv", token=worker).json["url"]
    assert http("GET", _absolute(platform, link)).body == b"a,b\n"
    link = http("GET", f"{platform.url}/workers/tasks/{task}/artifacts/result", token=worker).json["url"]
    assert http("GET", _absolute(platform, link)).body == b"result"
    upload = http("POST", f"{platform.url}/workers/tasks", {"id": work["id"], "op": {"Upload": {"content_type": "exec-log", "content_length": 3}}}, token=worker).json["url"]
    assert http("PUT", _absolute(platform, upload), raw=b"log", headers=OCTETS).status == 200


def _with_host(platform: Platform, method: str, path: str, host: str | None, body: bytes = b"") -> tuple[int, Any]:
    """A request whose Host header is ``host`` exactly (``None``: an HTTP/1.0 request without one)."""
    address = urlsplit(platform.url)
    head = [f"{method} {path} HTTP/{'1.0' if host is None else '1.1'}", f"Authorization: Bearer {platform.token()}",
            "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    if host is not None:
        head.append(f"Host: {host}")
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        answer = HTTPResponse(connection)
        answer.begin()
        return answer.status, answer.read()


def test_a_strange_host_header_gets_a_sane_answer(sqlite_platform: Platform) -> None:
    """URLs are made from the Host header the client sent: any host it names gets URLs there
    (they verify at every address: the host is not signed); one that is no HOST[:PORT] is refused
    with a 400, never a 500 or a URL built from it."""
    platform, group = sqlite_platform, ADMIN[0]
    ask = f"/groups/{group}/attachments"
    status, body = _with_host(platform, "POST", ask, "Mito.Example:8080", b'{"key": "k", "content_length": 2}')
    url = json.loads(body)["url"]
    assert status == 200 and url.startswith("http://Mito.Example:8080/blobs/")
    assert http("PUT", platform.url + url.removeprefix("http://Mito.Example:8080"), raw=b"ok", headers=OCTETS).status == 200
    for host in ("", "a;b", "x%41", "[::1", "evil:99999", "a:b:c", "(x)", None):
        status, body = _with_host(platform, "POST", ask, host, b'{"key": "k", "content_length": 2}')
        assert status == 400 and b"Host header" in body, (host, status, body)
        status, body = _with_host(platform, "GET", f"/groups/{group}/download/attachments/k", host)
        assert status == 400 and b"Host header" in body, (host, status, body)
        status, body = _with_host(platform, "GET", "/auth", host)  # what makes no URL does not mind
        assert (status, body) == (200, ADMIN[0].encode()), (host, status, body)
    for host in ("a b", "evil.example/path", "user@evil.example", "<script>"):  # Tornado refuses these itself
        assert _with_host(platform, "GET", "/auth", host)[0] == 400
    assert platform.api("GET", "/health", user=None).status == 200


def test_a_public_url_is_where_the_urls_point(tmp_path: Path) -> None:
    """Behind a proxy (here at the path /lab of another host) the URLs start with ``public_url``,
    whatever Host the request came with; the proxy passes them on as they are signed."""
    config = tmp_path / "config.toml"
    config.write_text('[coordinator]\npublic_url = "https://mito.example.org/lab/"\n')
    platform = start_platform(tmp_path / "platform", "--config", str(config))
    try:
        answer = platform.api("POST", f"/groups/{ADMIN[0]}/attachments", {"key": "k", "content_length": 2})
        url = answer.json["url"]
        assert url.startswith("https://mito.example.org/lab/blobs/mitosis-attachments/"), url
        proxied = platform.url + url.removeprefix("https://mito.example.org/lab")
        assert http("PUT", proxied, raw=b"ok", headers=OCTETS).status == 200
        assert _with_host(platform, "GET", f"/groups/{ADMIN[0]}/download/attachments/k", "a;b")[0] == 200  # the Host is not used
    finally:
        platform.stop()


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
