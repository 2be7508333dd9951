"""``mito``: the coordinator, worker, client and local-platform modes.

Flags default to ``None`` so that only the flags actually given override the lower configuration
layers (a false boolean flag never overrides a ``true`` from a file, as in reference 0.5.3).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mito_lab.cli import EXIT_ERROR, EXIT_USAGE
from mito_lab.config import (
    ClientConfig,
    ConfigError,
    CoordinatorConfig,
    WorkerConfig,
    load_config,
)


def _flags(namespace: argparse.Namespace, model: type) -> dict[str, Any]:
    return {key: value for key, value in vars(namespace).items() if key in model.model_fields}


def _load(mode: str, model: type, namespace: argparse.Namespace) -> Any:
    return load_config(mode, model, namespace.config, _flags(namespace, model))


def _flag(parser: argparse.ArgumentParser, *names: str, **options: Any) -> None:
    if options.get("action") in ("store_true", "store_false"):
        options["default"] = None
    parser.add_argument(*names, **options)


# --- coordinator ----------------------------------------------------------------------------------


def _coordinator_parser(modes: argparse._SubParsersAction) -> None:
    parser = modes.add_parser("coordinator", help="Run the mitosis coordinator", description="Run the mitosis coordinator")
    _flag(parser, "-b", "--bind", help="The address to bind to")
    _flag(parser, "--public-url", metavar="URL",
          help="The coordinator's URL as clients reach it (e.g. behind a proxy), where the local object store's URLs point [default: the URL each request came to]")
    _flag(parser, "--config", type=Path, help="The path of the config file")
    _flag(parser, "--data-dir", type=Path, help="Where the embedded database, objects and keys live [default: ~/.local/share/mitosis]")
    _flag(parser, "--db", dest="db_url", metavar="DB_URL", help="The database URL (postgres://... or sqlite:///...) [default: embedded SQLite]")
    _flag(parser, "--s3", dest="s3_url", metavar="S3_URL", help="The S3 URL [default: local object store in the data dir]")
    _flag(parser, "--s3-access-key", help="The S3 access key")
    _flag(parser, "--s3-secret-key", help="The S3 secret key")
    _flag(parser, "--s3-region", help="The S3 region [default: mitosis]")
    _flag(parser, "--s3-force-path-style", action="store_true", help="Use path-style S3 addressing")
    _flag(parser, "--artifacts-bucket", help="The bucket for task artifacts [default: mitosis-artifacts]")
    _flag(parser, "--attachments-bucket", help="The bucket for group attachments [default: mitosis-attachments]")
    _flag(parser, "--redis", dest="redis_url", metavar="REDIS_URL", help="The Redis URL")
    _flag(parser, "--redis-worker-password", help="The Redis worker password")
    _flag(parser, "--redis-client-password", help="The Redis client password")
    _flag(parser, "--redis-skip-acl-rules", action="store_true", help="Do not create the Redis ACL users")
    _flag(parser, "--admin-user", help="The admin username")
    _flag(parser, "--admin-password", help="The admin password")
    _flag(parser, "--access-token-private-path", type=Path, help="The path to the private key [default: generated in the data dir]")
    _flag(parser, "--access-token-public-path", type=Path, help="The path to the public key [default: generated in the data dir]")
    _flag(parser, "--access-token-expires-in", help="The access token expiration time, default to 7 days")
    _flag(parser, "--heartbeat-timeout", help="The heartbeat timeout, default to 600 seconds")
    _flag(parser, "--events-sockets-per-user", type=int, help="The most /events sockets one user may open [default: 16]")
    _flag(parser, "--events-queue-limit", type=int, help="Events waiting for one /events socket before it is closed as too slow [default: 50000]")
    _flag(parser, "--events-ping-interval", help="How often /events sockets are pinged; one that does not answer in as long is closed [default: 30s]")
    _flag(parser, "--http-idle-timeout", help="The time a connection has to send a request's headers, and may stay idle between requests [default: 60s]")
    _flag(parser, "--http-body-timeout", help="The time a request has to send its JSON body [default: 60s]")
    _flag(parser, "--alert-timeout", help="The time a campaign alert's webhook has to answer a POST [default: 10s]")
    _flag(parser, "--alert-attempts", type=int, help="POSTs of a campaign alert's webhook before giving up [default: 5]")
    _flag(parser, "--alert-backoff", help="The wait before a webhook's first retry, doubled at each one [default: 2s]")
    _flag(parser, "--alert-hosts", help="The only hosts webhooks may name, comma-separated [default: any]")
    _flag(parser, "--log-path", type=Path, help="The log file path. If specified, the log file is exactly at this path")
    _flag(parser, "--file-log", action="store_true", help="Enable logging to file")
    parser.set_defaults(run=run_coordinator)


def run_coordinator(namespace: argparse.Namespace) -> int:
    from mito_lab.logs import setup_logging
    from mito_lab.server.app import StartupError, serve

    config: CoordinatorConfig = _load("coordinator", CoordinatorConfig, namespace)
    setup_logging("coordinator", config.bind.replace(":", "_"), config.file_log, config.log_path)
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"mito: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


# --- worker -------------------------------------------------------------------------------------


def _worker_parser(modes: argparse._SubParsersAction) -> None:
    parser = modes.add_parser("worker", help="Run a mitosis worker", description="Run a mitosis worker")
    _flag(parser, "--config", type=Path, help="The path of the config file")
    _flag(parser, "-c", "--coordinator", dest="coordinator_addr", metavar="COORDINATOR_ADDR", help="The address of the coordinator")
    _flag(parser, "--polling-interval", help="The interval to poll tasks or resources")
    _flag(parser, "--heartbeat-interval", help="The interval to send heartbeat")
    _flag(parser, "--credential-path", type=Path, help="The path of the user credential file")
    _flag(parser, "-u", "--user", help="The username of the user")
    _flag(parser, "-p", "--password", help="The password of the user")
    _flag(parser, "-g", "--groups", nargs="*", help="The groups allowed to submit tasks to this worker (NAME or NAME:ROLE)")
    _flag(parser, "-t", "--tags", nargs="*", help="The tags of this worker")
    _flag(parser, "-l", "--labels", nargs="*", help="The labels of this worker")
    _flag(parser, "--log-path", type=Path, help="The log file path. If specified, the log file is exactly at this path")
    _flag(parser, "--file-log", action="store_true", help="Enable logging to file")
    _flag(parser, "--shared-log", action="store_true", help="Log to one shared rolling file for all workers")
    _flag(parser, "--lifetime", help="The lifetime of the worker to alive (e.g., 7d, 1year)")
    _flag(parser, "--skip-redis", action="store_true", help="Ignore the Redis URL given at registration")
    _flag(parser, "--slots", type=int, help="How many tasks to run at once [default: 1]")
    _flag(parser, "--no-task-cgroup", dest="task_cgroup", action="store_false",
          help="Do not run each task in a cgroup of its own (the processes a task detaches are still killed)")
    _flag(parser, "--task-user", metavar="NAME", help="Run the tasks as this OS account (the worker must be started as root) [default: the worker's own]")
    parser.set_defaults(run=run_worker)


def run_worker(namespace: argparse.Namespace) -> int:
    from mito_lab.worker.agent import run

    config: WorkerConfig = _load("worker", WorkerConfig, namespace)
    return asyncio.run(run(config))


# --- client -------------------------------------------------------------------------------------


# The commands of cli/grammar.py, named here so that `mito --help` need not import the client.
CLIENT_COMMANDS = ("auth", "login", "create", "submit", "rerun", "get", "why", "upload", "manage", "sweep", "alert", "shutdown",
                   "users", "groups", "tasks", "workers", "admin", "help", "quit", "exit")


def _client_parser(modes: argparse._SubParsersAction) -> None:
    parser = modes.add_parser(
        "client",
        help="Run a mitosis client",
        description="Run a mitosis client",
        usage="mito client [OPTIONS] [COMMAND]",
        epilog=f"Commands: {', '.join(CLIENT_COMMANDS)}. "
        "Run `mito client <COMMAND> --help` for each. Exit status: 0 done, 1 refused or failed, 2 usage error.",
    )
    _flag(parser, "--config", type=Path, help="The path of the config file")
    _flag(parser, "-c", "--coordinator", dest="coordinator_addr", metavar="COORDINATOR_ADDR", help="The address of the coordinator")
    _flag(parser, "--credential-path", type=Path, help="The path of the user credential file")
    _flag(parser, "-u", "--user", help="The username of the user")
    _flag(parser, "-p", "--password", help="The password of the user")
    _flag(parser, "--retain", action="store_true", help="Keep your other sessions valid when logging in [default; set retain = false in the config for one session per user]")
    parser.add_argument("-i", "--interactive", action="store_true", help="Enable interactive mode (after COMMAND, if one is given)")
    parser.add_argument("--json", action="store_true", help="Machine-readable output")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="The command to run")
    parser.set_defaults(run=run_client)


def run_client(namespace: argparse.Namespace) -> int:
    from mito_lab.cli.grammar import GrammarError, HelpShown, build_parser, cmd_login
    from mito_lab.cli.shell import connect, interactive, run_line
    from mito_lab.client.http import MitoError  # libcurl is loaded by the modes that talk HTTP, not by the coordinator

    config: ClientConfig = _load("client", ClientConfig, namespace)
    if not namespace.command and not namespace.interactive:
        print(build_parser().format_help().rstrip())
        return 0
    args = None
    if namespace.command:  # a usage error is reported before any login
        try:
            args = build_parser().parse_args(namespace.command)
        except HelpShown as shown:
            print(str(shown).rstrip())
            return 0
        except GrammarError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        if getattr(args, "offline", False) and not namespace.interactive:
            return asyncio.run(run_line(None, namespace.command, namespace.json, prog="mito client"))

    logging_in = args is not None and args.func is cmd_login and bool(args.username and args.password)

    async def session() -> int:
        try:
            client = await connect(config, logging_in)
        except MitoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        async with client:
            code = await run_line(client, namespace.command, namespace.json, prog="mito client") if namespace.command else 0
            if namespace.interactive:
                return await interactive(client, config, namespace.json)
            return code

    return asyncio.run(session())


# --- manager ------------------------------------------------------------------------------------


def _manager_parser(modes: argparse._SubParsersAction) -> None:
    parser = modes.add_parser("manager", help="Start and stop local workers", description="Start, list and stop the worker processes this manager started (and only those)")
    actions = parser.add_subparsers(title="commands", metavar="<COMMAND>", required=True)
    spawn = actions.add_parser("spawn", help="Start COUNT workers in the background", usage="mito manager spawn COUNT [worker options]")
    spawn.add_argument("count", type=int, metavar="COUNT", help="how many workers")
    spawn.add_argument("worker_args", nargs=argparse.REMAINDER, metavar="WORKER_OPTIONS", help="options for each `mito worker`")
    spawn.set_defaults(run=run_manager, action="spawn")
    status = actions.add_parser("status", help="List the running workers started here")
    status.set_defaults(run=run_manager, action="status")
    kill = actions.add_parser("kill", help="Stop them (SIGTERM: they hand back their tasks; SIGKILL after 20 s)")
    kill.add_argument("-f", "--force", action="store_true", help="SIGKILL at once")
    kill.set_defaults(run=run_manager, action="kill")


def run_manager(namespace: argparse.Namespace) -> int:
    from mito_lab.worker import manager

    if namespace.action == "spawn":
        return manager.spawn(namespace.count, namespace.worker_args)
    if namespace.action == "status":
        return manager.status()
    return manager.kill(namespace.force)


# --- up -----------------------------------------------------------------------------------------


def _up_parser(modes: argparse._SubParsersAction) -> None:
    parser = modes.add_parser("up", help="Start a local platform: a coordinator and workers", description="Start a coordinator on the embedded database and object store, plus N workers, in one process tree. Ctrl-C stops everything.")
    parser.add_argument("--workers", type=int, default=2, help="How many workers to start [default: 2]")
    parser.add_argument("-b", "--bind", default="127.0.0.1:5000", help="The coordinator's address [default: 127.0.0.1:5000]")
    parser.add_argument("--data-dir", type=Path, help="Where the platform keeps its state [default: ~/.local/share/mitosis]")
    parser.set_defaults(run=run_up)


def run_up(namespace: argparse.Namespace) -> int:
    from mito_lab.cli.up import up

    if namespace.workers < 0:
        print("error: --workers must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    return up(namespace.bind, namespace.workers, namespace.data_dir)


# --- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mito", description="mito_lab: run experiment fleets from a notebook or a shell")
    shown = f"mito {version('mito-lab')}"
    parser.add_argument("-V", "--version", action="version", version=shown)
    modes = parser.add_subparsers(title="modes", metavar="<MODE>", required=True)
    _coordinator_parser(modes)
    _worker_parser(modes)
    _client_parser(modes)
    _manager_parser(modes)
    _up_parser(modes)
    for mode in modes.choices.values():  # `mito worker -V` as well as `mito -V`
        mode.add_argument("-V", "--version", action="version", version=shown)
    return parser


def main(argv: list[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    try:
        return namespace.run(namespace)
    except ConfigError as exc:
        print(f"mito: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
