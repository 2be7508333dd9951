"""Numbers as people read them, for every front end and the coordinator's own messages."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """``1 task``, ``2 tasks``, ``0 tasks``."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def size_text(size: int) -> str:
    """Bytes for people: ``812 B``, ``1.5 MB``, ``16 GB`` (powers of 1000, as ``du --si``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{size} B" if unit == "B" else f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1000
    raise AssertionError("unreachable")
