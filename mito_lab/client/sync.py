"""``mito_lab.Client``: the SDK for notebooks and scripts, without ``await``.

Its ``AsyncClient`` lives on an event loop in a background thread (as ``dask.distributed`` does),
so the live parts -- the event stream, task handles' cards, dashboards -- keep updating while the
notebook runs other cells. Every coroutine method of ``AsyncClient`` is here as a blocking method
with the same signature; ``submit`` returns a :class:`TaskHandle`.

This is the SDK's bottom: the notebook layer (magics, widgets, sweeps) builds on it and it knows
nothing of that layer (``Dashboard(client)``, ``Sweep.launch(client, ...)``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import getpass
import inspect
import sys
import threading
import uuid as uuid_module
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mito_lab.client.api import AsyncClient, NoCredentials, Submittable
from mito_lab.client.credentials import Credentials
from mito_lab.client.handle import TaskHandle
from mito_lab.client.http import MitoError
from mito_lab.client.progress import watched
from mito_lab.config import ClientConfig, load_config
from mito_lab.wire import BatchSubmitResp

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "mito-client") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (Ctrl-C cancels it)."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking Client method was called from the client's own event loop; use the AsyncClient there")
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except (KeyboardInterrupt, concurrent.futures.TimeoutError):
            future.cancel()
            raise

    def iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """Consume an async iterator of the loop from this thread, one item at a time."""
        try:
            while True:
                try:
                    yield self.run(stream.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            self.run(_close(stream))

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        """Cancel what still runs on the loop (as ``asyncio.run`` does), then end the thread."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self.submit(_cancel_others()).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
            self.loop.close()


async def _cancel_others() -> None:
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _close(stream: AsyncIterator[Any]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


def ask_in_notebook_or_terminal(user: str | None) -> tuple[str, str]:
    """Ask for the credentials where someone can answer: a notebook's input box or a terminal."""
    if not (watched() or sys.stdin.isatty()):
        raise MitoError(401, "not logged in: pass user= and password=, set MITO_USER and MITO_PASSWORD, or log in with the CLI first")
    if not user:
        user = input("Username: ").strip()
    return user, getpass.getpass(f"Password for {user}: ")


# The connection ``Client()`` joins when given no coordinator, user or password: the one the
# notebook made last with ``%mito connect`` / ``%mito login`` (``set_as_default``).
_default: weakref.ref[Client] | None = None


class Client:
    """A connection to a coordinator.

    Without arguments it joins the kernel's connection (what ``%mito connect`` made, or any
    client made with ``set_as_default=True``): the same coordinator and user, on its session.
    Otherwise it uses the client configuration (``MITO_COORDINATOR``, ``MITO_USER``,
    ``MITO_PASSWORD``, the config files) and the saved credentials; it asks for a password only
    when none of those yields a valid session."""

    def __init__(
        self,
        coordinator: str | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        credential_path: Path | str | None = None,
        retain: bool | None = None,
        config_path: Path | str | None = None,
        ask: Callable[[str | None], tuple[str, str]] | None = ask_in_notebook_or_terminal,
        set_as_default: bool = False,
    ) -> None:
        flags = {"coordinator_addr": coordinator, "user": user, "password": password, "retain": retain,
                 "credential_path": None if credential_path is None else Path(credential_path)}
        config = load_config("client", ClientConfig, None if config_path is None else Path(config_path), flags)
        joined = default_client() if coordinator is None and user is None and password is None else None
        self._thread = LoopThread()
        try:
            if joined is not None:
                self.aio = AsyncClient(joined.coordinator, joined.aio.session.token, joined.username, Credentials(config.credential_path))
            else:
                try:
                    self.aio = self._thread.run(self._connect(config, config.user, config.password))
                except NoCredentials:
                    if ask is None:
                        raise
                    name, secret = ask(config.user)  # asked here, in the caller's thread: a notebook's input box works
                    self.aio = self._thread.run(self._connect(config, name, secret))
        except BaseException:
            self._thread.stop()
            raise
        self._finalizer = weakref.finalize(self, _shut, self.aio, self._thread)
        if set_as_default:
            global _default
            _default = weakref.ref(self)

    @staticmethod
    async def _connect(config: ClientConfig, user: str | None, password: str | None) -> AsyncClient:
        return await AsyncClient.connect(config.coordinator_addr, user, password, config.credential_path, config.retain)

    @property
    def username(self) -> str | None:
        return self.aio.username

    @property
    def coordinator(self) -> str:
        return self.aio.coordinator

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine of ``self.aio`` (the ``AsyncClient``) and return its result."""
        return self._thread.run(coroutine, timeout)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mito_lab.Client {self.username}@{self.coordinator}>"

    # --- what differs from AsyncClient ----------------------------------------------------------

    def submit(self, command: Submittable, **options: Any) -> TaskHandle:
        """Submit a task (see ``AsyncClient.submit``) and return its handle."""
        answer = self.run(self.aio.submit(command, **options))
        return TaskHandle(self, answer.uuid)

    def submit_many(self, commands: Iterable[Submittable], **options: Any) -> list[TaskHandle | MitoError]:
        """Submit many tasks in one request, each what ``submit`` takes (``options`` apply to every
        command that is not a request); a handle for each accepted one, the error for the others."""
        return self._handles(self.run(self.aio.submit_many(commands, **options)))

    def rerun(self, tasks: Any, **changes: Any) -> list[TaskHandle | MitoError]:
        """Run tasks again with changed limits or placement (see ``AsyncClient.rerun``): a
        handle for each new run, the error for the refused ones."""
        return self._handles(self.run(self.aio.rerun(tasks, **changes)))

    def _handles(self, answer: BatchSubmitResp) -> list[TaskHandle | MitoError]:
        return [TaskHandle(self, r.Ok.uuid) if r.Ok else MitoError(400, r.Err.msg if r.Err else "refused") for r in answer.results]

    def task(self, task_uuid: uuid_module.UUID | str) -> TaskHandle:
        """The handle of an existing task."""
        return TaskHandle(self, uuid_module.UUID(str(task_uuid)))


def default_client() -> Client | None:
    """The connection ``Client()`` joins, if it is still open."""
    client = _default() if _default is not None else None
    return client if client is not None and not client.closed else None


def _shut(client: AsyncClient, thread: LoopThread) -> None:
    if not thread.loop.is_closed():
        with contextlib.suppress(Exception):
            thread.run(client.aclose(), timeout=10)
    thread.stop()


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        def stream(self: Client, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return self._thread.iterate(getattr(self.aio, name)(*args, **kwargs))

        return stream

    @functools.wraps(method)
    def call(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self.run(getattr(self.aio, name)(*args, **kwargs))

    return call


for _name, _method in vars(AsyncClient).items():
    if _name.startswith("_") or _name in vars(Client) or _name == "aclose" or not (inspect.iscoroutinefunction(_method) or inspect.isasyncgenfunction(_method)):
        continue
    setattr(Client, _name, _blocking(_name, _method))
