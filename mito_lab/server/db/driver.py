"""PostgreSQL's hot paths on the driver: Core statements compiled once, run as asyncpg's own
prepared statements.

A statement through SQLAlchemy's async engine costs the coordinator ~0.3 ms of Python on top of
asyncpg's ~0.1 ms (the pool's checkout and reset, the hop into a greenlet, the compiled cache's
lookup, the result's metadata and rows); the dispatch of one task makes eight of them. Here the
statements stay SQLAlchemy Core, built in the services, and are compiled by SQLAlchemy's own
asyncpg dialect once per shape (its cache key); values go through the types' own bind and result
processors, so what comes back is what SQLAlchemy would have returned. Lists bound to ``IN``
become one array parameter (``= ANY($n)``): one prepared statement whatever the list's length.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import OrderedDict, namedtuple
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa

from mito_lab.server.errors import DatabaseConnectionLost

COMPILED_SHAPES = 512
"""Statement shapes kept compiled (LRU): the hot paths have a few dozen; housekeeping's statements
built with values come back to the same shapes."""
_EXPANDING = re.compile(r"(NOT )?IN \(__\[POSTCOMPILE_(\w+)\]\)")
_NUMBERED = re.compile(r"\$(\d+)")

Processor = Callable[[Any], Any] | None


@dataclass
class _Compiled:
    """A statement's SQL for asyncpg, and how its parameters and rows are converted."""

    compiled: sa.engine.Compiled
    sql: str
    names: tuple[str, ...]  # bound parameters in positional order ($1, $2, ...)
    binders: tuple[tuple[Processor, bool], ...]  # per position: the type's bind processor, whether a list
    defaults: tuple[tuple[str, Any], ...]  # columns' Python-side defaults (an INSERT's, an UPDATE's onupdate)
    # learned from the server at the first run (``DriverStatements.describe``): some types'
    # result processors depend on the column's type there (PostgreSQL's numeric types)
    described: bool = False
    row: type | None = None  # the rows' class (named fields), None for a statement that returns none
    results: tuple[Processor, ...] = ()

    def arguments(self, parameters: dict[str, Any], extracted: Sequence[Any] | None) -> list[Any]:
        values = self.compiled.construct_params(parameters, extracted_parameters=extracted)
        for name, default in self.defaults:
            if name not in parameters:
                values[name] = default.arg(None) if default.is_callable else default.arg
        arguments = []
        for name, (bind, many) in zip(self.names, self.binders, strict=True):
            value = values[name]
            if bind is not None and value is not None:
                value = [bind(item) for item in value] if many else bind(value)
            elif many:
                value = list(value)
            arguments.append(value)
        return arguments

    def rows(self, records: list[asyncpg.Record]) -> list[Any]:
        row = self.row
        assert row is not None
        results = self.results
        if not any(results):  # none, or a textual statement's: as asyncpg reads them
            return [row(*record) for record in records]
        return [row(*[value if result is None or value is None else result(value) for result, value in zip(results, record)])
                for record in records]


def _compile(statement: sa.Executable, dialect: sa.Dialect, cache_key: Any, column_keys: tuple[str, ...]) -> _Compiled:
    # the key: to read the values of other statements of the same shape; the column keys: the
    # columns an INSERT or UPDATE without values of its own sets, those of its parameters
    compiled = statement.compile(dialect=dialect, cache_key=cache_key, column_keys=list(column_keys) or None)
    binds = compiled.binds
    positional = [name for name in compiled.positiontup or () if not binds[name].expanding]
    expanding = list(dict.fromkeys(name for _, name in _EXPANDING.findall(compiled.string)))
    numbers = {int(number) for number in _NUMBERED.findall(compiled.string)}
    # SQLAlchemy numbers the plain parameters in ``positiontup``'s order and renders lists when
    # executing; lists here take the numbers after them
    assert numbers == set(range(1, len(positional) + 1)), (compiled.string, positional)
    number = {name: len(positional) + index + 1 for index, name in enumerate(expanding)}

    def as_array(match: re.Match[str]) -> str:
        negated, name = match.groups()
        return f"<> ALL(${number[name]})" if negated else f"= ANY(${number[name]})"

    names = (*positional, *expanding)
    binders = tuple((binds[name].type.dialect_impl(dialect).bind_processor(dialect), binds[name].expanding) for name in names)
    defaults: tuple[tuple[str, Any], ...] = ()
    if compiled.insert_prefetch or compiled.update_prefetch:
        key_of = compiled._within_exec_param_key_getter  # type: ignore[attr-defined]
        defaults = tuple((key_of(column), column.default) for column in compiled.insert_prefetch) + tuple(
            (key_of(column), column.onupdate) for column in compiled.update_prefetch
        )
    return _Compiled(compiled, _EXPANDING.sub(as_array, compiled.string), names, binders, defaults)


class DriverResult:
    """What ``AsyncConnection.execute`` returns, as far as the services read it."""

    def __init__(self, rows: list[Any], rowcount: int = -1) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa.exc.NoResultFound("No row was found") if not self._rows else sa.exc.MultipleResultsFound("Multiple rows were found")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> DriverResult:
        return DriverResult([row[0] for row in self._rows])


class DriverConnection:
    """An asyncpg connection behind the methods of ``AsyncConnection`` that the hot paths use."""

    def __init__(self, connection: asyncpg.Connection, statements: DriverStatements) -> None:
        self._connection = connection
        self._statements = statements
        self.info: dict[str, Any] = {}  # as a session's (``after_commit``)

    @property
    def dialect(self) -> sa.Dialect:
        return self._statements.dialect

    async def execute(self, statement: sa.Executable, parameters: dict[str, Any] | list[dict[str, Any]] | None = None) -> DriverResult:
        compiled, extracted = self._statements.compiled(statement, parameters[0] if isinstance(parameters, list) and parameters else parameters)
        if not compiled.described:
            await self._statements.describe(compiled, self._connection)
        if isinstance(parameters, list):  # executemany: a statement that returns nothing, once per item
            await self._connection.executemany(compiled.sql, [compiled.arguments(item, extracted) for item in parameters])
            return DriverResult([], len(parameters))
        arguments = compiled.arguments(parameters or {}, extracted)
        if compiled.row is None:
            status = await self._connection.execute(compiled.sql, *arguments)
            count = status.rpartition(" ")[2]
            return DriverResult([], int(count) if count.isdigit() else -1)
        records = await self._connection.fetch(compiled.sql, *arguments)
        return DriverResult(compiled.rows(records), len(records))

    async def scalars(self, statement: sa.Executable, parameters: dict[str, Any] | None = None) -> DriverResult:
        return (await self.execute(statement, parameters)).scalars()

    async def scalar(self, statement: sa.Executable, parameters: dict[str, Any] | None = None) -> Any:
        return (await self.execute(statement, parameters)).scalar()

    async def copy_records(self, table: str, columns: list[str], records: list[tuple[Any, ...]]) -> None:
        """``COPY table (columns) FROM STDIN`` of values bound already (``engine.bulk_insert``)."""
        await self._connection.copy_records_to_table(table, records=records, columns=columns)


async def _set_codecs(connection: asyncpg.Connection) -> None:
    """JSON as SQLAlchemy's asyncpg dialect reads and writes it (its bind processor makes the
    text), decoded with orjson."""
    await connection.set_type_codec("json", encoder=str.encode, decoder=orjson.loads, schema="pg_catalog", format="binary")
    await connection.set_type_codec(
        "jsonb", encoder=lambda text: b"\x01" + text.encode(), decoder=lambda data: orjson.loads(data[1:]),
        schema="pg_catalog", format="binary",
    )


async def _reset(connection: asyncpg.Connection) -> None:
    """Back into the pool: nothing to undo but an unfinished transaction (the statements here set
    no session state, take no advisory locks and listen to nothing), where asyncpg's own reset
    would cost a round trip each time."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class DriverStatements:
    """A pool of asyncpg connections and the statements compiled for it."""

    def __init__(self, engine: sa.ext.asyncio.AsyncEngine, size: int) -> None:
        self.dialect = engine.dialect
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._compiled: OrderedDict[Any, _Compiled] = OrderedDict()

    def compiled(self, statement: sa.Executable, parameters: dict[str, Any] | None) -> tuple[_Compiled, Sequence[Any] | None]:
        column_keys = tuple(sorted(parameters)) if parameters and isinstance(statement, sa.sql.dml.ValuesBase) else ()
        # the cache key is memoized by each statement object: the hot paths' constant
        # statements pay a dictionary lookup; its bind parameters carry the values of this one
        cache_key = statement._generate_cache_key()  # type: ignore[attr-defined]
        if cache_key is None:  # a construct SQLAlchemy does not cache either: compiled each time
            return _compile(statement, self.dialect, None, column_keys), None
        shape = (cache_key.key, column_keys)
        compiled = self._compiled.get(shape)
        if compiled is None:
            compiled = self._compiled[shape] = _compile(statement, self.dialect, cache_key, column_keys)
            if len(self._compiled) > COMPILED_SHAPES:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(shape)
        return compiled, cache_key.bindparams

    async def describe(self, compiled: _Compiled, connection: asyncpg.Connection) -> None:
        """What the statement's rows hold, as the server says (once per shape and process): their
        class, named as SQLAlchemy names the columns, and each column's result processor."""
        attributes = (await connection.prepare(compiled.sql)).get_attributes()
        if attributes:
            columns = compiled.compiled._result_columns  # type: ignore[attr-defined]  # as SQLAlchemy reads them
            names = [column.keyname for column in columns] if len(columns) == len(attributes) else [a.name for a in attributes]
            compiled.row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            compiled.results = tuple(
                column.type.dialect_impl(self.dialect).result_processor(self.dialect, attribute.type.oid)
                for column, attribute in zip(columns, attributes)
            ) if len(columns) == len(attributes) else ()
        compiled.described = True

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:  # the first requests wait for one pool
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._size, init=_set_codecs, reset=_reset)
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self, transaction: bool) -> AsyncIterator[DriverConnection]:
        pool = await self._opened()
        async with pool.acquire() as connection:
            try:
                if transaction:
                    async with connection.transaction():
                        yield DriverConnection(connection, self)
                else:
                    yield DriverConnection(connection, self)
            except Exception as exc:
                if not connection.is_closed():
                    raise
                # the server ended it (a restart, an administrator): so it did the others
                pool.expire_connections()
                raise DatabaseConnectionLost() from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
