"""Database engine: one code path for embedded SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from mito_lab.server.db.driver import DriverConnection, DriverStatements

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_ID = 0x6D69746F  # "mito": serialises migrations of coordinators starting together
_AFTER_COMMIT = "mito_after_commit"
_AFTER_ROLLBACK = "mito_after_rollback"
# PostgreSQL's statistics of a table are refreshed after bulk loads at most this often
STATISTICS_SECONDS = 5.0
DRIVER_POOL_SIZE = 10  # PostgreSQL connections of the hot paths (``transaction``, ``statements``)

log = logging.getLogger(__name__)
# JSON columns (specs, tags, labels) through orjson: a 10,000-task batch or a 100,000-row listing
# encodes or decodes three values per task, several times faster than with the json module.
JSON_CODEC: dict[str, Any] = {"json_serializer": lambda value: orjson.dumps(value).decode(), "json_deserializer": orjson.loads}


def async_url(url: str) -> str:
    """Map user-facing URLs (``postgres://``, ``sqlite:///``) onto the async drivers."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


class Database:
    """The async engine plus the session helpers every service uses.

    SQLite allows one writer at a time; ``write()`` serialises writers inside this process (the
    only one that opens the embedded database) so that they queue instead of failing with
    "database is locked". PostgreSQL needs no such lock.
    """

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_async_engine(self.url, connect_args={"timeout": 30}, **JSON_CODEC)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # the hot path's connection, used from the event loop (see ``transaction``)
            self._loop_engine = sa.create_engine(self.url.replace("sqlite+aiosqlite:", "sqlite:", 1), connect_args={"timeout": 5}, **JSON_CODEC)
            event.listen(self._loop_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(self.url, pool_size=10, max_overflow=20, **JSON_CODEC)
            self._driver = DriverStatements(self.engine, size=DRIVER_POOL_SIZE)  # see ``transaction``
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._refreshing: dict[str, bool] = {}  # table -> more bulk loads since the last ANALYZE
        self._analyzing: set[asyncio.Task[None]] = set()

    def bulk_loaded(self, table: sa.Table) -> None:
        """Refresh PostgreSQL's statistics of ``table`` in the background after a bulk load, and
        again STATISTICS_SECONDS later if more loads came meanwhile. Until autovacuum gets to it,
        which may take a minute, the planner takes the table for as small as it was: a claim
        among 20,000 new tasks then scanned every Ready one (+3 ms) instead of reading its few
        candidates by key."""
        if self.is_sqlite:
            return
        if table.name in self._refreshing:  # a refresh is running or resting: it looks again
            self._refreshing[table.name] = True
            return
        self._refreshing[table.name] = False
        task = asyncio.create_task(self._refresh_statistics(table.name))
        self._analyzing.add(task)
        task.add_done_callback(self._analyzing.discard)

    async def _refresh_statistics(self, name: str) -> None:
        try:
            while True:
                async with self.engine.connect() as connection:
                    await connection.execute(sa.text(f'ANALYZE "{name}"'))
                    await connection.commit()
                await asyncio.sleep(STATISTICS_SECONDS)
                if not self._refreshing[name]:
                    return
                self._refreshing[name] = False
        except Exception:  # statistics are an optimisation: autovacuum refreshes them anyway
            log.exception("refreshing the statistics of %s failed", name)
        finally:
            del self._refreshing[name]

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @contextlib.asynccontextmanager
    async def lookup(self) -> AsyncIterator[Statements]:
        """A Core connection for a few reads by key, as every request's authentication makes, each
        standing alone. On SQLite they run on the loop's own connections (tens of microseconds; a
        WAL reader never waits for the writers' lock), where a read through aiosqlite costs a
        hand-off to its thread and back; on PostgreSQL on asyncpg's prepared statements, outside
        a transaction (see ``statements``). Listings, which may read for long, use ``read``."""
        if self._write_lock is None:
            async with self._driver.connection(transaction=False) as connection:
                yield connection
            return
        with self._loop_engine.connect() as connection:
            yield LoopConnection(connection)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success and rolled back on error. Callbacks
        registered with ``after_commit`` run once the commit succeeded. On SQLite it is an ORM
        session on the loop's own connection (see ``transaction``), behind ``AsyncSession``'s
        methods: a submit's half-dozen statements then cost tens of microseconds each instead
        of a hand-off to aiosqlite's thread and back."""
        if self._write_lock is None:
            async with self.sessions() as session:
                async with session.begin():
                    yield session
                for callback in session.info.pop(_AFTER_COMMIT, []):
                    callback()
            return
        async with self._write_lock:
            with Session(self._loop_engine, expire_on_commit=False) as sync_session, sync_session.begin():
                loop_session = LoopSession(sync_session)
                yield loop_session  # type: ignore[misc]  # AsyncSession's methods, as the services use them
            for callback in sync_session.info.pop(_AFTER_COMMIT, []):
                callback()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        """A Core connection in a transaction, for the hot paths where the ORM's unit of work costs
        more than the rule it serves. On SQLite it is a synchronous connection used right on the
        event loop: a statement there costs tens of microseconds, where aiosqlite hands each one
        to its thread and back. It cannot stall the loop on a lock: it holds the writers' lock of
        this process (the only one that opens the embedded database), and WAL readers never block
        a writer. On PostgreSQL the statements run as asyncpg's prepared statements, outside
        SQLAlchemy's engine (``driver.py``). Callbacks registered with ``after_commit`` run once
        the commit succeeded, those registered with ``after_rollback`` if it did not."""
        rolled_back: list[Callable[[], None]] = []
        try:
            if self._write_lock is None:
                async with self._driver.connection(transaction=True) as connection:
                    rolled_back = connection.info.setdefault(_AFTER_ROLLBACK, [])
                    yield connection
            else:
                async with self._write_lock:
                    with self._loop_engine.begin() as sync_connection:
                        connection = LoopConnection(sync_connection)
                        rolled_back = connection.info.setdefault(_AFTER_ROLLBACK, [])
                        yield connection
        except BaseException:
            for callback in rolled_back:
                callback()
            raise
        for callback in connection.info.pop(_AFTER_COMMIT, []):
            callback()

    @contextlib.asynccontextmanager
    async def statements(self) -> AsyncIterator[Statements]:
        """A Core connection for statements that each stand alone (a read by key, a claim that
        checks its own conditions as it updates): on PostgreSQL each commits by itself, with no
        BEGIN before and COMMIT after (two round trips to the server, as many as the statement
        itself). On SQLite it is ``transaction``, whose BEGIN and COMMIT cost microseconds."""
        if self._write_lock is None:
            async with self._driver.connection(transaction=False) as connection:
                yield connection
            for callback in connection.info.pop(_AFTER_COMMIT, []):
                callback()
            return
        async with self.transaction() as connection:
            yield connection

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (alembic), once even if several coordinators start."""
        async with self.engine.connect() as connection:
            if not self.is_sqlite:
                await connection.execute(sa.text(f"SELECT pg_advisory_lock({_MIGRATION_LOCK_ID})"))
            try:
                await connection.run_sync(_upgrade)
                await connection.commit()
            finally:
                if not self.is_sqlite:
                    await connection.execute(sa.text(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK_ID})"))
                    await connection.commit()

    async def close(self) -> None:
        for task in self._analyzing:
            task.cancel()
        await asyncio.gather(*self._analyzing, return_exceptions=True)
        await self.engine.dispose()
        if self.is_sqlite:
            self._loop_engine.dispose()
        else:
            await self._driver.close()


class LoopConnection:
    """A synchronous connection behind ``AsyncConnection``'s methods, so that one hot-path code
    serves SQLite (on the loop) and PostgreSQL (asyncpg)."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection
        self.info: dict[str, Any] = {}  # as a session's (``after_commit``)

    @property
    def dialect(self) -> sa.Dialect:
        return self._connection.dialect

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> sa.CursorResult[Any]:
        return self._connection.execute(statement, parameters)

    async def scalars(self, statement: sa.Executable, parameters: Any = None) -> sa.ScalarResult[Any]:
        return self._connection.scalars(statement, parameters)

    async def scalar(self, statement: sa.Executable, parameters: Any = None) -> Any:
        return self._connection.scalar(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> sa.CursorResult[Any]:
        return self._connection.exec_driver_sql(statement, parameters)


Statements = LoopConnection | DriverConnection
"""What ``transaction`` and ``statements`` yield: Core statements, run on the loop (SQLite) or on
asyncpg's prepared statements (PostgreSQL)."""


class LoopSession:
    """A synchronous ORM session behind the ``AsyncSession`` methods the services use (SQLite's
    writers, on the loop: see ``Database.write``)."""

    def __init__(self, session: Session) -> None:
        self.sync_session = session
        self.info = session.info

    async def execute(self, statement: sa.Executable, params: Any = None, **options: Any) -> sa.Result[Any]:
        return self.sync_session.execute(statement, params, **options)

    async def scalars(self, statement: sa.Executable, params: Any = None, **options: Any) -> sa.ScalarResult[Any]:
        return self.sync_session.scalars(statement, params, **options)

    async def scalar(self, statement: sa.Executable, params: Any = None, **options: Any) -> Any:
        return self.sync_session.scalar(statement, params, **options)

    async def get(self, entity: Any, ident: Any, **options: Any) -> Any:
        return self.sync_session.get(entity, ident, **options)

    async def get_one(self, entity: Any, ident: Any, **options: Any) -> Any:
        return self.sync_session.get_one(entity, ident, **options)

    async def flush(self) -> None:
        self.sync_session.flush()

    async def delete(self, instance: object) -> None:
        self.sync_session.delete(instance)

    async def connection(self) -> LoopConnection:
        return LoopConnection(self.sync_session.connection())

    def add(self, instance: object) -> None:
        self.sync_session.add(instance)

    def add_all(self, instances: Any) -> None:
        self.sync_session.add_all(instances)


async def bulk_insert(target: AsyncSession | Statements, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (dicts with the same keys) in the transaction of ``target`` (a session of
    ``write``, a connection of ``transaction``), of the values bound as SQLAlchemy binds them but
    column by column (one map() per column, not SQLAlchemy's per-row parameter processing, which
    was a third of a 10,000-task batch submit). On PostgreSQL it is a COPY on the transaction's
    own connection: half the time of an executemany (an INSERT per row on the server), and no
    slower for one row; on SQLite one executemany of the driver."""
    if not rows:
        return
    connection = target if isinstance(target, LoopConnection | DriverConnection) else await target.connection()
    dialect = connection.dialect
    columns = list(rows[0])
    values = []
    for name in columns:
        column = [row[name] for row in rows]
        bind = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if bind is None:
            values.append(column)
        elif all(value is column[0] for value in column):  # a batch's time, creator, group: bound once
            values.append([bind(column[0])] * len(column))
        else:
            values.append(list(map(bind, column)))
    records = list(zip(*values, strict=True))
    if dialect.name != "postgresql":
        names = ", ".join(f'"{name}"' for name in columns)
        await connection.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(columns))})', records)  # type: ignore[union-attr]
        return
    if isinstance(connection, DriverConnection):
        await connection.copy_records(table.name, columns, records)
        return
    driver = (await connection.get_raw_connection()).driver_connection  # type: ignore[union-attr]
    # SQLAlchemy begins asyncpg's transaction at its first statement: a COPY before any would commit alone
    assert driver.is_in_transaction(), "bulk_insert needs a statement run before it in the transaction"  # type: ignore[union-attr]
    await driver.copy_records_to_table(table.name, records=records, columns=columns)  # type: ignore[union-attr]


CHUNK = 1024
T = TypeVar("T")


def chunks(items: Sequence[T]) -> list[Sequence[T]]:
    """Long lists of values go into statements ``CHUNK`` at a time: under the databases' limits
    of bound parameters."""
    return [items[at : at + CHUNK] for at in range(0, len(items), CHUNK)]


def after_commit(session: AsyncSession | Statements, callback: Callable[[], None], *, first: bool = False) -> None:
    """Run ``callback`` when the transaction of ``session`` (a session of ``write``, a connection
    of ``transaction``) has committed (e.g. to publish an event); ``first``: before those
    registered so far."""
    callbacks = session.info.setdefault(_AFTER_COMMIT, [])
    callbacks.insert(0, callback) if first else callbacks.append(callback)


def after_rollback(connection: Statements, callback: Callable[[], None]) -> None:
    """Run ``callback`` if the transaction of ``connection`` (of ``transaction``) does not commit."""
    connection.info.setdefault(_AFTER_ROLLBACK, []).append(callback)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: sa.Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
