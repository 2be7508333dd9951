"""Progress bars for transfers and waits: in a notebook, an HTML bar redrawn in place (not a
widget: a saved notebook has no kernel to draw widgets, and JupyterLab would show "model not
found" where the bar was); in a terminal, ``tqdm``'s text bar."""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from mito_lab.client.http import Progress
from mito_lab.text import readable_duration, size_text

# ``True`` always shows a bar, ``False`` never, ``None`` when someone is watching (a notebook
# kernel or a terminal); a callable receives the byte counts itself.
ShowProgress = bool | None | Progress

REDRAW_SECONDS = 0.25  # a notebook bar is redrawn at most this often (each redraw is a message to the page)


def in_kernel() -> bool:
    """Is this code running in a Jupyter kernel?"""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def watched() -> bool:
    """Is there a person to show a bar to: a Jupyter kernel, or a terminal on stderr?"""
    return in_kernel() or sys.stderr.isatty()


def wanted(show: ShowProgress) -> bool:
    return watched() if show is None else bool(show)


class Bar(Protocol):
    def advance(self, count: int) -> None: ...
    def show(self, done: int, description: str) -> None: ...
    def close(self) -> None: ...


class NotebookBar:
    """A bar as an HTML output of the running cell, redrawn in place; closing it clears it."""

    def __init__(self, total: int | None, description: str, unit: str) -> None:
        from IPython.display import display

        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self._started = self._drawn = time.monotonic()
        self._lock = threading.Lock()  # transfers advance it from the client's loop
        self._display: Any = display(self._bundle(), raw=True, display_id=True)

    def _count(self, value: int) -> str:
        return size_text(value) if self.unit == "B" else f"{value:,}"

    def _bundle(self) -> dict[str, str]:
        elapsed = readable_duration(time.monotonic() - self._started)
        counted = self._count(self.done) + (f" of {self._count(self.total)}" if self.total else "")
        unit = "" if self.unit == "B" else f" {self.unit}s"
        share = min(1.0, self.done / self.total) if self.total else 0.0
        text = f"{self.description}: {counted}{unit} [{elapsed}]"
        return {
            "text/plain": text,
            "text/html": '<div class="mito-bar" style="font-family:sans-serif;font-size:12px;display:flex;align-items:center;gap:8px">'
                         f'<span>{html.escape(self.description)}</span>'
                         '<span style="display:inline-block;width:240px;height:10px;background:#eceff1;border-radius:3px;overflow:hidden">'
                         f'<span style="display:block;height:100%;width:{share * 100:.1f}%;background:#1e88e5"></span></span>'
                         f'<span>{html.escape(counted + unit)} · {html.escape(elapsed)}</span></div>',
        }

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn >= REDRAW_SECONDS:
            self._drawn = now
            self._display.update(self._bundle(), raw=True)

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            self._redraw()

    def show(self, done: int, description: str) -> None:
        with self._lock:
            self.done, self.description = done, description
            self._redraw(force=True)

    def close(self) -> None:
        self._display.update({"text/plain": ""}, raw=True)


class TerminalBar:
    """``tqdm``'s text bar on stderr, gone once closed."""

    def __init__(self, total: int | None, description: str, unit: str, bar_format: str | None = None) -> None:
        from tqdm.std import tqdm  # imported when a bar is shown

        scaled = unit == "B"
        self._bar = tqdm(total=total, desc=description, unit=unit, unit_scale=scaled, unit_divisor=1024 if scaled else 1000,
                         leave=False, bar_format=bar_format)

    def advance(self, count: int) -> None:
        self._bar.update(count)

    def show(self, done: int, description: str) -> None:
        self._bar.n = done
        self._bar.set_description(description, refresh=True)

    def close(self) -> None:
        self._bar.close()


def open_bar(total: int | None, description: str, unit: str = "B", steps_only: bool = False) -> Bar:
    """A bar where someone watches: in the notebook's cell or on the terminal. ``steps_only``: a
    terminal bar shows no counts or rates (a wait's steps are not a quantity)."""
    if in_kernel():
        return NotebookBar(total, description, unit)
    return TerminalBar(total, description, unit, "{desc} |{bar}| [{elapsed}]" if steps_only else None)


@contextmanager
def progress_bar(show: ShowProgress, total: int | None, description: str, unit: str = "B") -> Iterator[Progress | None]:
    """A callback that advances a bar by a count (bytes by default), or ``None`` for no bar."""
    if callable(show):
        yield show
        return
    if not wanted(show):
        yield None
        return
    bar = open_bar(total, description, unit)
    try:
        yield bar.advance
    finally:
        bar.close()
