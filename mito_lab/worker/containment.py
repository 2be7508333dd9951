"""What keeps a task inside its own bounds on the worker's machine.

- Every descendant of a task dies with it. The worker is a child subreaper, so a process a task
  detaches (``setsid ... &``) is re-parented to the worker instead of init; and where the host
  offers a writable cgroup v2 hierarchy, each task runs in a cgroup of its own, which is killed as
  a whole (``cgroup.kill``) however its processes tried to escape. Without one, the worker kills
  the processes it adopted that no running task claims.
- Files a task controls are read only as regular files (``O_NOFOLLOW | O_NONBLOCK``, then
  ``S_ISREG``), and never more than a bound: a FIFO, a device or a symbolic link there cannot
  block or redirect the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path

import psutil

log = logging.getLogger("mito_lab.worker")

PR_SET_CHILD_SUBREAPER = 36
TASK_ENVIRONMENT_MARK = "MITO_TASK_UUID"  # how an adopted process tells which task it came from
KILL_ROUNDS = 5  # a process forking while it is killed may leave a child: look again, a few times


class UnsafeFile(OSError):
    """A path a task controls is not a regular file, or is larger than the worker reads."""


def read_regular_file(path: Path, limit: int) -> bytes | None:
    """The contents of ``path`` if it is a regular file of at most ``limit`` bytes; ``None`` if
    there is nothing there. Raises ``UnsafeFile`` for anything else (a FIFO, a device, a symbolic
    link, a directory, a file too large) without blocking on it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link; EISDIR, ENXIO: not something to read
        raise UnsafeFile(exc.errno, f"{path.name} is not a regular file") from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise UnsafeFile(f"{path.name} is not a regular file")
        if status.st_size > limit:
            raise UnsafeFile(f"{path.name} is larger than {limit} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew while we read
        raise UnsafeFile(f"{path.name} is larger than {limit} bytes")
    return data


def read_small(path: str | Path) -> bytes:
    """A kernel's small text file in four system calls, where ``open()``'s buffered file makes
    nine: read after every task."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def prctl(option: int, value: int) -> None:
    """``prctl(option, value)`` on this process (Linux only); ``OSError`` if it is refused."""
    if sys.platform != "linux":
        raise OSError(errno.ENOSYS, "prctl is Linux only")
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}, {value}): {os.strerror(code)}")


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants."""
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        log.warning("cannot become a child subreaper (%s): processes a task detaches may outlive it", exc.strerror)


# --- cgroups ----------------------------------------------------------------------------------------


def _own_cgroup_v2() -> Path | None:
    """The directory of this process's cgroup in the v2 hierarchy, if one is mounted."""
    mount = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                mount = Path(fields[1])
                break
    if mount is None:
        return None
    with open("/proc/self/cgroup") as groups:
        for line in groups:
            if line.startswith("0::"):
                return mount / line[3:].strip().lstrip("/")
    return None


def _remove_stale(home: Path) -> None:
    """Remove the cgroups of workers that are gone (killed before they could remove their own),
    with whatever their tasks left running in them."""
    for stale in home.glob("mito-worker-*"):
        pid = stale.name.removeprefix("mito-worker-")
        if not pid.isdigit() or psutil.pid_exists(int(pid)):
            continue
        with contextlib.suppress(OSError):
            TaskCgroups(home, stale).close()


class TaskCgroups:
    """A cgroup v2 per slot, under one of this worker's own (``mito-worker-<pid>``), holding one
    task at a time. A task's process is moved in once it started. A move may wait for an RCU
    grace period (~8-12 ms on an idle host, where stepping the worker in and out around the fork
    delayed every task's start by as much), so it is made while the task already runs: in a
    thread, unless another move ended moments ago (the kernel's lock then stays in its fast state,
    ~20 us a move, and a thread's hand-off would cost ten times that, a fifth of the throughput
    of short tasks). What the task forks before its move is caught as an orphan."""

    def __init__(self, home: Path, parent: Path) -> None:
        self.home = home  # the worker's own cgroup
        self.parent = parent
        self._members: dict[Path, int] = {}  # cgroup -> its cgroup.procs, opened once
        self._slots: dict[int, Path] = {}  # made once

    @classmethod
    def offered(cls) -> TaskCgroups | None:
        """The task cgroups, if the host lets this process create and enter them."""
        home = _own_cgroup_v2()
        if home is None or not (home / "cgroup.procs").exists():
            return None
        parent = home / f"mito-worker-{os.getpid()}"
        _remove_stale(home)
        try:
            parent.mkdir(exist_ok=True)
            cgroups = cls(home, parent)
            cgroups.move(cgroups.slot(0), os.getpid())  # the worker may move processes: itself, and back
            cgroups.move(home, os.getpid())
        except OSError as exc:
            log.info("no cgroup per task (%s): the processes a task detaches are found as orphans instead", exc)
            with contextlib.suppress(OSError):
                (parent / "slot-0").rmdir()
                parent.rmdir()
            return None
        return cgroups

    def slot(self, index: int) -> Path:
        if index not in self._slots:
            self._slots[index] = self.parent / f"slot-{index}"
            self._slots[index].mkdir(exist_ok=True)
        return self._slots[index]

    def move(self, cgroup: Path, pid: int) -> None:
        """Move process ``pid`` into ``cgroup``, unless it has ended already."""
        with contextlib.suppress(ProcessLookupError):
            os.write(self._procs(cgroup), str(pid).encode())

    def _procs(self, cgroup: Path) -> int:
        if cgroup not in self._members:
            self._members[cgroup] = os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        return self._members[cgroup]

    @staticmethod
    def cpu_seconds(cgroup: Path) -> float:
        """The CPU time every process of ``cgroup`` has used so far (``cpu.stat``: always there)."""
        for line in read_small(cgroup / "cpu.stat").splitlines():
            name, _, value = line.partition(b" ")
            if name == b"usage_usec":
                return int(value) / 1e6
        return 0.0

    @staticmethod
    def populated(cgroup: Path) -> bool:
        return b"populated 1" in read_small(cgroup / "cgroup.events")

    def kill(self, cgroup: Path) -> None:
        """Kill every process in ``cgroup``, and wait until they are gone."""
        for _ in range(200):
            (cgroup / "cgroup.kill").write_text("1")
            if not self.populated(cgroup):
                return
            time.sleep(0.005)  # the kernel delivers the kills, then the processes exit
        log.warning("processes of cgroup %s survive SIGKILL (stuck in the kernel?)", cgroup)

    def close(self) -> None:
        for descriptor in self._members.values():
            os.close(descriptor)
        self._members = {}
        with contextlib.suppress(OSError):
            for cgroup in self.parent.iterdir():
                if cgroup.is_dir():
                    self.kill(cgroup)
                    cgroup.rmdir()
            self.parent.rmdir()


# --- orphans ------------------------------------------------------------------------------------


def adopted(leaders: Collection[int]) -> list[int]:
    """This process's children other than ``leaders`` (the running tasks' own processes): the
    orphans it adopted as a subreaper. Reads the kernel's list of children of the thread that
    starts the tasks (this one) and of the main thread, which the kernel gives the orphans to
    (the first live thread of the subreaper): microseconds, so it can run after every task."""
    children: list[int] = []
    try:
        for thread in {os.getpid(), threading.get_native_id()}:
            children += map(int, read_small(f"/proc/self/task/{thread}/children").split())
    except OSError:  # no such list (CONFIG_PROC_CHILDREN): psutil reads every process's parent
        children = [child.pid for child in psutil.Process().children()]
    return [pid for pid in children if pid not in leaders]


def _task_of(process: psutil.Process) -> str | None:
    with contextlib.suppress(psutil.Error):
        return process.environ().get(TASK_ENVIRONMENT_MARK)
    return None


def reap(pids: Collection[int]) -> None:
    """Collect the exit status of those of ``pids`` (adopted processes) that ended."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def kill_orphans(leaders: Collection[int], running_tasks: Collection[str]) -> int:
    """Kill the processes this worker adopted that no running task claims, with everything they
    started; returns how many. A process is claimed by the task whose UUID its environment
    carries; one whose environment cannot be read, or carries none, belongs to no running task."""
    killed = 0
    for _ in range(KILL_ROUNDS):
        orphans = adopted(leaders)
        reap(orphans)
        doomed = []
        for pid in orphans:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE and _task_of(process) not in running_tasks:
                    doomed.append(process)
        if not doomed:
            break
        for process in doomed:
            with contextlib.suppress(psutil.Error):
                for descendant in [process, *process.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        descendant.send_signal(signal.SIGKILL)
                        killed += 1
        psutil.wait_procs(doomed, timeout=1)
    return killed


# How long after a move the next one is fast (measured: warm at 20 ms, cold at 30 ms, on a 6.18 kernel)
WARM_MOVE_SECONDS = 0.01


class Containment:
    """How this worker ends a task completely: its slot's cgroup where the host offers them, and
    the orphans it adopted as a subreaper."""

    def __init__(self, cgroups: TaskCgroups | None = None) -> None:
        self.cgroups = cgroups
        self._last_move = -WARM_MOVE_SECONDS  # when the last move into a task cgroup ended (monotonic)
        self._cpu: dict[int, float] = {}  # slot -> its cgroup's CPU time, as read since its last task started

    @classmethod
    def start(cls, use_cgroups: bool = True) -> Containment:
        become_subreaper()
        return cls(TaskCgroups.offered() if use_cgroups else None)

    def started(self, slot: int, pid: int) -> asyncio.Future[None] | None:
        """A task's process started: into the slot's cgroup. On the loop when the last move ended
        moments ago (then it is done: None), else in a thread (see ``TaskCgroups``): the move
        under way, to be awaited before the task's ``end``."""
        if self.cgroups is None:
            return None
        self._cpu.pop(slot, None)
        cgroup = self.cgroups.slot(slot)
        if time.monotonic() - self._last_move < WARM_MOVE_SECONDS:
            self.cgroups.move(cgroup, pid)
            self._moved()
            return None
        moving = asyncio.ensure_future(asyncio.to_thread(self.cgroups.move, cgroup, pid))
        moving.add_done_callback(self._moved)
        return moving

    def _moved(self, _: object = None) -> None:
        self._last_move = time.monotonic()

    def cpu_seconds(self, slot: int) -> float | None:
        """The CPU time of the slot's cgroup so far (every task it ran), if there is one. Between
        two tasks nothing runs in it: the reading after one serves as the reading before the next."""
        if self.cgroups is None:
            return None
        if slot not in self._cpu:
            self._cpu[slot] = self.cgroups.cpu_seconds(self.cgroups.slot(slot))
        return self._cpu[slot]

    def processes(self, slot: int, leader: int) -> set[int]:
        """The processes of the task in ``slot`` whose own process is ``leader``: the leader's
        descendants (what it forked before it was moved into its cgroup too), and its cgroup's
        (what it detached too)."""
        found = {leader}
        with contextlib.suppress(psutil.Error):
            found.update(child.pid for child in psutil.Process(leader).children(recursive=True))
        if self.cgroups is not None:
            with contextlib.suppress(OSError):
                found.update(map(int, read_small(self.cgroups.slot(slot) / "cgroup.procs").split()))
        return found

    def end(self, slot: int, leaders: Collection[int], running_tasks: Collection[str]) -> None:
        """Once a task's own process has exited (and ``started`` is done): kill what it left
        running. ``leaders`` are the other running tasks' processes, ``running_tasks`` their UUIDs."""
        killed = 0
        if self.cgroups is not None:
            cgroup = self.cgroups.slot(slot)
            if self.cgroups.populated(cgroup):
                self.cgroups.kill(cgroup)
                killed += 1
        killed += kill_orphans(leaders, running_tasks)
        if killed:
            log.info("killed what a task left running in slot %d", slot)

    def close(self) -> None:
        """The worker stops: nothing any task started outlives it (an orphan would go to init)."""
        if self.cgroups is not None:
            self.cgroups.close()
        kill_orphans((), ())
