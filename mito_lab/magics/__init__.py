"""The IPython extension: ``%load_ext mito_lab`` registers ``%mito`` and ``%%mito``.

``%mito <command>`` takes the client commands of the CLI (one grammar, ``cli/grammar.py``) and
returns objects instead of printing: DataFrames for listings, task handles for submissions.
Notebook-only commands: ``connect``, ``login`` and ``dashboard``."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from mito_lab.cli.grammar import GrammarError, HelpShown, Parser, build_parser
from mito_lab.client.frames import to_frame
from mito_lab.client.handle import TaskHandle
from mito_lab.client.http import MitoError
from mito_lab.client.sync import Client
from mito_lab.client.views import why_text
from mito_lab.sweeps import Launched, Sweep
from mito_lab.wire import SubmitTaskResp, TaskQueryResp, TaskWhyResp

NOTEBOOK_HELP = """\
Notebook commands:
  connect [COORDINATOR] [-u USER] [-p PASSWORD]   connect (saved credentials, MITO_* variables, or asks)
  login [USERNAME] [PASSWORD]                     log in again, as another user if you like
  dashboard [-g GROUP]                            a live panel of a group's tasks and workers
  %%mito submit [OPTIONS]                         run the cell's body as a bash script on a worker"""


def _notebook_parser() -> Parser:
    parser = Parser(prog="%mito", add_help=False)
    commands = parser.add_subparsers(dest="command", parser_class=Parser)
    connect = commands.add_parser("connect", help="connect to a coordinator")
    connect.add_argument("coordinator", nargs="?")
    connect.add_argument("-u", "--user")
    connect.add_argument("-p", "--password")
    login = commands.add_parser("login", help="log in again")
    login.add_argument("user", nargs="?")
    login.add_argument("password", nargs="?")
    dashboard = commands.add_parser("dashboard", help="the live dashboard")
    dashboard.add_argument("-g", "--group")
    return parser


NOTEBOOK_COMMANDS = {"connect", "login", "dashboard"}


@magics_class
class MitoMagics(Magics):
    client: Client | None = None

    def connected(self) -> Client:
        """The client, connected on first use (configuration, saved credentials, or asks)."""
        if self.client is None:
            self.client = Client()
        return self.client

    def _reconnect(self, coordinator: str | None, user: str | None, password: str | None) -> Client:
        previous = self.client
        self.client = Client(coordinator or (previous.coordinator if previous else None), user, password)
        if previous is not None:
            previous.close()
        return self.client

    @line_cell_magic
    def mito(self, line: str, cell: str | None = None) -> Any:
        """Run a mito client command; ``%mito help`` lists them."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%mito: {exc}") from None
        try:
            if cell is not None:
                return self._submit_cell(argv, cell)
            if argv[:1] in ([], ["help"]):
                if len(argv) > 1:  # the help of one command
                    build_parser("%mito").parse_args([*argv[1:], "--help"])
                print(build_parser("%mito").format_help().rstrip() + "\n\n" + NOTEBOOK_HELP)
                return None
            if argv[0] in NOTEBOOK_COMMANDS:
                return self._notebook_command(_notebook_parser().parse_args(argv))
            return self._client_command(argv)
        except HelpShown as shown:
            print(str(shown).rstrip())
        except GrammarError as exc:
            raise UsageError(str(exc)) from None
        except MitoError as exc:
            print(f"error: {exc}", file=sys.stderr)
        return None

    def _notebook_command(self, args: argparse.Namespace) -> Any:
        if args.command == "connect":
            client = self._reconnect(args.coordinator, args.user, args.password)
            print(f"Connected to {client.coordinator} as {client.username}")
            return None
        if args.command == "login":
            client = self._reconnect(None, args.user, args.password)
            print(f"Logged in as {client.username}")
            return None
        return self.connected().dashboard(args.group)

    def _submit_cell(self, argv: list[str], body: str) -> Any:
        if argv[:1] != ["submit"] and argv[:2] != ["tasks", "submit"]:
            raise GrammarError("%%mito: the cell form is `%%mito submit [OPTIONS]`; its body runs as a bash script")
        if "--" in argv:
            raise GrammarError("%%mito submit: the cell's body is the command; leave out `-- COMMAND`")
        return self._client_command([*argv, "--", "bash", "-c", body])

    def _client_command(self, argv: list[str]) -> Any:
        args = build_parser("%mito").parse_args(argv)
        if getattr(args, "offline", False):  # quit / exit: a notebook has no session to leave
            print("%mito: nothing to quit in a notebook (the client closes with the kernel)")
            return None
        client = self.connected()
        result = client.run(args.func(client.aio, args))
        if hasattr(result, "__aiter__"):  # a live stream (get logs --follow): print it as it comes
            for piece in client._thread.iterate(result):
                print(piece, end="", flush=True)
            return None
        if isinstance(result, str):
            print(result)
            return None
        if isinstance(result, TaskWhyResp):
            print(why_text(result))
            return None
        if isinstance(result, SubmitTaskResp):
            return TaskHandle(client, result.uuid)
        if isinstance(result, TaskQueryResp):
            return TaskHandle(client, result.info.uuid, result.info)
        if isinstance(result, Launched):
            return Sweep(client, result.name, result.group)
        if getattr(args, "count", False):
            return result.count
        return to_frame(result)


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(MitoMagics)


def unload_ipython_extension(ipython: Any) -> None:
    magics = ipython.magics_manager.registry.get("MitoMagics")
    if magics is not None and magics.client is not None:
        magics.client.close()
