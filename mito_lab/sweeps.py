"""Papermill sweeps: one notebook, a grid of parameters, one task per combination across the fleet.

The notebook is uploaded once, as a group attachment whose key is its content's hash; each run is
a task that gets the notebook as a resource and runs ``python -m mito_lab.sweeps`` (the worker
side, :func:`main`): papermill executes it with the run's parameters into the result artifact,
together with the values the notebook recorded with :func:`record` and, when a cell failed, which
one and why. A sweep is nothing but labels on its tasks (``mito-sweep:<name>``, ``mito-run:<i>``)
and the parameters in their command lines, so it can be re-opened from any client at any time."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import itertools
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mito_lab.client.api import rerun_request
from mito_lab.client.http import MitoError
from mito_lab.client.live import Bundle, LiveView
from mito_lab.client.views import FAILED_COLOR, NO_MATHS, STATE_COLORS, failed, updated_info
from mito_lab.wire import RERUN_PREFIX, AttachmentRef, AttachmentSource, RemoteResourceDownload, TaskInfo, TasksQueryReq, TaskState

if TYPE_CHECKING:
    import pandas as pd

    from mito_lab.client.api import AsyncClient
    from mito_lab.client.views import AlertView
    from mito_lab.client.frames import ReadableFrame
    from mito_lab.client.handle import TaskHandle
    from mito_lab.client.sync import Client

SWEEP_LABEL = "mito-sweep"  # on every task of every sweep
SWEEP_PREFIX = "mito-sweep:"  # + the sweep's name
RUN_PREFIX = "mito-run:"  # + the run's index in the grid
RECORDS_FILE = "records.json"
ERROR_FILE = "error.json"
EXECUTED_NOTEBOOK = "executed.ipynb"
RECORD_PATH_ENV = "MITO_RECORD_PATH"
PARAMETERS_FLAG = "--parameters"

Grid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]
_recorded: dict[str, Any] = {}


# --- inside the experiment notebook ---------------------------------------------------------------


def record(name: str, value: Any) -> Any:
    """Record a JSON-serialisable value of this run (a metric, a setting, a list of losses): it
    becomes a column of the sweep's results. Outside a sweep it is kept in memory only. Returns
    ``value``, so ``record("loss", compute())`` reads naturally."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"record({name!r}, ...): the value must be JSON-serialisable ({exc})") from None
    _recorded[name] = value
    path = os.environ.get(RECORD_PATH_ENV)
    if path:
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        partial.write_text(json.dumps(_recorded, indent=1))
        os.replace(partial, target)
    return value


# --- building a sweep ---------------------------------------------------------------------------


def expand(parameters: Grid) -> list[dict[str, Any]]:
    """Every combination of a ``{name: [values]}`` grid (in the order given), or the listed dicts."""
    if isinstance(parameters, Mapping):
        names = list(parameters)
        for name in names:
            values = parameters[name]
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"parameter {name!r}: give a non-empty list of values, not {values!r}")
        combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*(parameters[n] for n in names))]
    else:
        combos = [dict(combo) for combo in parameters]
    if not combos:
        raise ValueError("the sweep has no parameter combinations")
    for combo in combos:
        try:
            json.dumps(combo)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameters {combo!r} are not JSON-serialisable ({exc})") from None
    return combos


def parse_value(text: str) -> Any:
    """A command-line parameter value: JSON when it parses (``0.1``, ``3``, ``true``), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_command(python: str, notebook_name: str, parameters: Mapping[str, Any], kernel: str | None) -> list[str]:
    command = [python, "-m", "mito_lab.sweeps", PARAMETERS_FLAG, json.dumps(dict(parameters), sort_keys=False)]
    if kernel:
        command += ["--kernel", kernel]
    return [*command, notebook_name]


class Launched(NamedTuple):
    """A sweep just submitted."""

    name: str
    group: str
    runs: int

    def __str__(self) -> str:
        return f"Submitted sweep {self.name} to group {self.group}: {self.runs} runs (label {SWEEP_PREFIX}{self.name})"


def run_parameters(info: TaskInfo) -> dict[str, Any]:
    args = info.spec.args
    return json.loads(args[args.index(PARAMETERS_FLAG) + 1]) if PARAMETERS_FLAG in args else {}


def run_index(info: TaskInfo) -> int:
    return next((int(label[len(RUN_PREFIX):]) for label in info.labels if label.startswith(RUN_PREFIX)), -1)


async def launch(
    client: "AsyncClient",
    notebook: Path,
    parameters: Grid,
    *,
    name: str | None = None,
    group: str | None = None,
    tags: Iterable[str] = (),
    labels: Iterable[str] = (),
    timeout: str | timedelta = "1h",
    priority: int = 0,
    kernel: str | None = None,
    python: str = "python3",
    max_attempts: int = 3,
    cache: bool = False,
    force: bool = False,
) -> Launched:
    """Upload the notebook (once per content) and submit one task per combination in one batch.
    ``cache``: a combination that already ran successfully with this notebook in the group (in
    any sweep launched with ``cache`` or ``force``) is answered from that run at once, so a grid
    extended by a value runs only the new combinations; ``force``: run every one anyway, and be
    the runs later ``cache`` launches find."""
    from mito_lab.client.api import task_request

    notebook = Path(notebook)
    combos = expand(parameters)
    group = group or client.username or ""
    content = notebook.read_bytes()
    key = f"sweeps/{hashlib.sha256(content).hexdigest()[:16]}/{notebook.name}"
    try:
        await client.attachment_meta(group, key)
    except MitoError as exc:
        if exc.status != 404:
            raise
        await client.upload_attachment(group, notebook, key, progress=False)
    name = name or f"{notebook.stem}-{secrets.token_hex(3)}"
    if await _sweep_tasks(client, name, group):
        raise MitoError(409, f"group {group} already has a sweep named {name!r}: re-open it with Sweep.reopen(client, {name!r})")
    resource = RemoteResourceDownload(remote_file=AttachmentSource(Attachment=AttachmentRef(key=key)), local_path=notebook.name)
    requests = [
        task_request(
            run_command(python, notebook.name, combo, kernel),
            group=group, tags=tags, labels=[*labels, SWEEP_LABEL, SWEEP_PREFIX + name, f"{RUN_PREFIX}{index}"],
            timeout=timeout, priority=priority, resources=[resource], max_attempts=max_attempts, cache=cache, force=force,
        )
        for index, combo in enumerate(combos)
    ]
    answer = await client.submit_many(requests)
    refused = [item.Err.msg for item in answer.results if item.Err is not None]
    if refused:
        await client.cancel_task_list([item.Ok.uuid for item in answer.results if item.Ok is not None])
        raise MitoError(400, f"the sweep was refused: {refused[0]}")
    return Launched(name, group, len(requests))


async def _sweep_tasks(client: "AsyncClient", name: str, group: str | None) -> list[TaskInfo]:
    return (await client.query_tasks(TasksQueryReq(group_name=group, labels=[SWEEP_PREFIX + name]))).tasks


def latest_runs(tasks: Iterable[TaskInfo]) -> list[TaskInfo]:
    """The newest task of each run index (a retried run has several), in grid order."""
    runs: dict[int, TaskInfo] = {}
    for info in tasks:
        index = run_index(info)
        if index not in runs or info.task_id > runs[index].task_id:
            runs[index] = info
    return [runs[index] for index in sorted(runs)]


# --- outcomes, and the bar that shows them ---------------------------------------------------------

OUTCOMES = ("Succeeded", "Failed", "Running", "Waiting")
_OUTCOME_COLORS = {"Succeeded": STATE_COLORS[TaskState.Finished], "Failed": FAILED_COLOR, "Running": STATE_COLORS[TaskState.Running]}


def outcome(info: TaskInfo) -> str:
    """Where a run stands: ended (Succeeded, or Failed: a non-zero exit or cancelled), Running, or Waiting."""
    if info.result is not None:
        return "Failed" if failed(info) else "Succeeded"
    return "Running" if info.state == TaskState.Running else "Waiting"


def tally(runs: Iterable[TaskInfo]) -> dict[str, int]:
    """How many runs stand where (every outcome, zeros included): what the bar, ``counts()`` and
    the sweep's own display all show."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for info in runs:
        counts[outcome(info)] += 1
    return counts


def sweep_bundle(name: str, counts: dict[str, int]) -> Bundle:
    """The bar of a sweep: its name in full, a share of the bar per outcome (red only for the
    failed runs, waiting ones left grey), and the counts. Plain HTML: a saved notebook keeps it."""
    total = sum(counts.values())
    ended = counts["Succeeded"] + counts["Failed"]
    summary = f"{ended}/{total} ended · " + " · ".join(f"{count} {name.lower()}" for name, count in counts.items())
    shares = "".join(
        f'<div title="{count} {what.lower()}" style="width:{100 * count / total:.4f}%;background:{color}"></div>'
        for what, color in _OUTCOME_COLORS.items() if (count := counts[what])
    )
    bar = f'<div style="display:flex;width:100%;max-width:640px;height:14px;background:#e0e0e0;border-radius:3px;overflow:hidden">{shares}</div>'
    head = f'<div><b>sweep</b> <code style="white-space:pre-wrap;word-break:break-all">{html.escape(name)}</code> · {html.escape(summary)}</div>'
    return {"text/plain": f"sweep {name}: {summary}", "text/html": f'<div class="mito-sweep {NO_MATHS}">{head}{bar}</div>'}


class SweepProgress:
    """A live bar of a sweep's runs (``sweep.progress()``), fed by the event stream; it follows
    the runs the sweep had when it was made (after ``retry_failed()``, ask for a new one).
    ``Sweep.wait`` brings it to the final counts before returning, so the two agree.
    ``ended``, if given, is called once with the final counts when every run has ended (on the
    client's loop; at once if they have already)."""

    def __init__(self, sweep: "Sweep", ended: Callable[[dict[str, int]], None] | None = None) -> None:
        self.sweep = sweep
        self.runs: dict[uuid_module.UUID, TaskInfo] = {info.uuid: info for info in sweep.runs()}
        self._view = LiveView(self._bundle, sweep.client._thread.loop)
        self._stop_listening: Callable[[], None] | None = None
        self._when_ended = ended
        if not self._ended():
            sweep.client.run(self._follow())
        elif ended is not None:
            sweep.client._thread.call_soon(self._changed)

    def counts(self) -> dict[str, int]:
        return tally(self.runs.values())

    def _bundle(self) -> Bundle:
        return sweep_bundle(self.sweep.name, self.counts())

    def _ipython_display_(self) -> None:
        self._view.show()

    def _ended(self) -> bool:
        return all(info.result is not None for info in self.runs.values())

    async def _follow(self) -> None:
        self._stop_listening = await self.sweep.client.aio.listen(self._on_event)
        await self._resync()  # what changed before the stream connected

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "resync":
            asyncio.ensure_future(self._resync())
            return
        task_uuid = event.get("uuid")
        if event.get("kind") != "task" or task_uuid is None or uuid_module.UUID(task_uuid) not in self.runs:
            return
        key = uuid_module.UUID(task_uuid)
        self.runs[key] = updated_info(self.runs[key], event)
        self._changed()

    async def _resync(self) -> None:
        for key in list(self.runs):
            self.runs[key] = (await self.sweep.client.aio.get_task(key)).info
        self._changed()

    async def settle(self, final: Iterable[TaskInfo]) -> None:
        """On the client's loop: the runs' final infos (what ``Sweep.wait`` read), shown at once."""
        for info in final:
            if info.uuid in self.runs:
                self.runs[info.uuid] = info
        self._changed()

    def _changed(self) -> None:
        if not self._ended():
            self._view.changed()
            return
        self._view.publish()  # the last word: at once
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self._when_ended is not None:
            ended, self._when_ended = self._when_ended, None
            ended(self.counts())


# --- the sweep, from a notebook -------------------------------------------------------------------


class Sweep:
    """The runs of one sweep. Cheap to make: everything is read from the coordinator when asked.
    ``Sweep.launch(client, ...)`` starts one, ``Sweep.reopen(client, name)`` finds one again,
    ``Sweep.listing(client)`` lists a group's."""

    def __init__(self, client: "Client", name: str, group: str | None = None) -> None:
        self.client = client
        self.name = name
        self.group = group or client.username
        self._bars: list[SweepProgress] = []

    @classmethod
    def launch(cls, client: "Client", notebook: Path | str, parameters: Grid, **options: Any) -> "Sweep":
        """Run ``notebook`` once per parameter combination across the fleet (see :func:`launch`
        for the options: name, group, tags, labels, timeout, priority, kernel, python, cache, force)."""
        launched = client.run(launch(client.aio, Path(notebook), parameters, **options))
        return cls(client, launched.name, launched.group)

    @classmethod
    def reopen(cls, client: "Client", name: str, group: str | None = None) -> "Sweep":
        """A sweep launched before (from any client), by its name or its label ``mito-sweep:<name>``."""
        sweep = cls(client, name.removeprefix(SWEEP_PREFIX), group)
        sweep.runs()  # fails clearly if there is no such sweep
        return sweep

    @staticmethod
    def listing(client: "Client", group: str | None = None) -> "ReadableFrame":
        """The sweeps of a group (default: your own), newest first: name, notebook, runs, outcome
        counts, first submission."""
        import pandas as pd

        from mito_lab.client.frames import ReadableFrame

        by_sweep: dict[str, list[TaskInfo]] = {}
        for info in client.query_tasks(TasksQueryReq(group_name=group, labels=[SWEEP_LABEL])).tasks:
            name = next(label[len(SWEEP_PREFIX):] for label in info.labels if label.startswith(SWEEP_PREFIX))
            by_sweep.setdefault(name, []).append(info)
        rows = []
        for name, tasks in by_sweep.items():
            runs = latest_runs(tasks)
            states = Counter(info.state.value for info in runs)
            rows.append({
                "sweep": name, "notebook": Path(tasks[0].spec.args[-1]).name, "runs": len(runs),
                "finished": states["Finished"], "failed": sum(failed(info) for info in runs),
                "waiting": states["Ready"] + states["Pending"], "running": states["Running"],
                "submitted_at": pd.Timestamp(min(info.created_at for info in tasks)),
            })
        columns = ["sweep", "notebook", "runs", "finished", "failed", "waiting", "running", "submitted_at"]
        return ReadableFrame(rows, columns=columns).sort_values("submitted_at", ascending=False, ignore_index=True)

    @property
    def label(self) -> str:
        return SWEEP_PREFIX + self.name

    def runs(self) -> list[TaskInfo]:
        runs = latest_runs(self.client.run(_sweep_tasks(self.client.aio, self.name, self.group)))
        if not runs:
            raise MitoError(404, f"no sweep named {self.name!r} in group {self.group}")
        return runs

    def tasks(self) -> "pd.DataFrame":
        """Every task of the sweep, retries included, as a DataFrame."""
        return self.client.tasks(self.group, labels=[self.label])

    def counts(self) -> dict[str, int]:
        """How many runs succeeded, failed, run and wait (see :func:`tally`)."""
        return tally(self.runs())

    def wait(self, timeout: float | None = None, progress: Any = None) -> "Sweep":
        """Block until every run has ended (a bar counts them); returns the sweep. Its live bars
        (``progress()``) show the final counts by the time it returns."""
        from mito_lab.client.progress import progress_bar

        runs = self.runs()
        with progress_bar(progress, len(runs), f"sweep {self.name}", unit="run") as advance:

            async def one(info: TaskInfo) -> TaskInfo:
                final = await self.client.aio.wait_task(info.uuid)
                if advance is not None:
                    advance(1)
                return final

            async def every() -> None:
                final = await asyncio.wait_for(asyncio.gather(*(one(info) for info in runs)), timeout)
                for bar in self._bars:
                    await bar.settle(final)

            self.client.run(every())
        return self

    def results(self, concurrency: int = 8, history: bool = False) -> "pd.DataFrame":
        """One row per run (its newest attempt; every attempt, oldest first, with ``history``):
        its parameters, state, exit status, duration, cost, every recorded value, the executed
        notebook's local path, for a failed run the failing cell and error, the attempt it
        ``replaces`` (a retry's), and for a cache hit the run it was answered from
        (``cached_from``), whose duration and cost it shows. Result artifacts are downloaded
        ``concurrency`` at a time, once (they are cached)."""
        import pandas as pd

        from mito_lab.client.frames import TASK_STATES, ReadableFrame

        runs = self.runs() if not history else sorted(
            self.client.run(_sweep_tasks(self.client.aio, self.name, self.group)), key=lambda info: (run_index(info), info.task_id))
        folders = self.client.run(self._download(runs, concurrency))
        sources = self.client.run(self._sources(runs))
        rows = []
        for info, folder in zip(runs, folders, strict=True):
            found = _read_outcome(folder)
            ran = sources[info.cached_from] if info.cached_from else info
            rows.append({
                "run": run_index(info),
                **run_parameters(info),
                "uuid": str(info.uuid),
                "state": info.state.value,
                "exit_status": info.result.exit_status if info.result else None,
                "duration": (ran.ended_at - ran.started_at) if ran.ended_at and ran.started_at else None,
                "replaces": next((label.removeprefix(RERUN_PREFIX) for label in info.labels if label.startswith(RERUN_PREFIX)), None),
                "cached_from": str(info.cached_from) if info.cached_from else None,
                "cpu_s": ran.usage.cpu_s if ran.usage else None,
                "max_rss": ran.usage.max_rss if ran.usage else None,
                "cpu_efficiency": ran.usage.cpu_efficiency if ran.usage else None,
                **found.get("records", {}),
                "notebook": found.get("notebook"),
                "failed_cell": found.get("failed_cell"),
                "error": found.get("error") or (info.result.msg.value if info.result and info.result.msg else None),
            })
        frame = ReadableFrame(rows)
        frame["state"] = frame["state"].astype(TASK_STATES)
        for column in ("exit_status", "failed_cell", "max_rss"):
            frame[column] = frame[column].astype("Int64")
        for column in ("cpu_s", "cpu_efficiency"):
            frame[column] = frame[column].astype("Float64")
        frame["duration"] = pd.to_timedelta(frame["duration"])
        return frame

    async def _sources(self, runs: list[TaskInfo]) -> dict[uuid_module.UUID, TaskInfo]:
        """The runs that cache hits among ``runs`` were answered from."""
        wanted = list({info.cached_from for info in runs if info.cached_from is not None})
        found = await asyncio.gather(*(self.client.aio.get_task(source) for source in wanted))
        return {source: answer.info for source, answer in zip(wanted, found, strict=True)}

    async def _download(self, runs: list[TaskInfo], concurrency: int) -> list[Path | None]:
        from mito_lab.config import cache_dir

        gate = asyncio.Semaphore(max(1, concurrency))
        root = cache_dir() / "sweeps" / self.name

        async def one(info: TaskInfo) -> Path | None:
            if info.result is None:
                return None
            folder = root / str(info.uuid)
            if (folder / "result").is_dir():
                return folder / "result"
            async with gate:
                try:
                    return await self.client.aio.result(info.uuid, folder, progress=False)
                except MitoError as exc:
                    if exc.status == 404:  # cancelled before it ran: nothing was produced
                        return None
                    raise

        return list(await asyncio.gather(*(one(info) for info in runs)))

    def failed(self) -> "pd.DataFrame":
        """The results of the runs that failed (non-zero exit, or cancelled)."""
        results = self.results()
        return results[(results["exit_status"].fillna(0) != 0) | (results["state"] == "Cancelled")].reset_index(drop=True)

    def retry_failed(self, **changes: Any) -> list["TaskHandle"]:
        """Run the failed runs again, as new tasks of the same runs (``results()`` then shows the
        newest attempt of each), with ``changes`` to their limits or placement: ``timeout="x2"``,
        ``tags=[...]``, ``priority=...`` (see ``client.rerun``)."""
        again = [rerun_request(info, **changes) for info in self.runs() if failed(info)]  # the runs are read already
        if not again:
            return []
        handles = self.client.submit_many(again)
        errors = [h for h in handles if isinstance(h, MitoError)]
        if errors:
            raise errors[0]
        return handles  # type: ignore[return-value]

    def cancel(self) -> int:
        """Cancel every run that has not ended; returns how many were."""
        waiting = [info.uuid for info in self.runs() if info.result is None]
        if not waiting:
            return 0
        return self.client.cancel_task_list(waiting).cancelled_count

    def progress(self) -> SweepProgress:
        """A live bar of the runs: how many succeeded, failed, run and wait."""
        bar = SweepProgress(self)
        self._bars.append(bar)
        return bar

    def on_done(self, callback: Callable[[dict[str, int]], Any] | None = None, *, notify: bool = True) -> None:
        """Once every run of the sweep has ended (at once if they have), call ``callback`` with
        the final counts (those of ``counts()``) in a thread of its own: cells keep running
        meanwhile, and it may call the client (``sweep.results()``). With ``notify``, a notebook
        also shows it: a JupyterLab toast and a banner with the sweep's final bar (text in a
        terminal). Like ``progress()``, it follows the runs the sweep has now: after
        ``retry_failed()``, ask again."""

        def ended(counts: dict[str, int]) -> None:
            if notify:
                from mito_lab.magics.notice import notify as show  # ipywidgets: imported when a notice is shown

                failed = counts["Failed"]
                message = f"Sweep {self.name} is done: {counts['Succeeded']} succeeded, {failed} failed"
                show(message, "warning" if failed else "success", sweep_bundle(self.name, counts)["text/html"])
            if callback is not None:
                threading.Thread(target=callback, args=(counts,), name=f"mito-sweep-done-{self.name}", daemon=True).start()

        self._bars.append(SweepProgress(self, ended))

    def alert(self, url: str, secret: str, **options: Any) -> "AlertView":
        """A campaign alert on the sweep's runs (``client.alert`` with the sweep's label and
        group): the coordinator POSTs to ``url`` when they are done, or, with ``failures=``,
        when that many (or that share) of them failed, whether or not a notebook is open."""
        return self.client.alert(self.label, url, secret, group=self.group, **options)

    def _ipython_display_(self) -> None:
        """The sweep shows as a live bar of its runs."""
        self.progress()._ipython_display_()

    def __repr__(self) -> str:
        return f"<Sweep {self.name} in {self.group}: {self.counts()}>"


def _read_outcome(folder: Path | None) -> dict[str, Any]:
    if folder is None:
        return {}
    outcome: dict[str, Any] = {}
    if (folder / RECORDS_FILE).is_file():
        outcome["records"] = json.loads((folder / RECORDS_FILE).read_text())
    if (folder / EXECUTED_NOTEBOOK).is_file():
        outcome["notebook"] = str(folder / EXECUTED_NOTEBOOK)
    if (folder / ERROR_FILE).is_file():
        error = json.loads((folder / ERROR_FILE).read_text())
        outcome["failed_cell"] = error.get("cell")
        outcome["error"] = f"{error.get('ename')}: {error.get('evalue')}"
    return outcome


# --- on the worker ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Execute the notebook with papermill into ``$MITO_RESULT_DIR``; on a failing cell, record
    which one and why, and exit 1."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parser = argparse.ArgumentParser(prog="python -m mito_lab.sweeps", description="Run one sweep run (on a worker).")
    parser.add_argument(PARAMETERS_FLAG, type=json.loads, default={}, help="the run's parameters, as a JSON object")
    parser.add_argument("--kernel", help="the kernel to run it with (default: the notebook's)")
    parser.add_argument("notebook", type=Path, help="the notebook (a relative path is looked up in $MITO_RESOURCE_DIR)")
    args = parser.parse_args(argv)
    notebook = args.notebook if args.notebook.is_absolute() else Path(os.environ.get("MITO_RESOURCE_DIR", ".")) / args.notebook
    results = Path(os.environ.get("MITO_RESULT_DIR") or tempfile.mkdtemp(prefix="mito-sweep-"))
    results.mkdir(parents=True, exist_ok=True)
    os.environ[RECORD_PATH_ENV] = str(results / RECORDS_FILE)
    # papermill logs each cell's output as it comes: that is the run's live output
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    workdir = os.environ.get("MITO_EXEC_DIR") or str(results)
    try:
        papermill.execute_notebook(
            str(notebook), str(results / EXECUTED_NOTEBOOK), parameters=args.parameters,
            kernel_name=args.kernel, cwd=workdir, progress_bar=False, log_output=True,
        )
    except PapermillExecutionError as exc:
        error = {"cell": exc.exec_count, "cell_index": exc.cell_index, "ename": exc.ename, "evalue": exc.evalue}
        (results / ERROR_FILE).write_text(json.dumps(error))
        print(f"cell {exc.exec_count} failed: {exc.ename}: {exc.evalue}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
