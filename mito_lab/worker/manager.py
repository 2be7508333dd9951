"""``mito manager``: start, list and stop the local worker processes this user's manager started.

Unlike the reference (``pkill -f "mito worker"``), it only ever touches the processes it recorded
in its state file, each identified by PID *and* kernel start time, so a PID reused by another
program is never signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from mito_lab.cli.main import build_parser
from mito_lab.client.progress import progress_bar
from mito_lab.config import cache_dir
from mito_lab.text import counted
from mito_lab.worker.identity import masked

STOP_GRACE_SECONDS = 20.0
STARTUP_SECONDS = 60.0


@dataclass
class Managed:
    pid: int
    started: int  # the kernel's start time of the process (clock ticks since boot)
    args: list[str]
    log: str


def state_dir() -> Path:
    return cache_dir() / "manager"


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat``; ``None`` if there is no such (living) process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)"
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])  # fields[0] is field 3, the state


def alive(worker: Managed) -> bool:
    return _start_time(worker.pid) == worker.started


def load() -> list[Managed]:
    try:
        return [Managed(**entry) for entry in json.loads((state_dir() / "workers.json").read_text())]
    except FileNotFoundError:
        return []


def save(workers: list[Managed]) -> None:
    path = state_dir() / "workers.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps([asdict(w) for w in workers], indent=1))
    os.replace(temporary, path)


def shown(worker_args: list[str]) -> list[str]:
    """The options as the state file records them and ``status`` shows them: without the password
    (the workers' tasks can read that file)."""
    options, _ = build_parser().parse_known_args(["worker", *worker_args])  # a usage error exits here
    return masked(worker_args, options.password)


def spawn(count: int, worker_args: list[str]) -> int:
    if count <= 0:
        print("warning: nothing to spawn (COUNT is 0)", file=sys.stderr)
        return 0
    recorded = shown(worker_args)
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workers = [w for w in load() if alive(w)]
    with progress_bar(None, count, "spawning workers", unit="worker") as advance:
        for _ in range(count):
            log_path = logs / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{len(workers)}.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "mito_lab", "worker", *worker_args],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=dict(os.environ, NO_COLOR="1"),
                )
            started = _start_time(process.pid)
            if started is not None:
                workers.append(Managed(process.pid, started, recorded, str(log_path)))
            if advance is not None:
                advance(1)
    save(workers)
    # a worker with bad options or credentials exits at once: wait until each has registered or exited
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and not all(_registered(w) or not alive(w) for w in workers):
        time.sleep(0.1)
    running = [w for w in workers if alive(w)]
    failed = len(workers) - len(running)
    print(f"{counted(len(running), 'worker')} running" + (f"; {failed} exited at once (see their logs in {logs})" if failed else ""))
    save(running)
    return 1 if failed else 0


def _registered(worker: Managed) -> bool:
    try:
        return "registered as worker" in Path(worker.log).read_text(errors="replace")
    except OSError:
        return False


def status() -> int:
    workers = load()
    running = [w for w in workers if alive(w)]
    for worker in running:
        print(f"{worker.pid:>8}  {' '.join(worker.args) or '(no options)'}  log: {worker.log}")
    print(f"Total: {len(running)}")
    save(running)
    return 0


def kill(force: bool = False) -> int:
    """SIGTERM (workers hand back their tasks and unregister), SIGKILL after a grace period;
    ``force`` sends SIGKILL at once."""
    running = [w for w in load() if alive(w)]
    for worker in running:
        os.kill(worker.pid, signal.SIGKILL if force else signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while any(alive(w) for w in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for worker in running:
        if alive(worker):
            os.kill(worker.pid, signal.SIGKILL)
    save([])
    print(f"Stopped {counted(len(running), 'worker')}")
    return 0
