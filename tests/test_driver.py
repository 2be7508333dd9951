"""PostgreSQL's hot paths on asyncpg's prepared statements (``db/driver.py``): the same Core
statements must give what SQLAlchemy's engine gives, on a real server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import dialect as postgresql_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from mito_lab.server.db.engine import Database, after_commit, after_rollback
from mito_lab.server.db.models import Group, GroupWorker, Task, TaskLabel, TaskTag, User, UserGroup, Worker, detached
from mito_lab.server.errors import DatabaseConnectionLost
from mito_lab.server.services.dispatch import _REPORTED, _STILL_HOLDING, _candidates, _claim
from mito_lab.server.services.tasks import _SUBMIT_IN_ONE_STATEMENT, _one_statement_values
from mito_lab.server.services.users import Caller
from mito_lab.wire import Role, SubmitTaskReq, TaskState

_tasks = Task.__table__


def run(pg_url: str, scenario: Callable[[Database], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        db = Database(pg_url)
        await db.migrate()
        try:
            return await scenario(db)
        finally:
            await db.close()

    return asyncio.run(main())


async def seed(db: Database, count: int, tags: dict[int, list[str]] | None = None) -> tuple[int, list[int]]:
    """A user, a group and ``count`` Ready tasks in it (tags by index); the group's id and the tasks'."""
    async with db.transaction() as connection:
        user = await connection.scalar(User.__table__.insert().values(username="ada", encrypted_password="x").returning(User.id))
        group = await connection.scalar(Group.__table__.insert().values(group_name="lab", creator_id=user).returning(Group.id))
        ids = []
        for index in range(count):
            ids.append(await connection.scalar(_tasks.insert().returning(_tasks.c.id), {
                "uuid": uuid.uuid4(), "creator_id": user, "group_id": group, "task_id": index + 1, "state": TaskState.Ready,
                "timeout": 60, "priority": index % 3, "spec": {"args": ["true"], "envs": {"N": str(index)}},
                "tags": tags.get(index, []) if tags else [],
            }))
        for index, marks in (tags or {}).items():
            for tag in marks:
                await connection.execute(TaskTag.__table__.insert(), {"task_id": ids[index], "tag": tag})
    return group, ids


def test_statements_read_as_sqlalchemy_reads_them(pg_url: str) -> None:
    """Lists bound to IN and NOT IN (empty ones too), enums, UUIDs, JSON and times."""

    async def scenario(db: Database) -> None:
        group, ids = await seed(db, 12, tags={0: ["gpu"], 5: ["gpu", "big"]})
        candidates = _candidates(1)
        for tags in ([], ["gpu"], ["gpu", "big", "x"]):
            parameters = {"tags": tags, "limit": 8, "group_0": group}
            async with db.statements() as connection:
                driven = (await connection.scalars(candidates, parameters)).all()
            async with db.engine.connect() as connection:
                expected = (await connection.scalars(candidates, parameters)).all()
            assert driven == expected and driven, tags
        read = sa.select(_tasks).where(_tasks.c.id.in_(sa.bindparam("ids", expanding=True))).order_by(_tasks.c.id)
        async with db.statements() as connection:
            driven = (await connection.execute(read, {"ids": ids})).all()
            assert (await connection.execute(read, {"ids": []})).all() == []
        async with db.engine.connect() as connection:
            expected = (await connection.execute(read, {"ids": ids})).all()
        assert [row._asdict() for row in driven] == [row._asdict() for row in expected]
        first = driven[0]
        assert first.state is TaskState.Ready and isinstance(first.uuid, uuid.UUID)
        assert first.spec == {"args": ["true"], "envs": {"N": "0"}} and first.tags == ["gpu"]
        assert first.created_at.tzinfo is not None

    run(pg_url, scenario)


def test_a_claim_writes_what_it_returns_and_column_defaults_apply(pg_url: str) -> None:
    async def scenario(db: Database) -> None:
        group, ids = await seed(db, 4)
        async with db.transaction() as connection:  # defaults of the columns not given: tags, state, times
            creator = await connection.scalar(sa.select(User.id))
            worker = await connection.scalar(Worker.__table__.insert().values(worker_id=uuid.uuid4(), creator_id=creator).returning(Worker.id))
            await connection.execute(GroupWorker.__table__.insert().values(group_id=group, worker_id=worker, role=Role.Write))
        moment = datetime.now(timezone.utc)
        async with db.statements() as connection:
            claimed = (await connection.execute(_claim(for_update=True), {"candidates": ids, "take": 2, "worker_pk": worker, "moment": moment})).all()
            assert len(claimed) == 2 and all(row.state is TaskState.Running and row.attempts == 1 for row in claimed)
            # an UPDATE that does not set updated_at gets the column's onupdate, as through SQLAlchemy
            before = await connection.scalar(sa.select(Group.updated_at).where(Group.id == group))
            result = await connection.execute(Group.__table__.update().where(Group.id == group).values(storage_used=5))
            assert result.rowcount == 1
            after = await connection.scalar(sa.select(Group.updated_at).where(Group.id == group))
            assert after > before
            # many parameter sets: one statement each
            rename = _tasks.update().where(_tasks.c.id == sa.bindparam("row_id")).values(priority=sa.bindparam("new_priority"))
            await connection.execute(rename, [{"row_id": row_id, "new_priority": 9} for row_id in ids])
            assert set((await connection.scalars(sa.select(_tasks.c.priority))).all()) == {9}
        async with db.engine.connect() as connection:
            states = dict((await connection.execute(sa.select(_tasks.c.id, _tasks.c.state))).all())
        assert sorted(row.id for row in claimed) == sorted(i for i, state in states.items() if state is TaskState.Running)

    run(pg_url, scenario)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_transaction_commits_only_at_its_end_and_rolls_back_on_error(database: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``transaction()`` on either database: its callbacks run after the commit, or after the
    rollback, never both (a submit hands a task over on the one and puts the worker back on the
    other)."""
    url = f"sqlite:///{tmp_path / 'mito.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")

    async def scenario(db: Database) -> None:
        group, ids = await seed(db, 1)
        priority = sa.select(_tasks.c.priority).where(_tasks.c.id == ids[0])
        called: list[str] = []
        with pytest.raises(RuntimeError):
            async with db.transaction() as connection:
                await connection.execute(_tasks.update().where(_tasks.c.id == ids[0]).values(priority=7))
                after_commit(connection, lambda: called.append("committed"))
                after_rollback(connection, lambda: called.append("rolled back"))
                raise RuntimeError("the rule refused")
        assert called == ["rolled back"]
        called.clear()
        async with db.transaction() as connection:
            await connection.execute(_tasks.update().where(_tasks.c.id == ids[0]).values(priority=8))
            after_commit(connection, lambda: called.append("committed"))
            after_rollback(connection, lambda: called.append("rolled back"))
            async with db.lookup() as other:  # another connection does not see it yet
                assert await other.scalar(priority) == 0
            assert called == []
        assert called == ["committed"]
        async with db.lookup() as connection:
            assert await connection.scalar(priority) == 8

    run(url, scenario)


def test_connections_the_server_ended_answer_lost_then_the_pool_is_renewed(pg_url: str) -> None:
    async def scenario(db: Database) -> None:
        await seed(db, 1)
        count = sa.select(sa.func.count()).select_from(_tasks)
        async with db.lookup() as first, db.lookup() as second:  # two pooled connections
            assert await first.scalar(count) == await second.scalar(count) == 1
        killer = await asyncpg.connect(pg_url)
        try:
            ended = await killer.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await killer.close()
        assert len(ended) >= 2
        await asyncio.sleep(0.1)
        answers = []
        for _ in range(3):
            try:
                async with db.lookup() as connection:
                    answers.append(await connection.scalar(count))
            except DatabaseConnectionLost:
                answers.append("lost")
        assert answers[-1] == 1 and answers.count("lost") <= 1, answers  # one failure renews them all

    run(pg_url, scenario)


def test_shapes_are_compiled_once(pg_url: str) -> None:
    """A statement built anew with other values (housekeeping's) reuses its shape's compiled SQL."""

    async def scenario(db: Database) -> None:
        await seed(db, 3)
        shapes = db._driver._compiled  # noqa: SLF001 - what the test is about
        compiled = []
        async with db.lookup() as connection:
            for days in (1, 2, 3):
                since = datetime.now(timezone.utc) - timedelta(days=days)
                assert await connection.scalar(sa.select(sa.func.count()).where(_tasks.c.created_at > since)) == 3
                compiled.append(len(shapes))
        assert compiled[0] == compiled[1] == compiled[2]

    run(pg_url, scenario)


def test_a_plain_submit_is_one_statement_that_checks_the_caller_and_the_claimant(pg_url: str) -> None:
    """PostgreSQL's submit in one statement: the caller's token and role checked, the task id
    taken, the task created (taken by a waiting worker that may take it), its tags and labels."""

    async def scenario(db: Database) -> None:
        group, _ = await seed(db, 0)
        async with db.transaction() as connection:
            user = await connection.scalar(sa.select(User.id))
            await connection.execute(User.__table__.update().values(auth_signature=7))
            await connection.execute(UserGroup.__table__.insert().values(user_id=user, group_id=group, role=Role.Write))
            serving, other = [
                await connection.scalar(Worker.__table__.insert().values(worker_id=uuid.uuid4(), creator_id=user).returning(Worker.id))
                for _ in range(2)
            ]
            await connection.execute(GroupWorker.__table__.insert().values(group_id=group, worker_id=serving, role=Role.Write))
        request = SubmitTaskReq(task_spec={"args": ["true"]}, group_name="lab", tags=["gpu", "big"], labels=["sweep"])

        async def submit(signature: int, claimant: int | None) -> Any:
            caller = Caller(detached(User, {"id": user, "username": "ada"}), signature)
            async with db.statements() as connection:
                return (await connection.execute(_SUBMIT_IN_ONE_STATEMENT, _one_statement_values(caller, request, "lab", uuid.uuid4(), claimant))).first()

        assert await submit(8, None) is None  # a signature no longer the user's: nothing is written
        taken = await submit(7, serving)
        assert taken.state is TaskState.Running and (taken.task_id, taken.assigned_worker_id, taken.attempts) == (1, serving, 1)
        left = await submit(7, other)  # a worker that does not serve the group takes nothing
        assert left.state is TaskState.Ready and (left.task_id, left.assigned_worker_id, left.attempts, left.started_at) == (2, None, 0, None)
        async with db.statements() as connection:
            assert await connection.scalar(sa.select(Group.task_count).where(Group.id == group)) == 2
            tags = (await connection.execute(sa.select(TaskTag.task_id, TaskTag.tag).order_by(TaskTag.task_id, TaskTag.tag))).all()
            assert [tuple(row) for row in tags] == [(taken.id, "big"), (taken.id, "gpu"), (left.id, "big"), (left.id, "gpu")]
            assert (await connection.scalars(sa.select(TaskLabel.task_id).where(TaskLabel.label == "sweep"))).all() == [taken.id, left.id]
            stored = (await connection.execute(sa.select(_tasks).where(_tasks.c.id == taken.id))).one()
        assert stored.spec == request.task_spec.model_dump(mode="json") and stored.tags == ["gpu", "big"] and stored.creator_id == user

    run(pg_url, scenario)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_workers_held_tasks_are_found_without_reading_its_history(database: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Every report reads the tasks its worker holds (its unarchived ones): a worker that has run
    thousands of tasks must not have each of them read again for each report. The statistics are
    those of a bulk submit (the coordinator analyzes the table after one): no task assigned yet."""
    history = 2000
    url = f"sqlite:///{tmp_path / 'mito.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")

    async def scenario(db: Database) -> tuple[int, int]:
        group, ids = await seed(db, history + 1)
        async with db.transaction() as connection:
            await connection.execute(sa.text("ANALYZE"))
        async with db.transaction() as connection:
            user = await connection.scalar(sa.select(User.id))
            worker = await connection.scalar(Worker.__table__.insert().values(worker_id=uuid.uuid4(), creator_id=user).returning(Worker.id))
            await connection.execute(_tasks.update().values(state=TaskState.Finished, assigned_worker_id=worker, archived_at=sa.func.now()))
            await connection.execute(_tasks.update().where(_tasks.c.id == ids[-1]).values(state=TaskState.Running, archived_at=None))
        return worker, ids[-1]

    worker, held = run(url, scenario)
    dialect = sqlite_dialect() if database == "sqlite" else postgresql_dialect()
    statements = [
        _STILL_HOLDING.params(worker_pk=worker),
        _REPORTED.params(ids=[held], worker_pk=worker),
    ]
    sql = [str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})) for statement in statements]
    if database == "sqlite":
        with sqlite3.connect(tmp_path / "mito.db") as connection:
            plans = [" ".join(row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {text}")) for text in sql]
        # each reads the one task off an index that holds the archive moment, or by its id
        assert "ix_tasks_held (assigned_worker_id=? AND archived_at=?)" in plans[0], plans[0]
        assert "INTEGER PRIMARY KEY (rowid=?)" in plans[1] or "archived_at=?" in plans[1], plans[1]
        return

    async def rows_read() -> list[int]:
        connection = await asyncpg.connect(url)
        try:
            counts = []
            for text in sql:
                [plan] = json.loads(await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {text}"))
                nodes, read = [plan["Plan"]], 0
                while nodes:
                    node = nodes.pop()
                    if "Scan" in node["Node Type"]:
                        read += node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
                    nodes += node.get("Plans", [])
                counts.append(read)
            return counts
        finally:
            await connection.close()

    assert all(read <= 2 for read in asyncio.run(rows_read())), "a worker's history was read"
