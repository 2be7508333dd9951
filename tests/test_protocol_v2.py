"""Worker protocol v2 (``POST /workers/exchange``): batches of reports and claims over HTTP as a
worker sends them, then real workers with slots and tasks taken ahead, and both protocols across
releases (the previous release's coordinator and worker, run from this repository's history)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import ADMIN, Platform, http
from test_dispatch import register, submit

from mito_lab.testing import running_release, wait_until

DONE = [
    {"ExecStates": ["ExecPending", "ExecSpawned", "ExecFinished"]}, "Finish",
    {"ExecStates": ["UploadResult", "UploadFinishedResult", "UploadResultFinished"]}, {"Commit": {"exit_status": 0}},
]


def exchange(platform: Platform, token: str, wait: float = 0, **body: Any) -> dict[str, Any]:
    answer = http("POST", f"{platform.url}/workers/exchange?wait={wait}", body, token=token)
    assert answer.status == 200, answer.body
    return answer.json


def submit_many(platform: Platform, count: int, **task: Any) -> list[str]:
    items = [{"task_spec": {"args": ["true"]}, **task} for _ in range(count)]
    answer = platform.api("POST", "/tasks/submit", {"tasks": items})
    assert answer.status == 200, answer.body
    return [item["Ok"]["uuid"] for item in answer.json["results"]]


def info(platform: Platform, uuid: str) -> dict[str, Any]:
    return platform.api("GET", f"/tasks/{uuid}").json["info"]


def test_one_exchange_takes_a_batch_in_order_and_reports_it_back(platform: Platform) -> None:
    token = register(platform)
    urgent = submit(platform, priority=5)
    queued = submit_many(platform, 40)
    taken = exchange(platform, token, want=8)["tasks"]
    # the queue is deep: the worker gets all it asked for, best first, FIFO within a priority
    assert [t["uuid"] for t in taken] == [urgent, *queued[:7]]
    assert all(info(platform, t["uuid"])["state"] == "Running" for t in taken)
    answer = exchange(platform, token, reports=[{"id": t["id"], "ops": DONE} for t in taken], want=0)
    assert answer == {"tasks": [], "refused": []}
    for task in taken:
        finished = info(platform, task["uuid"])
        assert (finished["state"], finished["exec_state"], finished["result"]) == ("Finished", "TaskCommitted", {"exit_status": 0, "msg": None})


def test_live_output_rides_in_the_exchange_ahead_of_the_outcome(platform: Platform) -> None:
    """A chunk of output alone leaves the task as it was; a retried chunk (an exchange sent again
    after a lost answer) is kept once; the last chunks go in the report that ends the task."""
    token = register(platform)
    [uuid] = submit_many(platform, 1)
    [task] = exchange(platform, token, want=1)["tasks"]
    first = {"Log": {"stream": "stdout", "offset": 0, "length": 6, "data": "hello\n"}}
    before = info(platform, uuid)
    assert exchange(platform, token, reports=[{"id": task["id"], "ops": [first]}])["refused"] == []
    assert info(platform, uuid) == before
    assert platform.api("GET", f"/tasks/{uuid}/logs").json["data"] == "hello\n"
    last = [{"Log": {"stream": "stdout", "offset": 6, "length": 6, "data": "world\n"}},
            {"Log": {"stream": "stderr", "offset": 0, "length": 5, "data": "oops\n"}}]
    assert exchange(platform, token, reports=[{"id": task["id"], "ops": [first, *last, *DONE]}])["refused"] == []
    assert info(platform, uuid)["state"] == "Finished"
    assert platform.api("GET", f"/tasks/{uuid}/logs").json["data"] == "hello\nworld\n"
    assert platform.api("GET", f"/tasks/{uuid}/logs?stream=stderr").json["data"] == "oops\n"
    # the reference's report route takes a chunk by the same rules: on an ended task, none
    late = http("POST", f"{platform.url}/workers/tasks", {"id": task["id"], "op": last[0]}, token=token)
    assert late.status == 404, late.body


def test_live_output_takes_the_report_route_where_the_coordinator_does_not_exchange_it(platform: Platform) -> None:
    """A coordinator of protocol v2 from before live output rode in the exchange answers a
    registration without ``exchanges_logs``: the worker sends each chunk on its own, as before."""
    from mito_lab.client.http import HttpSession
    from mito_lab.wire import LogChunk, WorkerTaskResp
    from mito_lab.worker.agent import BatchedReports, WorkerClient

    token = register(platform)
    [uuid] = submit_many(platform, 1)
    [task] = exchange(platform, token, want=1)["tasks"]

    async def ship() -> bool:
        session = HttpSession(platform.url, token=token)
        reports = BatchedReports(WorkerClient(session, asyncio.Event()))  # as registered: logs_in_exchange off
        try:
            chunk = LogChunk(stream="stdout", offset=0, length=6, data="hello\n")
            await reports.log(WorkerTaskResp.model_validate(task), chunk, last=True)  # (last: never waits on an exchange)
            return reports.waiting.is_set()
        finally:
            session.close()

    assert asyncio.run(ship()) is False  # nothing left for an exchange
    assert platform.api("GET", f"/tasks/{uuid}/logs").json["data"] == "hello\n"


def test_a_short_queue_is_handed_out_one_task_at_a_time(platform: Platform) -> None:
    token = register(platform)
    submit_many(platform, 3)
    assert len(exchange(platform, token, want=32)["tasks"]) == 1


def test_refused_reports_leave_the_others_applied(platform: Platform) -> None:
    token, other = register(platform), register(platform)
    submit_many(platform, 6)
    mine = exchange(platform, token, want=2)["tasks"]
    theirs = exchange(platform, other, want=1)["tasks"]
    answer = exchange(platform, token, want=0, reports=[
        {"id": mine[0]["id"], "ops": [{"ExecState": "ExecSpawned"}, {"Commit": {"exit_status": 0}}]},  # not ended yet
        {"id": theirs[0]["id"], "ops": ["Finish"]},  # another worker's
        {"id": mine[1]["id"], "ops": DONE},
    ])
    assert sorted((r["id"], r["status"]) for r in answer["refused"]) == sorted([(mine[0]["id"], 400), (theirs[0]["id"], 404)])
    assert "can not be marked as done" in next(r["msg"] for r in answer["refused"] if r["id"] == mine[0]["id"])
    assert info(platform, mine[0]["uuid"])["exec_state"] is None  # all of a refused report or nothing
    assert info(platform, theirs[0]["uuid"])["state"] == "Running"
    assert info(platform, mine[1]["uuid"])["state"] == "Finished"


def test_released_tasks_go_back_without_using_an_attempt(platform: Platform) -> None:
    token = register(platform)
    submit_many(platform, 20)
    first, second = exchange(platform, token, want=2)["tasks"]
    answer = exchange(platform, token, want=0, reports=[
        {"id": first["id"], "ops": ["Release"]},
        {"id": second["id"], "ops": [{"ExecState": "ExecPending"}, "Release"]},  # it started: too late
    ])
    assert [(r["id"], r["status"]) for r in answer["refused"]] == [(second["id"], 400)]
    released = info(platform, first["uuid"])
    assert (released["state"], released["attempts"]) == ("Ready", 0)


def test_tasks_taken_in_a_lost_answer_are_handed_over_again(platform: Platform) -> None:
    token = register(platform)
    submit_many(platform, 20)
    lost = exchange(platform, token, want=4)["tasks"]  # as if this answer never arrived
    started = lost[0]
    exchange(platform, token, reports=[{"id": started["id"], "ops": [{"ExecState": "ExecPending"}]}])
    again = exchange(platform, token, want=0, holding=[started["id"]])["tasks"]
    assert [t["id"] for t in again] == [t["id"] for t in lost[1:]]
    assert {info(platform, t["uuid"])["attempts"] for t in lost} == {1}


def test_a_lost_worker_requeues_every_task_it_held(platform: Platform) -> None:
    token = register(platform)
    submit_many(platform, 20)
    held = exchange(platform, token, want=6)["tasks"]
    worker = platform.api("POST", "/workers/query", {}).json["workers"][0]["worker_id"]
    assert platform.api("DELETE", f"/workers/{worker}?op=force").status == 200
    assert {info(platform, t["uuid"])["state"] for t in held} == {"Ready"}
    assert http("POST", f"{platform.url}/workers/exchange", {"want": 1}, token=token).status == 401


def test_the_exchange_long_polls_until_a_task_is_ready(platform: Platform) -> None:
    token = register(platform)
    started = time.monotonic()
    assert exchange(platform, token, wait=0.5, want=4) == {"tasks": [], "refused": []}
    assert time.monotonic() - started >= 0.5
    submit(platform)
    assert len(exchange(platform, token, wait=30, want=4)["tasks"]) == 1


def test_bad_exchanges_are_refused(platform: Platform) -> None:
    token = register(platform)
    for body, words in (
        ({"want": -1}, "want"), ({"want": 10_000}, "want"), ({"want": True}, "want"),
        ({"reports": [{"id": 1, "ops": []}]}, "ops"), ({"reports": [{"id": 1, "ops": ["Explode"]}]}, "ops"),
    ):
        answer = http("POST", f"{platform.url}/workers/exchange", body, token=token)
        assert answer.status == 400 and words in answer.json["msg"], (body, answer.body)
    assert platform.api("POST", "/workers/exchange", {"want": 1}).status == 401  # a user token


# --- real workers ---------------------------------------------------------------------------------


def ledger_task(ledger: Path, seconds: float) -> dict[str, Any]:
    """A task that writes its start and end times to ``ledger``."""
    script = f'echo "start $MITO_TASK_UUID $(date +%s.%N)" >> {ledger}; sleep {seconds}; echo "end $MITO_TASK_UUID $(date +%s.%N)" >> {ledger}'
    return {"task_spec": {"args": ["sh", "-c", script]}}


def test_a_worker_with_slots_runs_tasks_side_by_side(platform: Platform, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    platform.start_worker("--slots", "3")
    answer = platform.api("POST", "/tasks/submit", {"tasks": [ledger_task(ledger, 2) for _ in range(3)]})
    uuids = [item["Ok"]["uuid"] for item in answer.json["results"]]
    for uuid in uuids:
        assert platform.wait_task(uuid, timeout=60)["result"] == {"exit_status": 0, "msg": None}
    times = {(kind, uuid): float(at) for kind, uuid, at in (line.split() for line in ledger.read_text().splitlines())}
    assert max(times["start", u] for u in uuids) < min(times["end", u] for u in uuids)  # all three ran at once


def test_a_worker_takes_short_tasks_ahead_and_a_cancelled_one_never_runs(platform: Platform, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    platform.start_worker()
    wait_until(lambda: platform.api("POST", "/workers/query", {"count": True}).json["count"] == 1, "the worker")
    answer = platform.api("POST", "/tasks/submit", {"tasks": [ledger_task(ledger, 0.2) for _ in range(30)]})
    uuids = [item["Ok"]["uuid"] for item in answer.json["results"]]
    wait_until(lambda: ledger.exists(), "the first task to start")
    running = platform.api("POST", "/tasks/query", {"states": ["Running"]}).json["tasks"]
    assert len(running) > 1  # taken ahead: Running on the coordinator, waiting for the slot here
    last = max(running, key=lambda t: t["task_id"])["uuid"]
    assert platform.api("DELETE", f"/tasks/{last}").status == 200
    assert platform.wait_task(last, timeout=30)["result"] == {"exit_status": 0, "msg": "UserCancellation"}
    for uuid in uuids:
        platform.wait_task(uuid, timeout=60)
    assert f"start {last}" not in ledger.read_text()
    assert ledger.read_text().count("end ") == 29


def test_a_slot_runs_its_next_task_while_the_last_one_packs_its_outputs(platform: Platform, tmp_path: Path) -> None:
    """One slot: the second task starts while the first one's 30 MB of results are still being
    packed, and each task's output stays its own though both were in the slot at once."""
    started = tmp_path / "started"
    platform.start_worker()
    noisy = {"args": ["sh", "-c", 'echo first; head -c 30000000 /dev/urandom > "$MITO_RESULT_DIR/noise"'], "terminal_output": True}
    quick = {"args": ["sh", "-c", f"echo second; date +%s.%N > {started}"], "terminal_output": True}
    answer = platform.api("POST", "/tasks/submit", {"tasks": [{"task_spec": noisy}, {"task_spec": quick}]})
    first, second = (item["Ok"]["uuid"] for item in answer.json["results"])
    committed = datetime.fromisoformat(platform.wait_task(first, timeout=120)["updated_at"]).timestamp()
    assert platform.wait_task(second)["result"] == {"exit_status": 0, "msg": None}
    # packing 30 MB that do not compress takes a second or more: the second task ran meanwhile
    assert float(started.read_text()) < committed - 0.3
    assert platform.mito("get", "logs", first).stdout == "first\n"
    assert platform.mito("get", "logs", second).stdout == "second\n"
    assert [a["content_type"] for a in platform.api("GET", f"/tasks/{first}").json["artifacts"]].count("result") == 1



def test_after_a_long_task_the_slot_takes_its_next_task_while_the_last_one_uploads(platform: Platform, tmp_path: Path) -> None:
    """Long tasks are not taken ahead, so the next one is asked for once the last one's process
    has ended, not once its outputs are uploaded: it runs while they are."""
    started = tmp_path / "started"
    platform.start_worker()
    [warm_up] = submit_many(platform, 1, task_spec={"args": ["sleep", "1.2"]})  # the worker now takes long tasks one by one
    platform.wait_task(warm_up, timeout=60)
    noisy = {"args": ["sh", "-c", 'head -c 30000000 /dev/urandom > "$MITO_RESULT_DIR/noise"']}
    quick = {"args": ["sh", "-c", f"date +%s.%N > {started}"]}
    answer = platform.api("POST", "/tasks/submit", {"tasks": [{"task_spec": noisy}, {"task_spec": quick}]})
    first, second = (item["Ok"]["uuid"] for item in answer.json["results"])
    committed = datetime.fromisoformat(platform.wait_task(first, timeout=120)["updated_at"]).timestamp()
    assert platform.wait_task(second)["result"] == {"exit_status": 0, "msg": None}
    assert float(started.read_text()) < committed - 0.3


# --- across releases ------------------------------------------------------------------------------


def test_a_new_worker_speaks_the_reference_protocol_to_an_old_coordinator(old_coordinator: Platform) -> None:
    assert http("POST", f"{old_coordinator.url}/workers/exchange", {}).status == 404  # it really is the old one
    old_coordinator.start_worker("--slots", "2")
    uuids = submit_many(old_coordinator, 5)
    for uuid in uuids:
        assert old_coordinator.wait_task(uuid)["result"] == {"exit_status": 0, "msg": None}
    log = (old_coordinator.home / "worker-0.log").read_text()
    assert "no worker protocol v2" in log and "--slots 2 is not used" in log


def test_an_old_worker_works_with_a_new_coordinator(platform: Platform, old_release: Path) -> None:
    log = (platform.home / "old-worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "mito_lab", "worker", "-c", platform.url, "-u", ADMIN[0], "--polling-interval", "20s"],
        env=running_release(platform.env(MITO_PASSWORD=ADMIN[1]), old_release), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=platform.home,
    )
    log.close()
    platform.workers.append(worker)
    uuids = submit_many(platform, 5)
    for uuid in uuids:
        finished = platform.wait_task(uuid)
        assert (finished["result"], finished["exec_state"]) == ({"exit_status": 0, "msg": None}, "TaskCommitted")
    assert f"task {uuids[0]}: true" in (platform.home / "old-worker.log").read_text()  # the old worker's own log line


def test_a_task_handed_back_and_taken_again_before_the_release_is_answered_runs(tmp_path: Path) -> None:
    """A worker hands back a task taken ahead; its own long poll takes the task again (it is Ready
    once the release is applied) before the release's answer arrives. The worker must run it, not
    take it for a task it already holds (it stayed Running, never run, until the worker died).
    Handed over again before the release left (a retried exchange), the task is kept and the
    release withdrawn: sent later, it would take the task away from under its run."""
    from mito_lab.client.http import HttpSession
    from mito_lab.config import WorkerConfig
    from mito_lab.wire import ExchangeResp, TaskSpec, WorkerTaskResp
    from mito_lab.worker.agent import Agent, BatchedReports, WorkerClient

    async def scenario() -> tuple[list[int], list[int], list[int], list[int]]:
        session = HttpSession("http://127.0.0.1:9")  # never called: the exchanges are played below
        agent = Agent(WorkerConfig(), WorkerClient(session, asyncio.Event()), tmp_path)
        reports = agent.reports
        assert isinstance(reports, BatchedReports)
        try:
            agent._free_slots.clear()  # every slot busy with a long task
            task = WorkerTaskResp(id=7, uuid=uuid.uuid4(), timeout="1h", spec=TaskSpec(args=["true"]))
            agent._receive(ExchangeResp(tasks=[task]))  # taken ahead
            agent.hand_back_oldest()
            assert not agent.held and agent._holding() == [task.id]  # a retried exchange must not get it back
            agent._receive(ExchangeResp(tasks=[task]))  # handed over again before the release left
            kept = [held.id for held, _ in agent.held]
            withdrawn = [report.id for report in reports.take()]
            agent.hand_back_oldest()
            sent = [report.id for report in reports.take()]  # the release is on its way
            agent._receive(ExchangeResp(tasks=[task]))  # the long poll's answer: taken again
            return kept + withdrawn, sent, [held.id for held, _ in agent.held], agent._holding()
        finally:
            session.close()

    assert asyncio.run(scenario()) == ([7], [7], [7], [7])


def test_an_exchange_carries_a_bounded_share_of_live_output_and_the_rest_follows_in_order(tmp_path: Path) -> None:
    from mito_lab.client.http import HttpSession
    from mito_lab.wire import CommitOp, LogChunk, LogOp, TaskResultSpec, TaskSpec, WorkerTaskResp
    from mito_lab.worker.agent import MAX_EXCHANGE_LOG_OPS, BatchedReports, WorkerClient

    async def scenario() -> list[list[tuple[int, list[str]]]]:
        session = HttpSession("http://127.0.0.1:9")  # never called
        reports = BatchedReports(WorkerClient(session, asyncio.Event()))
        reports.logs_in_exchange = True
        try:
            for task_id in (1, 2):
                task = WorkerTaskResp(id=task_id, uuid=uuid.uuid4(), timeout="1h", spec=TaskSpec(args=["true"]))
                for index in range(MAX_EXCHANGE_LOG_OPS):
                    await reports.log(task, LogChunk(stream="stdout", offset=index, length=1, data="x"), last=True)
                await reports.outcome(task, "Finish")
                await reports.commit(task, TaskResultSpec(exit_status=0))
            exchanges = []
            while reports.waiting.is_set():
                exchanges.append([
                    (report.id, ["Log" if isinstance(op, LogOp) else "Commit" if isinstance(op, CommitOp) else op for op in report.ops])
                    for report in reports.take()
                ])
            return exchanges
        finally:
            session.close()

    chunks = ["Log"] * MAX_EXCHANGE_LOG_OPS
    # the first task's output fills the first exchange; the second's waits, with its outcome behind it
    assert asyncio.run(scenario()) == [[(1, [*chunks, "Finish", "Commit"])], [(2, [*chunks, "Finish", "Commit"])]]


def _waiting(platform: Platform, token: str, found: dict[str, Any], name: str) -> threading.Thread:
    """A worker long-polling for one task (60 s: one that returns sooner got a task)."""
    thread = threading.Thread(target=lambda: found.update({name: exchange(platform, token, wait=60, want=1)["tasks"]}))
    thread.start()
    return thread


def test_a_new_task_goes_to_the_longest_waiting_worker_that_can_run_it(platform: Platform) -> None:
    plain_first, gpu, plain_second = register(platform), register(platform, tags=["gpu"]), register(platform)
    found: dict[str, Any] = {}
    waiting = {}
    for name, token in (("plain_first", plain_first), ("gpu", gpu), ("plain_second", plain_second)):
        waiting[name] = _waiting(platform, token, found, name)
        time.sleep(0.3)  # in this order
    tagged = submit(platform, tags=["gpu"])
    waiting["gpu"].join(timeout=30)
    assert [t["uuid"] for t in found["gpu"]] == [tagged]
    time.sleep(0.5)
    assert waiting["plain_first"].is_alive() and waiting["plain_second"].is_alive()  # neither can run it
    untagged = submit(platform)
    waiting["plain_first"].join(timeout=30)
    assert [t["uuid"] for t in found["plain_first"]] == [untagged]
    assert waiting["plain_second"].is_alive()
    last = submit(platform)
    waiting["plain_second"].join(timeout=30)
    assert [t["uuid"] for t in found["plain_second"]] == [last]


def test_a_batch_wakes_every_waiting_worker_and_each_gets_a_task(platform: Platform) -> None:
    """A batch of a few tasks is offered one to each waiting worker; a large one (more than an
    announcement offers) wakes them all to look."""
    for count in (3, 100):
        tokens = [register(platform) for _ in range(3)]
        found: dict[str, Any] = {}
        threads = [_waiting(platform, token, found, str(index)) for index, token in enumerate(tokens)]
        time.sleep(0.5)
        submitted = set(submit_many(platform, count))
        for thread in threads:
            thread.join(timeout=30)
        taken = [task["uuid"] for tasks in found.values() for task in tasks]
        assert len(found) == 3 and len(taken) == 3 and set(taken) <= submitted, (count, found)
        platform.api("POST", "/tasks/cancel", {"states": ["Ready"]})
