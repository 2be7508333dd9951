"""Run one task command: no shell, its own process group, output to files, a hard timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_SECONDS = 10.0


@dataclass
class Outcome:
    exit_status: int  # the exit code, or minus the signal number that killed the process
    timed_out: bool


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop_group(process: asyncio.subprocess.Process, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after ``grace`` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        pass
    _signal_group(process.pid, signal.SIGKILL)  # grandchildren may outlive the leader
    await process.wait()


async def spawn(args: list[str], env: dict[str, str], cwd: Path, stdout: Path, stderr: Path) -> asyncio.subprocess.Process:
    """Start ``args`` (``args[0]`` found through the task's PATH) in a new session, its output
    written straight to files by the child itself (the worker never holds it in memory)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:  # the child keeps its own copies
        return await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )


async def wait(process: asyncio.subprocess.Process, timeout: float) -> Outcome:
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
        _signal_group(process.pid, signal.SIGKILL)  # leftovers of a finished task do not linger
        return Outcome(code, timed_out=False)
    except TimeoutError:
        await stop_group(process)
        return Outcome(process.returncode if process.returncode is not None else -signal.SIGKILL, timed_out=True)
