"""Unpacking artifacts safely: a member that would land outside the target directory (absolute
path, ``..``, a link pointing out, a device file) is refused with a clear error."""

from __future__ import annotations

import tarfile
from pathlib import Path

from mito_lab.client.http import MitoError


class UnsafeArchive(MitoError):
    def __init__(self, archive: Path, reason: str) -> None:
        super().__init__(400, f"refusing to unpack {archive}: {reason}")


def extract(archive: Path, destination: Path) -> Path:
    """Unpack ``archive`` (a ``.tar.gz``) into ``destination``; returns ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            # PEP 706's "data" filter: nothing escapes, no special files, no setuid bits
            tar.extractall(destination, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchive(archive, str(exc)) from None
    except tarfile.TarError as exc:
        raise UnsafeArchive(archive, f"not a readable tar archive ({exc})") from None
    return destination
