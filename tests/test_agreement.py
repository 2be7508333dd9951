"""A worker and its coordinator agree on time and on the task (issue 18): heartbeats within the
coordinator's timeout, a lifetime timed on the worker's monotonic clock, no task left Running
without a live worker, and no artifact recorded for bytes that never arrived."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

from conftest import Platform, require_service
from test_dispatch import submit
from test_end_to_end import submitted_uuid

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_worker_heartbeats_within_the_coordinators_timeout(platform: Platform) -> None:
    # the fixture's coordinator removes a worker after 10 s without a heartbeat; this one asks for a minute
    worker = platform.start_worker("--heartbeat-interval", "1m")
    task = submit(platform, task_spec={"args": ["sleep", "20"]})
    info = platform.wait_task(task, timeout=90)
    assert info["result"] == {"exit_status": 0, "msg": None} and info["attempts"] == 1  # it ran once
    assert worker.poll() is None
    assert "too long for the coordinator's heartbeat timeout" in (platform.home / "worker-0.log").read_text()


def test_a_worker_whose_clock_is_days_ahead_lives_its_lifetime(platform: Platform) -> None:
    if not LIBFAKETIME.exists():
        require_service("libfaketime (the faketime package) is not installed")
    skewed = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+2d"}  # the worker's wall clock (and its tasks') is 2 days ahead
    worker = platform.start_worker("--lifetime", "1h", env=skewed)
    task = submitted_uuid(platform.mito("submit", "--", "sh", "-c", 'date +%s > "$MITO_RESULT_DIR/now"').stdout)
    assert platform.wait_task(task)["result"] == {"exit_status": 0, "msg": None}
    assert worker.poll() is None  # it did not retire: an hour is an hour on any clock
    platform.mito("get", "artifact", task, "result", "-o", "now.tgz")
    with tarfile.open(platform.home / "now.tgz") as tar:
        worker_now = int(tar.extractfile("result/now").read())  # type: ignore[union-attr]
    assert worker_now > time.time() + 86400  # the clock really was skewed
