"""``sweep.progress()``: a live bar of a sweep's runs, fed by the event stream."""

from __future__ import annotations

import asyncio
import html
import uuid as uuid_module
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from mito_lab.client.views import failed, updated_info
from mito_lab.wire import TaskInfo

if TYPE_CHECKING:
    from mito_lab.sweeps import Sweep


class SweepProgress(w.HBox):
    """How many runs have ended, and how: succeeded, failed, running, waiting. It follows the runs
    the sweep had when it was made (after ``retry_failed()``, ask for a new one)."""

    def __init__(self, sweep: "Sweep") -> None:
        self.sweep = sweep
        self.runs: dict[uuid_module.UUID, TaskInfo] = {info.uuid: info for info in sweep.runs()}
        self.bar = w.IntProgress(min=0, max=len(self.runs), description=sweep.name[:20], layout=w.Layout(width="420px"))
        self.summary = w.HTML()
        super().__init__([self.bar, self.summary])
        self._stop_listening: Any = None
        self._render()
        if not self._ended():
            self._stop_listening = sweep.client.run(sweep.client.aio.listen(self._on_event))
            sweep.client.run(self._resync())  # what changed before the stream connected

    def _ended(self) -> bool:
        return all(info.result is not None for info in self.runs.values())

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "resync":
            asyncio.ensure_future(self._resync())
            return
        task_uuid = event.get("uuid")
        if event.get("kind") != "task" or task_uuid is None or uuid_module.UUID(task_uuid) not in self.runs:
            return
        key = uuid_module.UUID(task_uuid)
        self.runs[key] = updated_info(self.runs[key], event)
        self._render()

    async def _resync(self) -> None:
        for key in list(self.runs):
            self.runs[key] = (await self.sweep.client.aio.get_task(key)).info
        self._render()

    def _render(self) -> None:
        runs = list(self.runs.values())
        ended = [info for info in runs if info.result is not None]
        failures = sum(1 for info in ended if failed(info))
        running = sum(1 for info in runs if info.result is None and info.state.value == "Running")
        self.bar.value = len(ended)
        self.bar.bar_style = "danger" if failures else "success" if len(ended) == len(runs) else "info"
        parts = [f"{len(ended) - failures} succeeded", f"{failures} failed", f"{running} running",
                 f"{len(runs) - len(ended) - running} waiting"]
        self.summary.value = f"{len(ended)}/{len(runs)} · " + html.escape(" · ".join(parts))
        if len(ended) == len(runs) and self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
