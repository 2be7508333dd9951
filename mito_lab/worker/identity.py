"""What a task may learn of the worker that runs it.

A task is untrusted code started by the worker. The worker hides its owner's secrets from it
(``conceal``), and ``--task-user`` runs tasks under another OS account (``Account``), so that they
reach neither the worker's files nor its processes."""

from __future__ import annotations

import os
import pwd
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import setproctitle

from mito_lab.config import ConfigError
from mito_lab.worker.containment import prctl

PR_SET_DUMPABLE = 4
HIDDEN = "***"


def masked(argv: list[str], secret: str | None) -> list[str]:
    """``argv`` with ``secret`` hidden where it is an argument (``-p SECRET``) or an option's
    attached value (``-pSECRET``, ``--password=SECRET``, abbreviations included)."""
    if not secret:
        return list(argv)
    return [
        HIDDEN if arg == secret else arg[: -len(secret)] + HIDDEN if arg.startswith("-") and arg.endswith(secret) else arg
        for arg in argv
    ]


def conceal(password: str | None) -> None:
    """Hide the owner's password from the processes of this account, tasks included: drop
    ``MITO_PASSWORD`` from the environment, show a command line without the password, and become
    non-dumpable (same-user processes can then open neither ``/proc/PID/environ`` nor ``mem``, nor
    attach a debugger)."""
    # setproctitle moves the environment away and clears the area the kernel shows as
    # /proc/PID/environ (the start-time environment), unless SPT_NOENV is set. It clears as far as
    # the variables lie end to end: none may be unset before it.
    name = setproctitle.getthreadtitle()
    setproctitle.setproctitle(" ".join(masked(sys.orig_argv, password)))
    setproctitle.setthreadtitle(name)  # it also renames the process after the title's start: ps, top and pgrep keep "python"
    os.environ.pop("MITO_PASSWORD", None)
    if sys.platform == "linux":
        prctl(PR_SET_DUMPABLE, 0)


@dataclass(frozen=True)
class Account:
    """The OS account that runs the tasks (``--task-user``)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # its supplementary groups: the child must not keep root's
    home: str

    @classmethod
    def named(cls, name: str) -> Account:
        if os.geteuid() != 0:
            raise ConfigError(f"--task-user {name}: the worker must be started as root to run tasks as another account")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"--task-user {name}: no such account") from None
        return cls(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)), entry.pw_dir)

    def scratch_root(self, worker: str) -> Path:
        """The worker's directory for its slots and its tasks' folders. Root's cache dir is
        usually out of the account's reach (``/root`` is 0700): this one is a fresh temporary
        directory that it may cross but not list."""
        root = Path(tempfile.mkdtemp(prefix=f"mito-worker-{worker}-"))
        root.chmod(0o711)
        return root

    def own(self, folder: Path) -> None:
        """Give ``folder`` and what is in it (the resources the worker fetched) to the account,
        private to it. Symbolic links are changed, never followed."""
        os.chown(folder, self.uid, self.gid)
        folder.chmod(0o700)
        for parent, names, files in os.walk(folder):
            for name in names + files:
                os.chown(os.path.join(parent, name), self.uid, self.gid, follow_symlinks=False)
