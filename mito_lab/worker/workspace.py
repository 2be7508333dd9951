"""Where a task's files live on the worker, kept apart from the worker's own.

A task gets its folders at a new unguessable path under ``<root>/tasks`` (a folder others may
cross but not list), emptied once it ends: nothing of one task is left for the next, and no task
can find another's. The worker's own files for a slot (the archives it packs) live under
``<root>/slot-N``, which no task folder is inside of: a task that empties its folders' parents
does not touch them, and they are made again for every task anyway. The output logs have no
path at all: the worker holds them open and reads them through its own descriptors.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

STREAMS = ("stdout", "stderr")
FOLDER_MODE = 0o700  # as tempfile.mkdtemp makes the task's root


class TaskFolders:
    """A task's own folders: result, exec, resource, work, and where it may leave a new task."""

    NAMES = ("result", "exec", "resource", "work")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.result, self.exec, self.resource, self.work = (root / name for name in self.NAMES)
        self.new_task = root / "new_task.json"

    def clean(self) -> bool:
        """Whether the folders are as made and empty: then they may serve another task."""
        owner = os.getuid()
        try:
            with os.scandir(self.root) as entries:
                if sorted(entry.name for entry in entries) != sorted(self.NAMES):
                    return False
            for folder in (self.root, self.result, self.exec, self.resource, self.work):
                status = os.lstat(folder)
                if not stat.S_ISDIR(status.st_mode) or stat.S_IMODE(status.st_mode) != FOLDER_MODE or status.st_uid != owner:
                    return False
                if folder != self.root:
                    with os.scandir(folder) as entries:
                        if next(entries, None) is not None:
                            return False
        except OSError:
            return False
        return True

    def remove(self) -> None:
        """Remove the folders, whatever the task did to their permissions."""

        def unlock(_function: object, path: str, _error: object) -> None:
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(path), stat.S_IRWXU)
                if os.path.isdir(path) and not os.path.islink(path):
                    os.chmod(path, stat.S_IRWXU)
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)

        shutil.rmtree(self.root, onerror=unlock)


class FolderPool:
    """Task folders under ``base``, a folder that others may cross but not list. Each task gets
    its folders at a new unguessable path; folders a task left as it found them are renamed for
    the next one instead of rebuilt (removing and making five folders cost more than a short task
    itself), the others are removed."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._spare: list[TaskFolders] = []

    def take(self) -> TaskFolders:
        while self._spare:
            spare = self._spare.pop()
            fresh = self.base / f"task-{secrets.token_hex(8)}"
            try:
                spare.root.rename(fresh)
            except OSError:  # a task removed it meanwhile
                continue
            return TaskFolders(fresh)
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o711)
        folders = TaskFolders(Path(tempfile.mkdtemp(prefix="task-", dir=self.base)))
        for folder in (folders.result, folders.exec, folders.resource, folders.work):
            folder.mkdir(mode=FOLDER_MODE)
        return folders

    def give_back(self, folders: TaskFolders) -> None:
        if folders.clean():
            self._spare.append(folders)
        else:
            folders.remove()


class TaskOutput:
    """A slot's stdout and stderr for its tasks: files without a name (no task can replace or
    reach them by path), which the task's process inherits and the worker reads back through its
    own descriptors. They serve every task of the slot, emptied for each: opening and naming
    files anew cost a tenth of a short task."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.descriptors = {stream: _anonymous_file(folder) for stream in STREAMS}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}  # made at a stream's first read: most tasks have none

    def reset(self) -> None:
        """Empty for the next task (the last one's processes are gone: see ``Containment.end``)."""
        for descriptor in self.descriptors.values():
            os.ftruncate(descriptor, 0)
        self._decoders = {}

    def size(self, stream: str) -> int:
        return os.fstat(self.descriptors[stream]).st_size

    def read(self, stream: str, offset: int, length: int) -> bytes:
        return os.pread(self.descriptors[stream], length, offset)

    def text(self, stream: str, data: bytes, final: bool, skipped: bool) -> str:
        """``data`` read from ``stream`` as text for the log view: invalid UTF-8 and NUL replaced
        by U+FFFD, a character cut by the end of ``data`` kept for the next read (unless
        ``final``), the state dropped when the read ``skipped`` ahead of the last one."""
        if skipped or stream not in self._decoders:
            self._decoders[stream] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return self._decoders[stream].decode(data, final).replace("\x00", "\ufffd")

    def note(self, line: str) -> None:
        """Add a line from the worker to the task's stderr (why the worker ended it, say)."""
        os.write(self.descriptors["stderr"], f"mito worker: {line}\n".encode())

    def close(self) -> None:
        for descriptor in self.descriptors.values():
            os.close(descriptor)
        self.descriptors = {}


def _anonymous_file(folder: Path) -> int:
    """A file in ``folder``'s file system that no path leads to, open for reading and appending."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    with contextlib.suppress(OSError):  # O_TMPFILE: Linux, on most file systems
        return os.open(folder, flags | os.O_TMPFILE, 0o600)
    descriptor, path = tempfile.mkstemp(dir=folder)  # not inherited, as every descriptor Python opens
    os.unlink(path)
    fcntl.fcntl(descriptor, fcntl.F_SETFL, os.O_APPEND)  # a task's two streams never overwrite each other
    return descriptor


class Slot:
    """One of the tasks a worker runs at once: the worker's own files for the task in it. Once a
    task has no process left, the slot may run its next task while it finishes (see
    ``Agent.execute``); one task at a time finishes in a slot (``finishing``), so a slot has
    output files for two tasks at most, and its archives serve the finishing one."""

    def __init__(self, index: int, root: Path) -> None:
        self.index = index
        self.root = root / f"slot-{index}"
        self.archives = self.root / "archives"
        self.finishing = asyncio.Lock()
        self._outputs: list[TaskOutput] = []  # every one made
        self._spare: list[TaskOutput] = []  # those no task holds

    def output(self) -> TaskOutput:
        """Output files for a new task, empty."""
        if self._spare:
            output = self._spare.pop()
            output.reset()
            return output
        output = TaskOutput(self.root)
        self._outputs.append(output)
        return output

    def give_back(self, output: TaskOutput) -> None:
        self._spare.append(output)

    def close(self) -> None:
        for output in self._outputs:
            output.close()
        self._outputs, self._spare = [], []

    def archive(self, name: str) -> Path:
        self.archives.mkdir(mode=0o700, parents=True, exist_ok=True)  # again: a task may have removed it
        return self.archives / name
