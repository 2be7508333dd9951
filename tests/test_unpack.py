"""Artifacts are unpacked without letting any member escape the target directory."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mito_lab.client.unpack import UnsafeArchive, extract


def archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def link(name: str, target: str, symbolic: bool = True) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE if symbolic else tarfile.LNKTYPE
    info.linkname = target
    return info


def test_a_normal_artifact_unpacks(tmp_path: Path) -> None:
    out = extract(archive(tmp_path / "ok.tgz", [file("result/a.txt"), file("result/sub/b.txt")]), tmp_path / "out")
    assert (out / "result" / "a.txt").read_bytes() == b"x" and (out / "result" / "sub" / "b.txt").exists()


@pytest.mark.parametrize(
    "member",
    [file("../escape.txt"), file("result/../../escape.txt"),
     link("result/link", "/etc/passwd"), link("result/up", "../../outside"), link("result/hard", "/etc/passwd", symbolic=False)],
    ids=["dotdot", "nested-dotdot", "absolute-symlink", "escaping-symlink", "hardlink"],
)
def test_members_that_escape_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    bad = archive(tmp_path / "bad.tgz", [member])
    with pytest.raises(UnsafeArchive, match="refusing to unpack"):
        extract(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(UnsafeArchive, match="not a readable tar archive"):
        extract(junk, tmp_path / "out")


def test_absolute_members_land_inside_the_target(tmp_path: Path) -> None:
    out = extract(archive(tmp_path / "abs.tgz", [file("/tmp/mito-unpack-absolute-test")]), tmp_path / "out")
    assert (out / "tmp" / "mito-unpack-absolute-test").exists()
    assert not Path("/tmp/mito-unpack-absolute-test").exists()
