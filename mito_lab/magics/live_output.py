"""A live widget shown with its static snapshot, so that a saved notebook shows what it showed.

JupyterLab draws a widget only with the kernel that made it: a notebook opened again says
"Loading widget..." or "model not found" where it was, whatever HTML the widget's output offers
beside it. So the snapshot is an output of its own, just before the widget's, and plain CSS in it
(which works with no kernel at all) hides whichever of the two cannot be seen: the snapshot once
the live widget beside it is drawn (its root has the ``mito-live`` class), the placeholder when
it is not."""

from __future__ import annotations

from typing import Any

SNAPSHOT_STYLE = (
    "<style>"
    ".jp-OutputArea-child:has(.mito-snapshot) + .jp-OutputArea-child > .jp-OutputArea-output:not(:has(.mito-live)) {display:none}"
    ".jp-OutputArea-child:has(.mito-snapshot):has(+ .jp-OutputArea-child .mito-live) {display:none}"
    "</style>"
)


def snapshot_bundle(html: str, text: str) -> dict[str, str]:
    """The snapshot's output: ``html`` where HTML shows, ``text`` in a terminal."""
    return {"text/plain": text, "text/html": f'{SNAPSHOT_STYLE}<div class="mito-snapshot">{html}</div>'}


def snapshot_id(display_id: str) -> str:
    return f"{display_id}-snapshot"


def display_live(widget: Any, snapshot: dict[str, str], display_id: str | None = None) -> None:
    """Show ``snapshot`` (a ``snapshot_bundle``), then ``widget``; with ``display_id`` both can be
    updated later (the snapshot's id is ``snapshot_id(display_id)``)."""
    from IPython.display import display

    display(snapshot, raw=True, display_id=snapshot_id(display_id) if display_id else None)
    data, metadata = widget._repr_mimebundle_()
    data["text/plain"] = ""  # the snapshot says it in text
    display(data, metadata=metadata, raw=True, display_id=display_id)
