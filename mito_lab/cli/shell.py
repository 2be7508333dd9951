"""Running client command lines: one at a time (``mito client CMD``) or in the interactive shell
(``mito client -i``, prompt ``[mito::client]> ``). Both use the one grammar in ``grammar.py``."""

from __future__ import annotations

import asyncio
import getpass
import os
import shlex
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory

from mito_lab.cli import EXIT_ERROR, EXIT_USAGE
from mito_lab.cli.grammar import GrammarError, HelpShown, build_parser
from mito_lab.cli.render import as_json, render
from mito_lab.client.api import AsyncClient, login_token
from mito_lab.client.credentials import Credentials
from mito_lab.client.http import MitoError
from mito_lab.config import ClientConfig, cache_dir

PROMPT = "[mito::client]> "
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


def ask_credentials(user: str | None) -> tuple[str, str]:
    """Prompt on the terminal; without one, explain what to pass instead of hanging."""
    if not sys.stdin.isatty():
        raise MitoError(401, "not logged in and no terminal to ask on: pass -u USER -p PASSWORD")
    if not user:
        user = input("Username: ").strip()
    return user, getpass.getpass(f"Password for {user}: ")


async def connect(config: ClientConfig, logging_in: bool = False) -> AsyncClient:
    """A session from the saved credentials or ``-u``/``-p`` (asked for on a terminal). When the
    command itself is ``login USER PASSWORD`` (``logging_in``), nothing saved is needed: the
    command logs in. Says which user it acts as when several are saved and none was named."""
    credentials = Credentials(config.credential_path)
    if logging_in:
        return AsyncClient(config.coordinator_addr, credentials=credentials)
    client = await AsyncClient.connect(config.coordinator_addr, config.user, config.password, config.credential_path, config.retain, ask_credentials)
    saved = credentials.users()
    if config.user is None and len(saved) > 1 and client.username == saved[0]:
        print(f"(as {client.username}, the first of {len(saved)} saved users: -u USER for another)", file=sys.stderr)
    return client


def _show(result: Any, json_output: bool, verbose: bool) -> None:
    text = as_json(result) if json_output else render(result, verbose)
    if text:
        print(text, flush=True)


async def run_line(client: AsyncClient | None, argv: list[str], json_output: bool = False, prog: str = "") -> int:
    """Run one command line and print its outcome; returns the exit status. Never raises for a
    refused or malformed command, so a shell survives anything typed into it."""
    try:
        args = build_parser(prog).parse_args(argv)
        result = await args.func(client, args)
        if hasattr(result, "__aiter__"):  # a stream (e.g. get logs --follow): print it as it comes
            async for piece in result:
                sys.stdout.write(piece)
                sys.stdout.flush()
            return 0
        _show(result, json_output or args.json, getattr(args, "verbose", False))
        return 0
    except HelpShown as shown:
        print(str(shown).rstrip())
        return 0
    except GrammarError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except MitoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError as exc:
        if exc.filename is not None:  # a file the command wrote, not its output
            return _failed(exc)
        # whoever read the output stopped (``| head``): as any tool, end quietly; what is still
        # buffered goes nowhere, so that the interpreter's last flush does not fail either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        return _failed(exc)


def _failed(exc: OSError) -> int:
    print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
    return EXIT_ERROR


async def _relogin(client: AsyncClient, config: ClientConfig) -> None:
    """The session expired (or was ended elsewhere): ask for the password again."""
    print("Your session has ended; please log in again.", file=sys.stderr)
    client.username, client.session.token = await login_token(
        client.session, Credentials(config.credential_path), client.username, None, config.retain, ask_credentials
    )


async def interactive(client: AsyncClient, config: ClientConfig, json_output: bool = False) -> int:
    """The shell: history across runs, Ctrl-C clears the line, Ctrl-D / exit / quit leaves."""
    history = cache_dir() / "client-history"
    history.parent.mkdir(parents=True, exist_ok=True)
    session: PromptSession[str] = PromptSession(history=FileHistory(str(history)))
    while True:
        try:
            line = await session.prompt_async(PROMPT)
        except KeyboardInterrupt:
            continue
        except EOFError:
            return 0
        try:
            argv = shlex.split(line)
        except ValueError as exc:  # e.g. an unbalanced quote
            print(f"error: {exc}", file=sys.stderr)
            continue
        if not argv:
            continue
        if argv[0] in ("exit", "quit"):
            return 0
        if await _interruptible(run_line(client, argv, json_output)) == EXIT_ERROR and not await client_alive(client):
            try:
                await _relogin(client, config)
            except MitoError as exc:
                print(f"error: {exc}", file=sys.stderr)
                continue
            await _interruptible(run_line(client, argv, json_output))


async def _interruptible(command: Coroutine[Any, Any, int]) -> int:
    """Run a command of the shell; Ctrl-C (SIGINT) stops it (``get logs --follow``, a long
    download) and the shell goes back to its prompt instead of ending."""
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(command)
    loop.add_signal_handler(signal.SIGINT, running.cancel)
    try:
        return await running
    except asyncio.CancelledError:
        if running.cancelled() and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
            print("^C (stopped)", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def client_alive(client: AsyncClient) -> bool:
    """Is the session's token still accepted?"""
    try:
        await client.whoami()
        return True
    except MitoError as exc:
        return exc.status != 401
