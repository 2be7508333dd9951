"""The IPython extension: ``%load_ext mito_lab`` registers ``%mito`` and ``%%mito``.

``%mito <command>`` takes the client commands of the CLI (one grammar, ``cli/grammar.py``, to
which the notebook adds ``connect`` and ``dashboard`` and its own ``login``) and returns objects
instead of printing: DataFrames for listings, task handles for submissions, sweeps."""

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

CELL_HELP = "%%mito submit [OPTIONS]: run the cell's body as a bash script on a worker"


def magic_parser() -> Parser:
    """The client grammar and the notebook's own commands, in one parser: its help lists them
    all, and a typo is matched against them all."""
    parser = build_parser("%mito")
    assert parser.commands is not None
    connect = parser.commands.add_parser("connect", help="Connect to a coordinator (saved credentials, MITO_* variables, or asks)")
    connect.add_argument("coordinator", nargs="?", metavar="COORDINATOR")
    connect.add_argument("-u", "--user")
    connect.add_argument("-p", "--password")
    connect.set_defaults(notebook_command="connect")
    dashboard = parser.commands.add_parser("dashboard", help="A live panel of a group's tasks and workers")
    dashboard.add_argument("-g", "--group")
    dashboard.set_defaults(notebook_command="dashboard")
    parser.commands.choices["login"].set_defaults(notebook_command="login")  # in a notebook: reconnect as that user
    return parser


@magics_class
class MitoMagics(Magics):
    client: Client | None = None

    def connected(self) -> Client:
        """The client, connected on first use (configuration, saved credentials, or asks)."""
        if self.client is None:
            self.client = Client()
        return self.client

    def _reconnect(self, coordinator: str | None, user: str | None, password: str | None, retain: bool | None = None) -> Client:
        """A new connection, which ``mito_lab.Client()`` in this kernel joins from now on."""
        previous = self.client
        self.client = Client(coordinator or (previous.coordinator if previous else None), user, password, retain=retain, set_as_default=True)
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
                    magic_parser().parse_args([*argv[1:], "--help"])
                print(magic_parser().format_help().rstrip() + "\n\n" + CELL_HELP)
                return None
            args = magic_parser().parse_args(argv)
            if hasattr(args, "notebook_command"):
                return self._notebook_command(args)
            return self._client_command(args)
        except HelpShown as shown:
            print(str(shown).rstrip())
        except GrammarError as exc:
            raise UsageError(str(exc)) from None
        except MitoError as exc:
            print(f"error: {exc}", file=sys.stderr)
        return None

    def _notebook_command(self, args: argparse.Namespace) -> Any:
        if args.notebook_command == "connect":
            client = self._reconnect(args.coordinator, args.user, args.password)
            print(f"Connected to {client.coordinator} as {client.username}")
            return None
        if args.notebook_command == "login":
            client = self._reconnect(None, args.username, args.password, args.retain or None)
            print(f"Logged in as {client.username}")
            return None
        from mito_lab.magics.dashboard import Dashboard  # ipywidgets: imported when a dashboard is asked for

        return Dashboard(self.connected(), args.group)

    def _submit_cell(self, argv: list[str], body: str) -> Any:
        if argv[:1] != ["submit"] and argv[:2] != ["tasks", "submit"]:
            raise GrammarError("%%mito: the cell form is `%%mito submit [OPTIONS]`; its body runs as a bash script")
        if "--" in argv:
            raise GrammarError("%%mito submit: the cell's body is the command; leave out `-- COMMAND`")
        return self._client_command(magic_parser().parse_args([*argv, "--", "bash", "-c", body]))

    def _client_command(self, args: argparse.Namespace) -> Any:
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
