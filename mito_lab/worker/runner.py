"""Run one task command: no shell, its own process group, output to files, a hard timeout.

Children are started by ``subprocess.Popen``, which uses vfork+exec when it can (no
``preexec_fn``), and their exit is noticed through a pidfd on the event loop: no wait thread and no
pipes per child, as asyncio's subprocesses have."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mito_lab.worker.identity import Account

KILL_GRACE_SECONDS = 10.0


@dataclass
class Outcome:
    exit_status: int  # the exit code, or minus the signal number that killed the process
    timed_out: bool
    usage: resource.struct_rusage | None = None  # the process's, with the descendants it waited for


def _reap(process: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage | None]:
    """Wait for ``process`` and collect its exit status and resource usage (``Popen.wait`` would
    drop the latter)."""
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except ChildProcessError:  # collected already: killed with what it left, when its run was cancelled
        process.returncode = -signal.SIGKILL
        return process.returncode, None
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


class Child:
    """A started task process, the leader of its own process group."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self.pid = process.pid
        self._exited: asyncio.Future[tuple[int, resource.struct_rusage | None]] = asyncio.get_running_loop().create_future()
        self._watch()

    @property
    def returncode(self) -> int | None:
        return self._exited.result()[0] if self._exited.done() else None

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            descriptor = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (an old kernel, not Linux): a thread waits
            waiting = loop.run_in_executor(None, _reap, self._process)
            waiting.add_done_callback(lambda done: self._exited.done() or self._exited.set_result(done.result()))
            return

        def exited() -> None:
            loop.remove_reader(descriptor)
            os.close(descriptor)
            self._exited.set_result(_reap(self._process))  # it has exited: this only reaps it

        loop.add_reader(descriptor, exited)

    async def wait(self) -> int:
        return (await asyncio.shield(self._exited))[0]

    @property
    def usage(self) -> resource.struct_rusage | None:
        return self._exited.result()[1] if self._exited.done() else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop_group(child: Child, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after ``grace`` seconds."""
    _signal_group(child.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(child.wait(), grace)
    _signal_group(child.pid, signal.SIGKILL)  # grandchildren may outlive the leader
    await child.wait()


def spawn(args: list[str], env: dict[bytes, bytes], cwd: Path, stdout: int, stderr: int, account: Account | None = None) -> Child:
    """Start ``args`` (``args[0]`` found through the task's PATH) in a new session, its output
    written straight to the descriptors ``stdout`` and ``stderr`` by the child itself (the worker
    never holds it in memory); as ``account`` (its groups only) when one is given."""
    # (switching the account costs a fork instead of a vfork: CPython does not vfork to set ids)
    as_account = {} if account is None else {"user": account.uid, "group": account.gid, "extra_groups": account.groups}
    return Child(subprocess.Popen(args, stdin=_devnull(), stdout=stdout, stderr=stderr, env=env, cwd=cwd, start_new_session=True, **as_account))


@functools.cache
def _devnull() -> int:
    """``/dev/null``, open once for every task's stdin (``subprocess.DEVNULL`` opens it for each)."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


async def wait(child: Child, timeout: float) -> Outcome:
    try:
        async with asyncio.timeout(timeout):  # no task around the wait, as wait_for would make: it runs once per task
            code = await child.wait()
        _signal_group(child.pid, signal.SIGKILL)  # leftovers of a finished task do not linger
        return Outcome(code, timed_out=False, usage=child.usage)
    except TimeoutError:
        await stop_group(child)
        return Outcome(child.returncode if child.returncode is not None else -signal.SIGKILL, timed_out=True, usage=child.usage)
