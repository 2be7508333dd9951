"""A notebook display that changes in place: shown once with a display id, then re-published as
``update_display_data`` when what it shows changed. What it shows is a plain MIME bundle (HTML and
text), so a notebook saved at any moment keeps the last state, and reopens showing it with or
without a kernel (a widget would show "Loading widget..." or "model not found" there).

Updates come from the client's event loop and are coalesced: at most one per ``interval`` seconds
whatever the rate of changes, and the last change is always published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

Bundle = dict[str, str]  # MIME type -> content
UPDATE_INTERVAL_SECONDS = 0.25


class LiveView:
    def __init__(self, render: Callable[[], Bundle], loop: asyncio.AbstractEventLoop, interval: float = UPDATE_INTERVAL_SECONDS) -> None:
        self.render = render
        self.loop = loop
        self.interval = interval
        self.display_id = uuid.uuid4().hex
        self._due: asyncio.TimerHandle | None = None
        self._published_at = float("-inf")
        self._shown = False  # nothing to update before it is shown (and never outside IPython)

    def show(self) -> None:
        """Display it in the cell that runs (every display of it follows the updates)."""
        from IPython.display import display

        self._shown = True  # first: a change from now on is published (its state is rendered below or after)
        display(self.render(), raw=True, display_id=self.display_id)

    def changed(self) -> None:
        """On the loop: publish the new state soon; any number of changes meanwhile make one update."""
        if self._shown and self._due is None:
            delay = max(0.0, self._published_at + self.interval - self.loop.time())
            self._due = self.loop.call_later(delay, self.publish)

    def publish(self) -> None:
        """On the loop: publish the current state now."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if not self._shown:
            return
        self._published_at = self.loop.time()
        from IPython.display import update_display

        update_display(self.render(), raw=True, display_id=self.display_id)
