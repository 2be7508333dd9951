"""A notification from the kernel: in JupyterLab a toast (its own notification when the page
exposes the application, else one drawn alike; ``notice.js``) and a banner in the output; where
widgets do not render (a saved notebook, the classic notebook without the widget manager) the
banner as HTML; in a terminal IPython the message as text. Outside IPython nothing is shown."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from mito_lab.client.views import NO_MATHS

HERE = Path(__file__).parent
KINDS = ("info", "success", "warning", "error")


class Notice(anywidget.AnyWidget):
    _esm = HERE / "notice.js"

    message = t.Unicode().tag(sync=True)
    kind = t.Enum(KINDS, "info").tag(sync=True)
    banner = t.Unicode().tag(sync=True)  # HTML: what the output shows
    shown = t.Bool(False).tag(sync=True)  # the page has popped its toast: a view made again does not

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data, metadata = super()._repr_mimebundle_(**kwargs)
        data["text/html"] = self.banner  # shown where the widget cannot be (no kernel)
        data["text/plain"] = self.message
        return data, metadata


def notify(message: str, kind: str = "info", banner: str | None = None) -> None:
    """Show ``message`` as a notification where there is a person to see it (see the module).
    ``banner``: the HTML the output shows (default: the message)."""
    from IPython import get_ipython
    from IPython.display import display

    shell = get_ipython()
    if shell is None:
        return
    banner = banner or f'<div class="{NO_MATHS}">{html.escape(message)}</div>'
    if type(shell).__name__ != "ZMQInteractiveShell":  # a terminal: no widgets, no HTML
        display({"text/plain": message}, raw=True)
        return
    display(Notice(message=message, kind=kind, banner=banner))
