"""Pack task outputs as the reference's artifacts: gzip tars with one top-level folder."""

from __future__ import annotations

import os
import stat
import tarfile
import time
from pathlib import Path

from mito_lab.worker.workspace import STREAMS, TaskOutput


def has_files(directory: Path) -> bool:
    """Whether ``directory`` is a folder (not a link to one) with anything in it."""
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return False
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


def pack_directory(directory: Path, top: str, archive: Path, deadline: float) -> Path:
    """``directory``'s contents under ``top/`` in ``archive``: symbolic links stored as links,
    never followed; FIFOs and devices left out (never opened, and no client would unpack them).
    Raises ``TimeoutError`` once the monotonic clock passes ``deadline`` (a task may leave more
    than can be packed in time)."""

    def in_time(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"packing {top} took too long")
        return member if member.isreg() or member.isdir() or member.issym() or member.islnk() else None

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=top, recursive=True, filter=in_time)
    return archive


def pack_std_logs(output: TaskOutput, archive: Path) -> Path:
    """``std-log/stdout.log`` and ``std-log/stderr.log`` (mode 0664), even when empty, read
    through the worker's own descriptors."""
    with tarfile.open(archive, "w:gz") as tar:
        for stream in STREAMS:
            info = tarfile.TarInfo(f"std-log/{stream}.log")
            info.size, info.mode, info.mtime = output.size(stream), 0o664, int(time.time())
            with os.fdopen(os.dup(output.descriptors[stream]), "rb") as handle:
                handle.seek(0)
                tar.addfile(info, handle)
    return archive
