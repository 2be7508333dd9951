"""mito_lab's performance harness: every figure beside a baseline measured in the same run.

    python benchmarks/run.py [--quick] [--output benchmarks/report.json] [--databases sqlite,postgres]

Each benchmark gets a fresh coordinator (and, on PostgreSQL, a fresh database), so no figure is
coloured by an earlier one. The throughput workload also runs through Celery and dask.distributed
when they are installed (``pip install -e .[bench]``); without them the report says they were
skipped. The JSON report is printed and written to ``--output``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from workload import run_true  # benchmarks/ is on the path: this file runs as a script

from mito_lab import Client
from mito_lab.client.api import AsyncClient, task_request
from mito_lab.client.http import HttpSession
from mito_lab.testing import (
    DEFAULT_POSTGRES,
    S3Server,
    ServiceError,
    coordinator_command,
    cpu_seconds,
    free_port,
    isolated_env,
    peak_rss_bytes,
    postgres_database,
    previous_release,
    redis_service,
    reset_peak_rss,
    running_release,
    seaweedfs,
    spawn,
    stop_process,
    wait_healthy,
    wait_until,
)
from mito_lab.wire import (
    RegisterWorkerReq,
    RegisterWorkerResp,
    TasksQueryReq,
    TaskState,
    WorkerTaskResp,
)

ADMIN = ("mitosis_admin", "mitosis_admin")
MB = 1_000_000


@dataclass(frozen=True)
class Sizes:
    tasks: int  # end-to-end throughput
    throughput_pairs: int  # runs of mito_lab, each followed by one of Pool(2)
    latency_samples: int
    batch: int  # one batch submission
    listing: int  # tasks listed into a DataFrame
    transfer_mb: int
    idle_workers: int
    idle_seconds: float
    claim_depths: tuple[int, int]  # Ready tasks queued when claims are timed: shallow, then deep
    claims: int  # timed at each depth; fewer than the shallow depth
    api_calls: int  # small authenticated calls, one after the other


FULL = Sizes(tasks=2000, throughput_pairs=3, latency_samples=200, batch=10_000, listing=100_000, transfer_mb=512, idle_workers=200, idle_seconds=30,
             claim_depths=(200, 20_000), claims=100, api_calls=500)
QUICK = Sizes(tasks=100, throughput_pairs=1, latency_samples=20, batch=1000, listing=5000, transfer_mb=32, idle_workers=20, idle_seconds=1,
              claim_depths=(50, 500), claims=20, api_calls=50)
TARGETS = {
    "throughput_ratio_min": 0.5,
    "throughput_to_each_peer_min": 1.0,  # mito_lab's tasks/s over Celery's and dask's, same run
    "coordinator_cpu_ms_per_task_max": 0.5,
    "dispatch_start_p50_ms_max": 5,  # submit -> the process started
    "dispatch_p50_ms_max": 10,  # submit -> its ExecSpawned event
    "batch_submit_10k_s_max": 1,
    "listing_100k_s_max": 2,
    "claim_depth_ratio_max": 1.5,
    "reference_protocol_speedup_min": 5,
    "transfer_fraction_of_copy_min": 0.5,
    "transfer_peak_rss_mb_max": 150,
    "idle_200_workers_core_percent_max": 5,
}


# --- the platform -------------------------------------------------------------------------------


@dataclass
class Coordinator:
    url: str
    process: subprocess.Popen[bytes]
    home: Path
    database_url: str | None
    release: Path | None = None  # the source tree its workers run (None: this one)

    def client(self) -> Client:
        return Client(self.url, *ADMIN, credential_path=self.home / "credentials")

    def worker(self, index: int, *args: str) -> subprocess.Popen[bytes]:
        return spawn(
            [sys.executable, "-m", "mito_lab", "worker", "-c", self.url, "-u", ADMIN[0],
             "--credential-path", str(self.home / f"worker-{index}.credentials"), *args],
            self.home / f"worker-{index}.log", running_release(isolated_env(self.home, MITO_PASSWORD=ADMIN[1]), self.release), cwd=self.home,
        )


@contextlib.contextmanager
def coordinator(database: str, *args: str, release: Path | None = None, workers_release: Path | None = None) -> Iterator[Coordinator]:
    """A fresh coordinator on ``database`` (``sqlite`` or ``postgres``) in a scratch directory; an
    earlier ``release`` of the coordinator, or of its workers, if given."""
    with tempfile.TemporaryDirectory(prefix="mito-bench-") as scratch, contextlib.ExitStack() as stack:
        home = Path(scratch)
        database_url = stack.enter_context(postgres_database(os.environ.get("MITO_TEST_POSTGRES", DEFAULT_POSTGRES))) if database == "postgres" else None
        port = free_port()
        log = home / "coordinator.log"
        flags = ["--db", database_url] if database_url else []
        process = spawn(coordinator_command(home, port, *flags, *args), log, running_release(isolated_env(home), release), cwd=home)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", process, log)
            yield Coordinator(f"http://127.0.0.1:{port}", process, home, database_url, workers_release)
        finally:
            stop_process(process)


def finished_count(client: Client) -> int:
    return client.query_tasks(TasksQueryReq(states=[TaskState.Finished, TaskState.Cancelled], count=True)).count


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- end-to-end throughput ---------------------------------------------------------------------


def queue_true(client: Client, count: int) -> None:
    """Submit ``count`` ``true`` tasks, in batches of 1,000."""
    for offset in range(0, count, 1000):
        client.submit_many([task_request(["true"]) for _ in range(min(1000, count - offset))])


def pool_baseline(count: int) -> float:
    """Tasks per second of ``true`` run by ``multiprocessing.Pool(2)``: this machine's limit."""
    started = time.perf_counter()
    with multiprocessing.Pool(2) as pool:
        pool.map(run_true, range(count), chunksize=1)
    return count / (time.perf_counter() - started)


def celery_seconds(count: int) -> float:
    """Seconds for a Celery worker (prefork pool, concurrency 2) on a private Redis broker and
    result backend, from the first submission to the last result."""
    from celery import Celery, group
    from celery.exceptions import TimeoutError as CeleryTimeout

    # A fresh client app for each run: an app keeps its broker connections and result backend, so
    # one reused after its Redis stopped retries that Redis forever (the second database's run hung).
    with (tempfile.TemporaryDirectory(prefix="mito-bench-celery-") as scratch, redis_service(Path(scratch)) as redis,
          Celery("mito-bench", broker=redis.url, backend=redis.url) as app):
        log = Path(scratch) / "worker.log"
        # the worker imports celery_app and workload from here, whatever its directory
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
        worker = spawn([sys.executable, "-m", "celery", "-A", "celery_app", "-b", redis.url, "--result-backend", redis.url,
                        "worker", "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"], log, env, cwd=Path(scratch))
        try:
            try:  # a first task, outside the timing, says the worker is up and consuming
                app.signature("run_true", args=(0,)).apply_async().get(timeout=120)
            except CeleryTimeout:
                raise RuntimeError(f"the Celery worker ran no task in 120 s:\n{log.read_text()[-3000:]}") from None
            started = time.perf_counter()
            results = group(app.signature("run_true", args=(n,)) for n in range(count)).apply_async().get(timeout=1800)
            elapsed = time.perf_counter() - started
        finally:
            stop_process(worker)
    assert results == [0] * count, "not every Celery task ran true"
    return elapsed


def dask_seconds(count: int) -> float:
    """Seconds for dask.distributed (a LocalCluster of two single-threaded worker processes),
    from the first ``client.map`` to the gathered results."""
    from distributed import Client as DaskClient
    from distributed import LocalCluster

    with (tempfile.TemporaryDirectory(prefix="mito-bench-dask-") as scratch,
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                       local_directory=scratch) as cluster,
          DaskClient(cluster) as dask):
        dask.wait_for_workers(2, timeout=120)
        started = time.perf_counter()
        results = dask.gather(dask.map(run_true, range(count), pure=False))
        elapsed = time.perf_counter() - started
    assert results == [0] * count, "not every dask task ran true"
    return elapsed


# name -> (the module that must be installed, the function timing ``count`` tasks through it)
PEERS: dict[str, tuple[str, Callable[[int], float]]] = {"celery": ("celery", celery_seconds), "dask": ("distributed", dask_seconds)}


def peer_figures(count: int, pool_rate: float, mito_rate: float) -> dict[str, Any]:
    """The same workload through each peer, each beside Pool(2) and mito_lab of the same run."""
    figures: dict[str, Any] = {}
    for name, (module, seconds) in PEERS.items():
        if find_spec(module) is None:
            figures[name] = {"skipped": f"{module} is not installed (pip install -e .[bench])"}
            continue
        try:
            elapsed = seconds(count)
        except ServiceError as exc:  # e.g. no redis-server on this machine
            figures[name] = {"skipped": str(exc)}
            continue
        rate = count / elapsed
        figures[name] = {"tasks_per_s": round(rate, 1), "ratio_to_pool2": round(rate / pool_rate, 3),
                         "mito_lab_to_peer_ratio": round(mito_rate / rate, 3), "elapsed_s": round(elapsed, 2)}
    return figures


def run_workload(platform: Coordinator, client: Client, count: int) -> dict[str, float]:
    """``count`` ``true`` tasks through two workers: the seconds from the first submission to the
    last task ended, and the CPU seconds the coordinator and the workers spent meanwhile."""
    workers = [platform.worker(i) for i in range(2)]
    try:
        wait_until(lambda: len(client.workers()) == 2, "two workers", 60)
        cpu_before = cpu_seconds(platform.process.pid)
        started = time.time()  # the wall clock, as the coordinator records when each task ended
        queue_true(client, count)
        # checked twice a second: the check itself must not load the coordinator being measured
        wait_until(lambda: finished_count(client) == count, f"{count} tasks", 1800, interval=0.5)
        cpu = {"coordinator_cpu": cpu_seconds(platform.process.pid) - cpu_before, "workers_cpu": sum(cpu_seconds(w.pid) for w in workers)}
        # the end is the last commit the coordinator recorded, not the check that saw it (up to
        # half a second later: a tenth of a 2,000-task run, which Pool(2)'s own measure does not pay)
        ended = client.tasks()["updated_at"].max().timestamp()
        return {"elapsed": ended - started, **cpu}
    finally:
        for worker in workers:
            stop_process(worker)


def throughput(database: str, sizes: Sizes) -> dict[str, Any]:
    """mito_lab's rate beside Pool(2)'s, in pairs of runs one right after the other: this machine's
    speed drifts by a fifth from one minute to the next, and Pool(2)'s rate with it. The figures
    are the pair of the median ratio's, with every pair's ratio beside them; the peers run once,
    beside that pair."""
    pairs = []
    for _ in range(sizes.throughput_pairs):
        with coordinator(database) as platform, platform.client() as client:
            run = run_workload(platform, client, sizes.tasks)
        pairs.append((run, pool_baseline(sizes.tasks)))
    ratios = [sizes.tasks / run["elapsed"] / baseline for run, baseline in pairs]
    run, baseline = pairs[sorted(range(len(pairs)), key=ratios.__getitem__)[len(pairs) // 2]]
    rate = sizes.tasks / run["elapsed"]
    return {
        "tasks": sizes.tasks, "tasks_per_s": round(rate, 1), "pool2_tasks_per_s": round(baseline, 1),
        "ratio": round(rate / baseline, 3), "pair_ratios": [round(ratio, 3) for ratio in ratios],
        "coordinator_cpu_s": round(run["coordinator_cpu"], 2),
        "coordinator_cpu_ms_per_task": round(run["coordinator_cpu"] / sizes.tasks * 1000, 3),
        "workers_cpu_s": round(run["workers_cpu"], 2), "elapsed_s": round(run["elapsed"], 2),
        "peers": peer_figures(sizes.tasks, baseline, rate),
    }


def reference_protocol(database: str, sizes: Sizes) -> dict[str, Any]:
    """Workers of the previous release (the reference's protocol, one task at a time) against this
    coordinator, beside the previous release's coordinator and workers (today's figure) in the
    same run."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            old = previous_release(Path(scratch) / "release")
        except ServiceError as exc:
            return {"skipped": str(exc)}
        runs = {}
        for name, count, coordinator_release in (("new_coordinator", sizes.tasks, None), ("previous_release", sizes.tasks // 4, old)):
            with coordinator(database, release=coordinator_release, workers_release=old) as platform, platform.client() as client:
                runs[name] = {"count": count, **run_workload(platform, client, count)}
    rates = {name: run["count"] / run["elapsed"] for name, run in runs.items()}
    cpu_ms = {name: {part: round(run[f"{part}_cpu"] / run["count"] * 1000, 2) for part in ("coordinator", "workers")} for name, run in runs.items()}
    return {
        "tasks": sizes.tasks, "old_workers_tasks_per_s": round(rates["new_coordinator"], 1),
        "previous_release_tasks_per_s": round(rates["previous_release"], 1),
        "speedup": round(rates["new_coordinator"] / rates["previous_release"], 2),
        # CPU per task: what is left of the coordinator's share, and the old workers' own, which
        # bounds the rate even with a free coordinator (all cores on the old workers alone)
        "cpu_ms_per_task": cpu_ms,
        "old_workers_alone_bound_tasks_per_s": round((os.cpu_count() or 1) * 1000 / cpu_ms["new_coordinator"]["workers"], 1),
    }


# --- dispatch latency -------------------------------------------------------------------------


async def _latencies(client: AsyncClient, samples: int) -> dict[str, list[float]]:
    """Per sample: submit -> the process started (the task prints the wall clock as it starts:
    ``date``'s own start-up is counted against us) and submit -> its ExecSpawned event."""
    spawned: dict[str, float] = {}
    archived: dict[str, asyncio.Event] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("kind") != "task":
            return
        if event.get("exec_state") == "ExecSpawned":
            spawned.setdefault(event["uuid"], time.perf_counter())
        if event.get("archived"):
            archived.setdefault(event["uuid"], asyncio.Event()).set()

    stop = await client.listen(on_event)
    figures: dict[str, list[float]] = {"start": [], "spawned_event": [], "round_trip": []}
    try:
        for _ in range(samples):
            started = time.perf_counter()
            await client.session.call("GET", "health")
            figures["round_trip"].append(time.perf_counter() - started)
            started, wall = time.perf_counter(), time.time()
            task = str((await client.submit(["date", "+%s.%N"])).uuid)
            await asyncio.wait_for(archived.setdefault(task, asyncio.Event()).wait(), 60)  # the worker is idle again
            figures["spawned_event"].append(spawned[task] - started)
            figures["start"].append(float((await client.logs(task)).data) - wall)
    finally:
        stop()
    return figures


def dispatch_latency(database: str, sizes: Sizes) -> dict[str, Any]:
    with coordinator(database) as platform, platform.client() as client:
        worker = platform.worker(0)
        try:
            wait_until(lambda: len(client.workers()) == 1, "the worker", 60)
            figures = client.run(_latencies(client.aio, sizes.latency_samples))
        finally:
            stop_process(worker)
    ms = {name: sorted(value * 1000 for value in values) for name, values in figures.items()}
    return {
        "samples": sizes.latency_samples,
        "start_p50_ms": round(percentile(ms["start"], 0.5), 2), "start_p99_ms": round(percentile(ms["start"], 0.99), 2),
        "p50_ms": round(percentile(ms["spawned_event"], 0.5), 2), "p99_ms": round(percentile(ms["spawned_event"], 0.99), 2),
        "baseline_http_round_trip_p50_ms": round(statistics.median(ms["round_trip"]), 2),
    }


# --- API calls ----------------------------------------------------------------------------------

API_CALL = "auth"  # GET /auth, who am I: a token checked and its user read, the smallest authenticated call


async def _session_calls(client: AsyncClient, calls: int) -> tuple[list[float], float]:
    """Seconds of each call through the SDK's own HTTP session, one after the other, and the CPU
    seconds this process spent on them all."""
    seconds = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await client.session.call("GET", API_CALL)
        seconds.append(time.perf_counter() - started)
    return seconds, time.process_time() - cpu


def _plain_calls(url: str, token: str, calls: int) -> list[float]:
    """The same calls through one kept-alive ``http.client`` connection: the floor of this call."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port)
    seconds = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            connection.request("GET", f"/{API_CALL}", headers={"Authorization": f"Bearer {token}"})
            answer = connection.getresponse()
            answer.read()
            seconds.append(time.perf_counter() - started)
            assert answer.status == 200, answer.status
    finally:
        connection.close()
    return seconds


def api_calls(database: str, sizes: Sizes) -> dict[str, Any]:
    """A small authenticated call through the SDK, sequential: its latency, and the CPU it costs
    the client and the coordinator (a new connection per request costs both)."""
    with coordinator(database) as platform, platform.client() as client:
        before = cpu_seconds(platform.process.pid)
        through_sdk, client_cpu = client.run(_session_calls(client.aio, sizes.api_calls))
        coordinator_cpu = cpu_seconds(platform.process.pid) - before
        plain = _plain_calls(platform.url, client.aio.session.token or "", sizes.api_calls)
    return {
        "calls": sizes.api_calls, "p50_ms": round(statistics.median(through_sdk) * 1000, 2),
        "p99_ms": round(percentile(through_sdk, 0.99) * 1000, 2),
        "client_cpu_ms_per_call": round(client_cpu / sizes.api_calls * 1000, 3),
        "coordinator_cpu_ms_per_call": round(coordinator_cpu / sizes.api_calls * 1000, 3),
        "baseline_keep_alive_http_client_p50_ms": round(statistics.median(plain) * 1000, 2),
    }


# --- batch submission and listing --------------------------------------------------------------


def _engine_url(platform: Coordinator, scratch: Path) -> str:
    if platform.database_url:
        return platform.database_url.replace("postgres://", "postgresql+asyncpg://")
    return f"sqlite+aiosqlite:///{scratch / 'baseline.db'}"


async def _database_baseline(url: str, batch: int, rows: int) -> tuple[float, float]:
    """The database's own speed for the same work: insert ``batch`` task-like rows in one
    transaction (timed), more up to ``rows``, then read all ``rows`` into a DataFrame (timed)."""
    metadata = sa.MetaData()
    table = sa.Table(
        "bench_tasks", metadata,
        sa.Column("id", sa.Integer, primary_key=True), sa.Column("uuid", sa.Uuid), sa.Column("group_id", sa.Integer),
        sa.Column("task_id", sa.Integer), sa.Column("tags", sa.JSON), sa.Column("labels", sa.JSON), sa.Column("state", sa.String(16)),
        sa.Column("timeout", sa.Integer), sa.Column("priority", sa.Integer), sa.Column("spec", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True)), sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        moment = pd.Timestamp.now(tz="UTC").to_pydatetime()
        values = [{"uuid": uuid.uuid4(), "group_id": 1, "task_id": n, "tags": [], "labels": [], "state": "Ready", "timeout": 600,
                   "priority": 0, "spec": {"args": ["true"], "envs": {}, "resources": [], "terminal_output": False, "watch": None},
                   "created_at": moment, "updated_at": moment} for n in range(rows)]
        started = time.perf_counter()
        async with engine.begin() as connection:
            await connection.execute(table.insert(), values[:batch])
        inserted = time.perf_counter() - started
        if rows > batch:
            async with engine.begin() as connection:
                await connection.execute(table.insert(), values[batch:])
        started = time.perf_counter()
        async with engine.connect() as connection:
            result = await connection.execute(sa.select(table).order_by(table.c.id.desc()))
            pd.DataFrame(result.all(), columns=list(result.keys()))
        listed = time.perf_counter() - started
        async with engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
        return inserted, listed
    finally:
        await engine.dispose()


def submit_and_list(database: str, sizes: Sizes) -> dict[str, Any]:
    with coordinator(database) as platform, platform.client() as client, tempfile.TemporaryDirectory() as scratch:
        batch = [task_request(["true"], labels=["bench"]) for _ in range(sizes.batch)]
        started = time.perf_counter()
        client.submit_many(batch)
        submitted = time.perf_counter() - started
        for _ in range(sizes.batch, sizes.listing, sizes.batch):
            client.submit_many(batch)
        started = time.perf_counter()
        frame = client.tasks()
        listed = time.perf_counter() - started
        assert len(frame) == max(sizes.listing, sizes.batch), len(frame)
        insert_floor, list_floor = client.run(_database_baseline(_engine_url(platform, Path(scratch)), sizes.batch, len(frame)))
        rss = peak_rss_bytes(platform.process.pid)
    return {
        "batch": sizes.batch, "batch_submit_s": round(submitted, 3), "baseline_db_insert_s": round(insert_floor, 3),
        "listed": len(frame), "listing_s": round(listed, 3), "baseline_db_select_to_frame_s": round(list_floor, 3),
        "coordinator_peak_rss_mb": round(rss / MB, 1),
    }


# --- claim cost against queue depth -----------------------------------------------------------


async def _claims(platform: Coordinator, admin: HttpSession, claims: int) -> tuple[list[float], float]:
    """Register ``claims`` workers (the admin's user token), then let each fetch once without
    waiting, claiming one task: the client's round trips, and the coordinator's CPU seconds over
    the fetches alone. One fetch per worker, because a worker that fetches again before reporting
    is handed its undelivered task again, not a new claim."""
    tokens = [(await admin.call("POST", "workers", RegisterWorkerReq(), RegisterWorkerResp)).token for _ in range(claims)]
    fetcher = HttpSession(platform.url)
    try:
        round_trips = []
        cpu_before = cpu_seconds(platform.process.pid)
        for token in tokens:
            fetcher.token = token  # one session, each worker's token in turn
            started = time.perf_counter()
            task = await fetcher.call("GET", "workers/tasks", response=WorkerTaskResp)
            round_trips.append(time.perf_counter() - started)
            assert task is not None, "a fetch claimed nothing"
        return round_trips, cpu_seconds(platform.process.pid) - cpu_before
    finally:
        fetcher.close()


def claim_depth(database: str, sizes: Sizes) -> dict[str, Any]:
    """Claim cost with a shallow and then a deep queue of Ready tasks, on one coordinator with no
    worker running: the dispatch path should not slow down as the queue grows."""
    shallow, deep = sizes.claim_depths
    figures: dict[str, Any] = {"claims": sizes.claims}
    with coordinator(database) as platform, platform.client() as client:
        queued = 0
        for name, depth in (("shallow", shallow), ("deep", deep)):
            queue_true(client, depth - queued)
            round_trips, cpu = client.run(_claims(platform, client.aio.session, sizes.claims))
            queued = depth - sizes.claims
            figures[name] = {"queued": depth, "p50_ms": round(statistics.median(round_trips) * 1000, 2),
                             "coordinator_cpu_ms_per_claim": round(cpu / sizes.claims * 1000, 3)}
    figures["deep_to_shallow_p50_ratio"] = round(figures["deep"]["p50_ms"] / figures["shallow"]["p50_ms"], 2)
    return figures


# --- transfers ----------------------------------------------------------------------------------


# Run in its own small process (only the SDK imported), so its peak RSS is the transfer's.
TRANSFER_CHILD = """
import asyncio, json, os, sys, time
from pathlib import Path
from mito_lab.client.api import AsyncClient
from mito_lab.testing import peak_rss_bytes, reset_peak_rss
from mito_lab.wire import ArtifactContentType

spec = json.loads(sys.argv[1])

async def move():
    async with AsyncClient(spec["url"], spec["token"]) as client:
        reset_peak_rss(os.getpid())
        started = time.perf_counter()
        if spec["direction"] == "up":
            await client.upload_artifact(spec["task"], ArtifactContentType.result, Path(spec["file"]), progress=False)
        else:
            await client.download_artifact(spec["task"], ArtifactContentType.result, Path(spec["file"]), progress=False)
        return time.perf_counter() - started

seconds = asyncio.run(move())
print(json.dumps({"seconds": seconds, "peak_rss": peak_rss_bytes(os.getpid())}))
"""


def _transfer(platform: Coordinator, token: str, task: str, direction: str, file: Path) -> dict[str, float]:
    spec = json.dumps({"url": platform.url, "token": token, "task": task, "direction": direction, "file": str(file)})
    done = subprocess.run([sys.executable, "-c", TRANSFER_CHILD, spec], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def transfers(database: str, sizes: Sizes, s3: S3Server | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mito-bench-files-") as scratch:
        source = Path(scratch) / "payload.bin"
        with source.open("wb") as handle:
            for _ in range(sizes.transfer_mb):
                handle.write(os.urandom(MB))
        started = time.perf_counter()
        shutil.copyfile(source, Path(scratch) / "copy.bin")
        copy_mb_s = sizes.transfer_mb / (time.perf_counter() - started)
        (Path(scratch) / "copy.bin").unlink()
        stores = {"local": []} | ({"s3": s3.coordinator_args()} if s3 else {})
        for store, args in stores.items():
            with coordinator(database, *args) as platform, platform.client() as client:
                task = str(client.submit(["true"], tags=["never-run"]).uuid)
                token = client.aio.session.token or ""
                reset_peak_rss(platform.process.pid)  # not start-up's (argon2 hashes the admin password with 64 MiB)
                up = _transfer(platform, token, task, "up", source)
                down = _transfer(platform, token, task, "down", Path(scratch) / "back.bin")
                (Path(scratch) / "back.bin").unlink()
                results[store] = {
                    "upload_mb_s": round(sizes.transfer_mb / up["seconds"], 1),
                    "download_mb_s": round(sizes.transfer_mb / down["seconds"], 1),
                    "client_peak_rss_mb": round(max(up["peak_rss"], down["peak_rss"]) / MB, 1),  # during the transfers
                    "coordinator_peak_rss_mb": round(peak_rss_bytes(platform.process.pid) / MB, 1),
                }
        results["size_mb"] = sizes.transfer_mb
        results["baseline_copy_mb_s"] = round(copy_mb_s, 1)
    return results


# --- idle workers --------------------------------------------------------------------------------


def fleet_child(spec: dict[str, Any]) -> None:
    """``count`` real worker agents (the worker's own code) in one process, idle: each long-polls
    for tasks and heartbeats on its timer. Runs until killed."""
    from mito_lab.config import WorkerConfig
    from mito_lab.worker.agent import Agent, WorkerClient, register

    async def fleet() -> None:
        config = WorkerConfig(coordinator_addr=spec["url"], user=ADMIN[0], password=ADMIN[1],
                              credential_path=Path(spec["home"]) / "fleet.credentials")
        loops = []
        for index in range(spec["count"]):
            session, _ = await register(config)
            agent = Agent(config, WorkerClient(session, asyncio.Event()), Path(spec["home"]) / f"fleet-{index}")
            loops += [agent.serve(), agent.heartbeats()]
        print("ready", flush=True)
        await asyncio.gather(*loops)

    asyncio.run(fleet())


def idle_workers(database: str, sizes: Sizes) -> dict[str, Any]:
    with coordinator(database) as platform:
        time.sleep(1)
        before = cpu_seconds(platform.process.pid)
        time.sleep(sizes.idle_seconds)
        alone = cpu_seconds(platform.process.pid) - before
        spec = json.dumps({"url": platform.url, "home": str(platform.home), "count": sizes.idle_workers})
        with (platform.home / "fleet.log").open("wb") as fleet_log:  # each agent's start-up warnings, 200 of them
            fleet = subprocess.Popen([sys.executable, __file__, "--fleet-child", spec], stdout=subprocess.PIPE, stderr=fleet_log,
                                     text=True, env=isolated_env(platform.home), start_new_session=True)
        try:
            if fleet.stdout is None or fleet.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the fleet did not start: {(platform.home / 'fleet.log').read_text()[-2000:]}")
            time.sleep(2)  # registration is over; measure the steady state
            before = cpu_seconds(platform.process.pid)
            time.sleep(sizes.idle_seconds)
            busy = cpu_seconds(platform.process.pid) - before
        finally:
            stop_process(fleet)
        rss = peak_rss_bytes(platform.process.pid)
    return {
        "workers": sizes.idle_workers, "window_s": sizes.idle_seconds,
        "coordinator_core_percent": round(busy / sizes.idle_seconds * 100, 2),
        "baseline_no_workers_core_percent": round(alone / sizes.idle_seconds * 100, 2),
        "coordinator_peak_rss_mb": round(rss / MB, 1),
    }


# --- the report ---------------------------------------------------------------------------------


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """Each target, met or not, per database (on the full sizes only; --quick is a smoke test)."""
    met: dict[str, Any] = {}
    for database, figures in report["results"].items():
        transfer = figures["transfer"]
        stores = [s for s in ("local", "s3") if s in transfer]
        throughput = figures["throughput"]
        met[database] = {
            "throughput": throughput["ratio"] >= TARGETS["throughput_ratio_min"],
            # None where the peer was skipped (not installed): there is no ratio to judge
            **{f"ahead_of_{name}": None if "skipped" in peer else peer["mito_lab_to_peer_ratio"] >= TARGETS["throughput_to_each_peer_min"]
               for name, peer in throughput["peers"].items()},
            "coordinator_cpu": throughput["coordinator_cpu_ms_per_task"] <= TARGETS["coordinator_cpu_ms_per_task_max"],
            "dispatch_start_p50": figures["dispatch_latency"]["start_p50_ms"] < TARGETS["dispatch_start_p50_ms_max"],
            "dispatch_p50": figures["dispatch_latency"]["p50_ms"] < TARGETS["dispatch_p50_ms_max"],
            "reference_protocol": None if "skipped" in figures["reference_protocol"]
            else figures["reference_protocol"]["speedup"] >= TARGETS["reference_protocol_speedup_min"],
            "batch_submit": figures["submit_and_list"]["batch_submit_s"] < TARGETS["batch_submit_10k_s_max"],
            "listing": figures["submit_and_list"]["listing_s"] < TARGETS["listing_100k_s_max"],
            "claim_depth": figures["claim_depth"]["deep_to_shallow_p50_ratio"] <= TARGETS["claim_depth_ratio_max"],
            "transfer_speed": all(min(transfer[s]["upload_mb_s"], transfer[s]["download_mb_s"])
                                  >= TARGETS["transfer_fraction_of_copy_min"] * transfer["baseline_copy_mb_s"] for s in stores),
            "transfer_rss": all(max(transfer[s]["client_peak_rss_mb"], transfer[s]["coordinator_peak_rss_mb"])
                                < TARGETS["transfer_peak_rss_mb_max"] for s in stores),
            "idle_workers": figures["idle_workers"]["coordinator_core_percent"] < TARGETS["idle_200_workers_core_percent_max"],
        }
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the harness")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/report.json"))
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--fleet-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fleet_child:
        fleet_child(json.loads(args.fleet_child))
        return 0
    sizes = QUICK if args.quick else FULL
    report: dict[str, Any] = {
        "quick": args.quick, "sizes": sizes.__dict__, "targets": TARGETS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "results": {},
    }
    with contextlib.ExitStack() as stack:
        try:
            s3: S3Server | None = stack.enter_context(seaweedfs(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "s3"))
        except ServiceError as exc:
            print(f"S3 transfers skipped: {exc}", file=sys.stderr)
            s3 = None
        for database in args.databases.split(","):
            print(f"[{database}]", file=sys.stderr, flush=True)
            figures: dict[str, Any] = {}
            for name, bench in (("throughput", throughput), ("dispatch_latency", dispatch_latency), ("api_calls", api_calls),
                                ("reference_protocol", reference_protocol), ("submit_and_list", submit_and_list),
                                ("claim_depth", claim_depth), ("idle_workers", idle_workers)):
                figures[name] = bench(database, sizes)
                print(f"  {name}: {json.dumps(figures[name])}", file=sys.stderr, flush=True)
            figures["transfer"] = transfers(database, sizes, s3)
            print(f"  transfer: {json.dumps(figures['transfer'])}", file=sys.stderr, flush=True)
            report["results"][database] = figures
    report["met"] = verdicts(report)
    text = json.dumps(report, indent=2, default=str)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
