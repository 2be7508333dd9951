"""Faults under load (SPEC 7): a worker SIGKILLed mid-batch, the coordinator SIGKILLed with 500
tasks in flight, two coordinators on one PostgreSQL, Redis and the object store going away for a
while. After each: every task has ended, none is lost, none ran twice unless its worker died, and
every result artifact downloads intact (checked against a checksum the task itself wrote)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import signal
import subprocess
import tarfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Platform, RedisServer, http, start_platform
from mito_lab.testing import S3Server, wait_until
from test_dispatch import submit

pytestmark = pytest.mark.timeout(600)  # hundreds of tasks each, beside the rest of the suite on two cores

# The task notes its run (task and worker process) in a ledger shared by every worker, then
# leaves random bytes and their checksum as its result.
SCRIPT = (
    'echo "$MITO_TASK_UUID $PPID" >> {ledger}; '
    'head -c {size} /dev/urandom > "$MITO_RESULT_DIR/data.bin"; '
    'sha256sum "$MITO_RESULT_DIR/data.bin" | cut -c1-64 > "$MITO_RESULT_DIR/data.sha256"; '
    "sleep {sleep}"
)


def launch(platform: Platform, ledger: Path, count: int, label: str, size: int = 1024, sleep: float = 0.0) -> list[str]:
    """Submit ``count`` ledger tasks in one batch; their UUIDs."""
    spec = {"args": ["sh", "-c", SCRIPT.format(ledger=ledger, size=size, sleep=sleep)]}
    body = {"tasks": [{"task_spec": spec, "labels": [label]} for _ in range(count)]}
    answer = platform.api("POST", "/tasks/submit", body)
    assert answer.status == 200, answer.body
    return [item["Ok"]["uuid"] for item in answer.json["results"]]


def ended(platform: Platform, label: str) -> int:
    """Tasks committed (archived with a result): only those have an exit status."""
    query = {"labels": [label], "exit_status": f">={-(2**31)}", "count": True}
    return platform.api("POST", "/tasks/query", query).json["count"]


def runs(ledger: Path) -> dict[str, list[int]]:
    """The worker processes that ran each task, in order."""
    found: dict[str, list[int]] = defaultdict(list)
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            uuid, worker = line.split()
            found[uuid].append(int(worker))
    return found


def wait_for_runs(ledger: Path, count: int, timeout: float = 120) -> None:
    wait_until(lambda: sum(map(len, runs(ledger).values())) >= count, f"{count} runs to start", timeout=timeout, interval=0.2)


def verify(platform: Platform, label: str, uuids: list[str], ledger: Path, died: frozenset[int] = frozenset()) -> None:
    """Every task Finished with exit 0, ran once (or again only after its worker died), and its
    result downloads intact."""
    tasks = platform.api("POST", "/tasks/query", {"labels": [label]}).json["tasks"]
    assert sorted(t["uuid"] for t in tasks) == sorted(uuids), "tasks lost or invented"
    unfinished = [(t["uuid"], t["state"], t["result"]) for t in tasks if t["state"] != "Finished" or t["result"]["exit_status"] != 0]
    assert not unfinished, unfinished[:5]
    ran = runs(ledger)
    assert set(ran) == set(uuids)
    again = {uuid: workers for uuid, workers in ran.items() if any(w not in died for w in workers[:-1])}
    assert not again, f"ran twice though the worker lived: {list(again.items())[:5]}"
    downloads = []
    for start in range(0, len(uuids), 500):
        body = {"uuids": uuids[start:start + 500], "content_type": "result"}
        downloads += platform.api("POST", "/tasks/download/artifacts/list", body).json["downloads"]
    assert sorted(d["uuid"] for d in downloads) == sorted(uuids), "result artifacts missing"

    def intact(download: dict[str, str]) -> str | None:
        answer = http("GET", download["url"])
        if answer.status != 200:
            return f"{download['uuid']}: {answer.status}"
        with tarfile.open(fileobj=io.BytesIO(answer.body)) as tar:
            data = tar.extractfile("result/data.bin").read()  # type: ignore[union-attr]
            checksum = tar.extractfile("result/data.sha256").read().decode().strip()  # type: ignore[union-attr]
        return None if hashlib.sha256(data).hexdigest() == checksum else f"{download['uuid']}: checksum differs"

    with ThreadPoolExecutor(8) as pool:
        broken = [problem for problem in pool.map(intact, downloads) if problem]
    assert not broken, broken[:5]


def test_a_worker_killed_mid_batch_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    platform = start_platform(tmp_path / "platform", "--db", pg_url)  # drops a silent worker after 10 s
    ledger = tmp_path / "ledger"
    try:
        # the victim runs four tasks at once (protocol v2), so it dies holding at least four claims;
        # the others start once it has them, so a slow start on a busy machine cannot leave it none
        victim = platform.start_worker("--slots", "4")
        uuids = launch(platform, ledger, 60, "batch", sleep=0.5)
        wait_until(lambda: sum(victim.pid in ws for ws in runs(ledger).values()) >= 4, "the victim to run four tasks", timeout=60)
        others = [platform.start_worker() for _ in range(2)]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_until(lambda: ended(platform, "batch") == len(uuids), "the batch to end", timeout=180, interval=0.5)
        verify(platform, "batch", uuids, ledger, died=frozenset({victim.pid}))
        assert all(worker.poll() is None for worker in others)
    finally:
        platform.stop()


def test_the_coordinator_killed_with_500_tasks_in_flight(tmp_path: Path) -> None:
    platform = start_platform(tmp_path / "platform")  # the embedded default: SQLite and the local store
    ledger = tmp_path / "ledger"
    try:
        workers = [platform.start_worker(*(("--slots", "2") if i % 2 else ())) for i in range(4)]
        uuids = launch(platform, ledger, 500, "batch", sleep=0.05)
        wait_for_runs(ledger, 100)
        platform.coordinator.send_signal(signal.SIGKILL)
        platform.coordinator.wait()
        time.sleep(3)  # the workers' reports, uploads and fetches fail meanwhile
        platform.start_coordinator()
        wait_until(lambda: ended(platform, "batch") == len(uuids), "the batch to end", timeout=300, interval=0.5)
        verify(platform, "batch", uuids, ledger)
        assert all(worker.poll() is None for worker in workers)
    finally:
        platform.stop()


# The first run of a task waits for the gate; any later run ends at once (another worker took the
# task over). The ledger notes each run, as SCRIPT's does.
GATED_ONCE = (
    'echo "$MITO_TASK_UUID $PPID" >> {ledger}; '
    '[ "$(grep -c "$MITO_TASK_UUID" {ledger})" -gt 1 ] || while [ ! -e {gate} ]; do sleep 0.1; done'
)
BEATS = ("--heartbeat-interval", "1s")  # these workers say so when they register


def gated_once(platform: Platform, ledger: Path, gate: Path, tag: str) -> str:
    return submit(platform, tags=[tag], task_spec={"args": ["sh", "-c", GATED_ONCE.format(ledger=ledger, gate=gate)]})


def worker_uuid(platform: Platform, worker: subprocess.Popen[bytes]) -> str:
    log = platform.home / f"worker-{platform.workers.index(worker)}.log"
    found = wait_until(lambda: re.search(r"registered as worker (\S+)", log.read_text()), "the worker to register")
    return found.group(1)


def registered(platform: Platform) -> set[str]:
    return {worker["worker_id"] for worker in platform.api("POST", "/workers/query", {}).json["workers"]}


def test_after_a_coordinator_restart_a_worker_gone_meanwhile_is_reaped_within_its_heartbeats(tmp_path: Path) -> None:
    """Its task is re-queued and run elsewhere within a few of its heartbeat intervals (1 s), not
    the heartbeat timeout (10 min); workers that live through the restart keep theirs."""
    platform = start_platform(tmp_path / "platform", "--heartbeat-timeout", "10m")
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    try:
        victim, keeper = platform.start_worker(*BEATS, "--tags", "lost"), platform.start_worker(*BEATS, "--tags", "kept")
        lost, kept = gated_once(platform, ledger, gate, "lost"), gated_once(platform, ledger, gate, "kept")
        wait_until(lambda: runs(ledger)[lost] == [victim.pid] and runs(ledger)[kept] == [keeper.pid], "the victim and the keeper to run their tasks")
        spare = platform.start_worker(*BEATS, "--tags", "lost")
        alive = {worker_uuid(platform, keeper), worker_uuid(platform, spare)}
        platform.coordinator.send_signal(signal.SIGKILL)
        platform.coordinator.wait()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        time.sleep(6)  # away long enough for backed-off retries to come later than five intervals after its return
        platform.start_coordinator()
        assert platform.wait_task(lost, timeout=30)["result"] == {"exit_status": 0, "msg": None}
        assert runs(ledger)[lost] == [victim.pid, spare.pid]
        assert registered(platform) == alive
        gate.touch()
        assert platform.wait_task(kept)["result"] == {"exit_status": 0, "msg": None}
        assert runs(ledger)[kept] == [keeper.pid]  # never taken from the keeper
        assert keeper.poll() is None and spare.poll() is None
    finally:
        gate.touch()  # the victim's orphaned run ends too
        platform.stop()


def test_two_coordinators_judge_workers_by_their_shared_heartbeats(tmp_path: Path, pg_url: str) -> None:
    """A coordinator starting beside another leaves that one's live workers alone (their heartbeats
    go to the other, into the database they share), and a worker gone silent is reaped within a
    few of its heartbeat intervals whichever coordinator it talked to."""
    first = start_platform(tmp_path / "a", "--db", pg_url, "--heartbeat-timeout", "10m")
    second: Platform | None = None
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    try:
        keeper = first.start_worker(*BEATS, "--tags", "kept")
        kept = gated_once(first, ledger, gate, "kept")
        wait_until(lambda: runs(ledger)[kept] == [keeper.pid], "the keeper to run its task")
        second = start_platform(tmp_path / "b", "--db", pg_url, "--heartbeat-timeout", "10m")
        victim = second.start_worker(*BEATS, "--tags", "lost")
        lost = gated_once(second, ledger, gate, "lost")
        wait_until(lambda: runs(ledger)[lost] == [victim.pid], "the victim to run its task")
        spare = first.start_worker(*BEATS, "--tags", "lost")
        alive = {worker_uuid(first, keeper), worker_uuid(first, spare)}
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert second.wait_task(lost, timeout=30)["result"] == {"exit_status": 0, "msg": None}
        assert runs(ledger)[lost] == [victim.pid, spare.pid]
        # by now the second coordinator has run longer than five of the keeper's intervals
        assert registered(first) == registered(second) == alive
        gate.touch()
        assert first.wait_task(kept)["result"] == {"exit_status": 0, "msg": None}
        assert runs(ledger)[kept] == [keeper.pid]
        assert "housekeeping" not in first.log + second.log  # both may reap at once: neither fails
    finally:
        gate.touch()
        first.stop()
        if second is not None:
            second.stop()


def test_two_coordinators_on_one_database_run_1000_tasks_once(tmp_path: Path, pg_url: str, s3: S3Server) -> None:
    first = start_platform(tmp_path / "a", "--db", pg_url, *s3.coordinator_args())
    second = start_platform(tmp_path / "b", "--db", pg_url, *s3.coordinator_args())
    ledger = tmp_path / "ledger"
    try:
        workers = [first.start_worker(), second.start_worker(), first.start_worker("--slots", "2"), second.start_worker("--slots", "2")]
        uuids = launch(first, ledger, 500, "batch") + launch(second, ledger, 500, "batch")
        wait_until(lambda: ended(first, "batch") == len(uuids), "1,000 tasks to end", timeout=400, interval=0.5)
        verify(first, "batch", uuids, ledger)
        reporters = {t["reporter_uuid"] for t in first.api("POST", "/tasks/query", {"labels": ["batch"]}).json["tasks"]}
        assert len(reporters) == 4  # all four workers, behind both coordinators, took tasks
        assert all(worker.poll() is None for worker in workers)
    finally:
        first.stop()
        second.stop()


def test_redis_stopped_and_restarted_mid_run(tmp_path: Path, pg_url: str, redis_server: RedisServer, s3: S3Server) -> None:
    redis = ["--redis", redis_server.url, "--redis-skip-acl-rules"]
    first = start_platform(tmp_path / "a", "--db", pg_url, *redis, *s3.coordinator_args())
    second = start_platform(tmp_path / "b", "--db", pg_url, *redis, *s3.coordinator_args())
    ledger = tmp_path / "ledger"
    try:
        first.start_worker("--tags", "server")
        second.start_worker("--tags", "client")
        uuids = launch(first, ledger, 100, "batch", sleep=0.1) + launch(second, ledger, 100, "batch", sleep=0.1)
        wait_for_runs(ledger, 40)
        redis_server.stop()
        time.sleep(5)
        more = launch(first, ledger, 20, "batch") + launch(second, ledger, 20, "batch")  # while Redis is away
        redis_server.start()
        wait_until(lambda: ended(first, "batch") == len(uuids) + len(more), "the batch to end", timeout=240, interval=0.5)
        verify(first, "batch", uuids + more, ledger)
        # the fan-out works again: the second coordinator hears at once of the first one's exec states
        gate = tmp_path / "gate"
        server = submit(first, tags=["server"], task_spec={"args": ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.1; done']})
        client = submit(second, tags=["client"], task_spec={"args": ["true"], "watch": [server, "ExecSpawned"]})
        assert second.wait_task(client, timeout=20)["result"] == {"exit_status": 0, "msg": None}  # a missed event costs 30 s
        gate.touch()
        first.wait_task(server)
    finally:
        first.stop()
        second.stop()


def test_the_object_store_away_for_10_seconds_during_uploads(tmp_path: Path, s3: S3Server) -> None:
    platform = start_platform(tmp_path / "platform", *s3.coordinator_args())
    ledger = tmp_path / "ledger"
    try:
        workers = [platform.start_worker() for _ in range(2)]
        uuids = launch(platform, ledger, 100, "batch", size=256 * 1024, sleep=0.2)
        wait_for_runs(ledger, 20)
        s3.stop()
        time.sleep(10)
        s3.start()
        wait_until(lambda: ended(platform, "batch") == len(uuids), "the batch to end", timeout=240, interval=0.5)
        verify(platform, "batch", uuids, ledger)
        assert all(worker.poll() is None for worker in workers)
    finally:
        platform.stop()


def test_database_connections_dropped_under_the_coordinator(tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL ends every connection of the coordinator (as on a restart): a request that met a
    dead one answers 503 with a message (clients retry it), never 500, and the pool is renewed."""
    import asyncpg

    platform = start_platform(tmp_path / "platform", "--db", pg_url)
    try:
        assert all(platform.api("GET", "/auth").status == 200 for _ in range(5))

        async def terminate() -> int:
            connection = await asyncpg.connect(pg_url)
            try:
                return len(await connection.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ))
            finally:
                await connection.close()

        assert asyncio.run(terminate()) > 0
        answers = [platform.api("GET", "/auth") for _ in range(10)]
        assert {answer.status for answer in answers} <= {200, 503}, [(a.status, a.body) for a in answers]
        assert all(a.json == {"msg": "the coordinator lost its database connection; retry"} for a in answers if a.status == 503)
        assert answers[-1].status == 200
        assert "Traceback" not in platform.log, platform.log[-3000:]
    finally:
        platform.stop()
