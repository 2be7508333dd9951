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


def readable_duration(seconds: float) -> str:
    """``0.2 s``, ``59.9 s``, ``3 min 4 s``, ``2 h 5 min``, ``3 d 4 h``: as precise as a reader wants."""
    if seconds < 59.95:
        return f"{max(0.0, seconds):.1f} s"
    days, rest = divmod(max(60, round(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, whole_seconds = divmod(rest, 60)
    if days:
        return f"{days} d" + (f" {hours} h" if hours else "")
    if hours:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    return f"{minutes} min" + (f" {whole_seconds} s" if whole_seconds else "")
