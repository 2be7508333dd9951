"""What a newcomer meets first: the saved session, the addresses they type, and one clear line
for every mistake (issue 20)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import ADMIN, Platform, free_port, isolated_env
from mito_lab.testing import wait_until


def bare(platform: Platform, *args: str, coordinator: str | None = None) -> subprocess.CompletedProcess[str]:
    """``mito client -c URL ARGS...`` with nothing but what the credentials file holds."""
    command = [sys.executable, "-m", "mito_lab", "client", "-c", coordinator or platform.url, *args]
    return subprocess.run(command, env=platform.env(), capture_output=True, text=True, timeout=60, cwd=platform.home, stdin=subprocess.DEVNULL)


def test_login_needs_nothing_saved_and_saves_the_token_later_commands_use(platform: Platform) -> None:
    first = bare(platform, "login", *ADMIN)  # a fresh machine: no credentials file yet
    assert first.returncode == 0 and first.stdout.strip() == f"Logged in as {ADMIN[0]}", first.stderr
    assert bare(platform, "auth").stdout.strip() == ADMIN[0]
    again = bare(platform, "login", *ADMIN)  # without --retain: the token saved before is revoked
    assert again.returncode == 0, again.stderr
    after = bare(platform, "auth")
    assert after.returncode == 0 and after.stdout.strip() == ADMIN[0], after.stderr


def test_a_one_off_user_does_not_become_the_default_and_a_saved_one_needs_no_password(platform: Platform) -> None:
    platform.add_user("alice")
    assert bare(platform, "login", *ADMIN).returncode == 0
    assert platform.mito("auth", user="alice").stdout.strip() == "alice"  # -u alice -p ...: saved, not the default
    default = bare(platform, "auth")
    assert default.stdout.strip() == ADMIN[0]
    assert f"as {ADMIN[0]}, the first of 2 saved users" in default.stderr  # says who it acts as
    picked = bare(platform, "-u", "alice", "auth")  # -u without -p: alice's saved session
    assert picked.returncode == 0 and picked.stdout.strip() == "alice" and picked.stderr == "", picked.stderr
    switched = bare(platform, "login", "alice", "alice-password")  # the login command makes alice the default
    assert switched.returncode == 0
    assert bare(platform, "auth").stdout.strip() == "alice"


def test_an_address_without_scheme_works_and_a_wrong_one_says_why(platform: Platform) -> None:
    bare_address = platform.url.removeprefix("http://")
    plain = bare(platform, "-u", ADMIN[0], "-p", ADMIN[1], "auth", coordinator=bare_address)
    assert plain.returncode == 0 and plain.stdout.strip() == ADMIN[0], plain.stderr
    wrong_path = bare(platform, "-u", ADMIN[0], "-p", ADMIN[1], "auth", coordinator=f"{platform.url}/api")
    assert wrong_path.returncode == 1 and wrong_path.stderr.count("\n") == 1
    assert f"answered 404 Not Found: is {platform.url}/api the coordinator's address" in wrong_path.stderr
    worker = subprocess.run([sys.executable, "-m", "mito_lab", "worker", "-c", "127.0.0.1:50x0"], env=platform.env(),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert worker.returncode == 2 and worker.stderr.count("\n") == 1 and "is not a coordinator address" in worker.stderr


def coordinator_fails(tmp_path: Path, *args: str) -> str:
    """Start a coordinator that cannot start; returns its one line on stderr."""
    done = subprocess.run([sys.executable, "-m", "mito_lab", "coordinator", *args], env=isolated_env(tmp_path), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("mito: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_coordinator_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    assert "invalid bind address 'nonsense'" in coordinator_fails(tmp_path, "--bind", "nonsense")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in coordinator_fails(tmp_path, "--bind", f"127.0.0.1:{port}")
    free = free_port()
    role = coordinator_fails(tmp_path, "--bind", f"127.0.0.1:{free}", "--db", "postgres://nobody:secret@127.0.0.1:5432/test")
    assert "cannot use the database at postgresql+asyncpg://nobody:***@127.0.0.1:5432/test" in role and "secret" not in role
    assert 'role "nobody" does not exist' in role
    closed = coordinator_fails(tmp_path, "--bind", f"127.0.0.1:{free}", "--db", f"postgres://postgres@127.0.0.1:{free_port()}/test")
    assert "cannot use the database at postgresql+asyncpg://postgres@127.0.0.1:" in closed and "Connect call failed" in closed


def test_every_mode_has_a_version_and_the_help_names_every_command(tmp_path: Path) -> None:
    from mito_lab.cli.grammar import build_parser  # the grammar itself: the help's list must not drift from it
    from mito_lab.cli.main import CLIENT_COMMANDS

    for mode in ("coordinator", "worker", "client", "manager", "up"):
        shown = mito_command(tmp_path, mode, "-V")
        assert shown.returncode == 0 and shown.stdout.startswith("mito "), (mode, shown.stderr)
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)).choices
    assert set(CLIENT_COMMANDS) == set(commands)
    client_help = mito_command(tmp_path, "client", "--help").stdout
    for command in commands:
        assert re.search(rf"\b{command}\b", client_help), command
    change = mito_command(tmp_path, "client", "manage", "task", "change", "--help")
    assert change.returncode == 0 and "manage task UUID change" in change.stdout and "--priority" in change.stdout, change.stderr


def test_json_after_the_command(platform: Platform) -> None:
    after = platform.mito("get", "tasks", "--json")
    assert json.loads(after.stdout) == json.loads(platform.mito("--json", "get", "tasks").stdout)
    assert json.loads(platform.mito("auth", "--json").stdout) == ADMIN[0]
    echoed = platform.mito("submit", "--terminal", "--", "echo", "--json")  # after --, it belongs to the task
    assert echoed.returncode == 0 and "--json" not in echoed.stderr


def mito_command(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mito_lab", *args], env=isolated_env(home), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, cwd=home)


def test_output_cut_short_by_its_reader_ends_quietly_and_counts_read_as_english(platform: Platform) -> None:
    body = {"tasks": [{"task_spec": {"args": ["echo", "x" * 50]}, "labels": ["many"]} for _ in range(2000)]}
    assert platform.api("POST", "/tasks/submit", body).status == 200
    login = f"{sys.executable} -m mito_lab client -c {platform.url} -u {ADMIN[0]} -p {ADMIN[1]}"
    # far more than a pipe holds: the listing is still being written when head leaves
    cut = subprocess.run(["bash", "-o", "pipefail", "-c", f"{login} get tasks --limit 2000 | head -1"],
                         env=platform.env(), capture_output=True, text=True, timeout=120, cwd=platform.home)
    assert (cut.returncode, cut.stderr) == (0, "") and cut.stdout.startswith("UUID")
    assert platform.mito("get", "tasks", "-l", "many", "--count").stdout.strip() == "2000 tasks"
    platform.mito("submit", "-l", "one", "--", "true")
    assert platform.mito("get", "tasks", "-l", "one", "--count").stdout.strip() == "1 task"


def test_a_worker_shut_down_from_the_cli_says_so(platform: Platform) -> None:
    worker = platform.start_worker()
    [listed] = wait_until(lambda: platform.api("POST", "/workers/query", {}).json["workers"], "the worker to register")
    platform.mito("manage", "worker", listed["worker_id"], "cancel")
    assert worker.wait(60) == 0
    log = (platform.home / "worker-0.log").read_text()
    assert "was shut down, or removed after missing its heartbeats" in log and "Wrong credentials" not in log


def test_logs_of_a_task_that_printed_nothing_say_so_and_an_old_one_says_it_is_gone(sqlite_platform: Platform) -> None:
    platform = sqlite_platform
    platform.start_worker()
    quiet = re.search(r"Submitted task (\S+)", platform.mito("submit", "--", "true").stdout).group(1)  # type: ignore[union-attr]
    platform.wait_task(quiet)
    assert platform.mito("get", "logs", quiet).stdout.strip() == "(no output on stdout)"
    with contextlib.closing(sqlite3.connect(platform.home / "coordinator-data" / "mitosis.db")) as database, database:
        database.execute("UPDATE tasks SET archived_at = datetime(archived_at, '-2 hours')")
    assert platform.mito("get", "logs", quiet).stdout.strip() == "(no output kept: the task ended over an hour ago without --terminal)"
