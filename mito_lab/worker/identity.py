"""What a task may learn of the worker that runs it.

A task is untrusted code started by the worker: the worker hides its owner's secrets from it
(``conceal``)."""

from __future__ import annotations

import ctypes
import os
import sys

import setproctitle

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
    setproctitle.setproctitle(" ".join(masked(sys.orig_argv, password)))
    os.environ.pop("MITO_PASSWORD", None)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
