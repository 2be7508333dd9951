"""Progress bars for transfers and waits: ``tqdm.auto`` (a widget in a notebook, text in a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mito_lab.client.http import Progress

# ``True`` always shows a bar, ``False`` never, ``None`` when someone is watching (a notebook
# kernel or a terminal); a callable receives the byte counts itself.
ShowProgress = bool | None | Progress


def watched() -> bool:
    """Is there a person to show a bar to: a Jupyter kernel, or a terminal on stderr?"""
    shell = sys.modules.get("IPython")
    if shell is not None:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
        if ip is not None and type(ip).__name__ == "ZMQInteractiveShell":
            return True
    return sys.stderr.isatty()


def wanted(show: ShowProgress) -> bool:
    return watched() if show is None else bool(show)


@contextmanager
def progress_bar(show: ShowProgress, total: int | None, description: str, unit: str = "B") -> Iterator[Progress | None]:
    """A callback that advances a bar by a count (bytes by default), or ``None`` for no bar."""
    if callable(show):
        yield show
        return
    if not wanted(show):
        yield None
        return
    from tqdm.auto import tqdm  # imported when a bar is shown: it brings IPython along in a notebook

    scaled = unit == "B"
    with tqdm(total=total, desc=description, unit=unit, unit_scale=scaled, unit_divisor=1024 if scaled else 1000, leave=False) as bar:
        yield bar.update
