"""A load test: concurrent clients submitting and querying while workers run the tasks.

    python benchmarks/load.py [--clients 50] [--seconds 60] [--workers 4] [--database sqlite|postgres]
                              [--output benchmarks/load.json]

Each client is its own HTTP client (its own connections) looping over a mix of what notebook users
do: submit a task, submit a small batch, list the group's recent tasks, read one of its own tasks,
list the workers, with a pause of 0.5 to 1.5 s between requests. After ``--seconds`` the clients
stop and every task they submitted must end. The report gives p50/p95/p99/max latency per request
kind, the errors (there must be none) and the tasks lost (there must be none)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from run import ADMIN, coordinator, percentile

from mito_lab.client.http import HttpSession, MitoError
from mito_lab.testing import stop_process
from mito_lab.wire import (
    BatchSubmitReq,
    BatchSubmitResp,
    LoginReq,
    LoginResp,
    SubmitTaskReq,
    SubmitTaskResp,
    TaskQueryResp,
    TaskSpec,
    TasksQueryReq,
    TasksQueryResp,
    WorkersQueryReq,
    WorkersQueryResp,
)

LABEL = "load-test"
MIX = {"submit": 15, "submit_batch": 2, "list_tasks": 40, "get_task": 33, "list_workers": 10}  # weights
BATCH = 5


class LoadClient:
    """One user at a notebook: its own connections, its own tasks."""

    def __init__(self, url: str, token: str, seed: int) -> None:
        self.session = HttpSession(url, token)
        self.random = random.Random(seed)
        self.mine: list[str] = []

    async def request(self, kind: str) -> None:
        task = SubmitTaskReq(task_spec=TaskSpec(args=["true"]), labels=[LABEL])
        if kind == "submit":
            self.mine.append(str((await self.session.call("POST", "tasks", task, SubmitTaskResp)).uuid))
        elif kind == "submit_batch":
            answer = await self.session.call("POST", "tasks/submit", BatchSubmitReq(tasks=[task] * BATCH), BatchSubmitResp)
            self.mine += [str(item.Ok.uuid) for item in answer.results if item.Ok]
        elif kind == "list_tasks":
            await self.session.call("POST", "tasks/query", TasksQueryReq(labels=[LABEL], limit=50), TasksQueryResp)
        elif kind == "get_task" and self.mine:
            await self.session.call("GET", f"tasks/{self.random.choice(self.mine)}", None, TaskQueryResp)
        elif kind == "list_workers":
            await self.session.call("POST", "workers/query", WorkersQueryReq(), WorkersQueryResp)

    async def run(self, until: float, latencies: dict[str, list[float]], errors: list[str]) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        try:
            while time.monotonic() < until:
                await asyncio.sleep(self.random.uniform(0.5, 1.5))
                kind = self.random.choices(kinds, weights)[0]
                if kind == "get_task" and not self.mine:
                    kind = "submit"
                started = time.perf_counter()
                try:
                    await self.request(kind)
                except MitoError as exc:
                    errors.append(f"{kind}: {exc}")
                    continue
                latencies[kind].append((time.perf_counter() - started) * 1000)
        finally:
            self.session.close()


async def committed(url: str, token: str) -> int:
    session = HttpSession(url, token)
    try:
        query = TasksQueryReq(labels=[LABEL], exit_status=f">={-(2**31)}", count=True)  # archived with a result
        return (await session.call("POST", "tasks/query", query, TasksQueryResp)).count
    finally:
        session.close()


async def load(url: str, clients: int, seconds: float, drain_seconds: float = 300) -> dict[str, Any]:
    login = HttpSession(url)
    try:
        token = (await login.call("POST", "login", LoginReq(username=ADMIN[0], password=ADMIN[1], retain=True), LoginResp)).token
    finally:
        login.close()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    users = [LoadClient(url, token, seed) for seed in range(clients)]
    started = time.monotonic()
    await asyncio.gather(*(user.run(started + seconds, latencies, errors) for user in users))
    elapsed = time.monotonic() - started
    submitted = sum(len(user.mine) for user in users)
    drained = time.monotonic()
    while (done := await committed(url, token)) < submitted and time.monotonic() - drained < drain_seconds:
        await asyncio.sleep(1)
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": sum(map(len, latencies.values())),
        "requests_per_s": round(sum(map(len, latencies.values())) / elapsed, 1),
        "latency_ms": {
            kind: {"count": len(values), "p50": round(percentile(values, 0.5), 1), "p95": round(percentile(values, 0.95), 1),
                   "p99": round(percentile(values, 0.99), 1), "max": round(max(values), 1)}
            for kind, values in sorted(latencies.items()) if values
        },
        "p99_ms_all": round(percentile([v for values in latencies.values() for v in values], 0.99), 1),
        "errors": errors,
        "tasks_submitted": submitted,
        "tasks_ended": done,
        "tasks_lost": submitted - done,
        "drain_s": round(time.monotonic() - drained, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/load.json"))
    args = parser.parse_args(argv)
    with coordinator(args.database) as platform:
        workers = [platform.worker(index) for index in range(args.workers)]
        try:
            report = {"database": args.database, "workers": args.workers, **asyncio.run(load(platform.url, args.clients, args.seconds))}
        finally:
            for worker in workers:
                stop_process(worker)
    text = json.dumps(report, indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(text)
    return 1 if report["errors"] or report["tasks_lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
