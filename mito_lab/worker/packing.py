"""Pack task outputs as the reference's artifacts: gzip tars with one top-level folder."""

from __future__ import annotations

import tarfile
from pathlib import Path


def has_files(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def pack_directory(directory: Path, top: str, archive: Path) -> Path:
    """``directory``'s contents under ``top/`` in ``archive`` (symlinks stored as links, not followed)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=top, recursive=True)
    return archive


def pack_std_logs(stdout: Path, stderr: Path, archive: Path) -> Path:
    """``std-log/stdout.log`` and ``std-log/stderr.log`` (mode 0664), even when empty."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in (stdout, stderr):
            if not path.exists():
                path.touch()
            info = tar.gettarinfo(path, arcname=f"std-log/{path.name}")
            info.mode = 0o664
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return archive
