"""Peak GPU memory of a running task, where the host has NVIDIA's ``nvidia-smi``: the memory of
the task's processes, summed, sampled once a second while it runs (a query costs nvidia-smi tens
of milliseconds, so it is not made more often, nor at all on hosts without it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable, Collection

log = logging.getLogger("mito_lab.worker")

SAMPLE_SECONDS = 1.0
QUERY_TIMEOUT_SECONDS = 10.0  # nvidia-smi can hang on a wedged driver: the sample is skipped
QUERY = ("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")


def nvidia_smi() -> str | None:
    """The path of ``nvidia-smi``, if this host has it."""
    return shutil.which("nvidia-smi")


def parse(listing: str) -> dict[int, int]:
    """``nvidia-smi``'s compute processes (``PID, MiB`` per line and GPU) as bytes per PID."""
    used: dict[int, int] = {}
    for line in listing.splitlines():
        pid, _, mebibytes = line.partition(",")
        with contextlib.suppress(ValueError):  # "[N/A]", a header or a warning line
            used[int(pid)] = used.get(int(pid), 0) + int(mebibytes.strip()) * 2**20
    return used


class GpuPeak:
    """Samples the GPU memory of ``processes()`` (the task's PIDs) until ``stop``; ``peak`` is the
    largest total seen (None until a sample was taken). ``pid`` is the running query's, which the
    worker must not take for a process a task left behind."""

    def __init__(self, program: str, processes: Callable[[], Collection[int]]) -> None:
        self.program = program
        self.processes = processes
        self.peak: int | None = None
        self.pid: int | None = None
        self._stopped = asyncio.Event()
        self._sampling = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stopped.is_set():
            used = await self._query()
            if used is not None:
                mine = set(self.processes())
                self.peak = max(self.peak or 0, sum(size for pid, size in used.items() if pid in mine))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), SAMPLE_SECONDS)

    async def _query(self) -> dict[int, int] | None:
        try:
            query = await asyncio.create_subprocess_exec(
                self.program, *QUERY, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            log.warning("nvidia-smi cannot be run: %s", exc)
            return None
        self.pid = query.pid
        try:
            listing, _ = await asyncio.wait_for(query.communicate(), QUERY_TIMEOUT_SECONDS)
        except TimeoutError:
            query.kill()
            await query.wait()
            return None
        finally:
            self.pid = None
        return parse(listing.decode(errors="replace")) if query.returncode == 0 else None

    async def stop(self) -> int | None:
        """Stop sampling once the current query is answered; the peak."""
        self._stopped.set()
        await self._sampling
        return self.peak
