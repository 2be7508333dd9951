"""A task cannot take the worker owner's identity (SPEC section 7, containment): real workers run
real tasks that try to read the owner's password and user token from the worker (its command
line, its environment, its memory, its credentials file); with ``--task-user`` tasks run under
another account and reach none of the worker's files."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Platform, http, start_platform
from test_dispatch import submit
from test_manager import manager

OWNER = "owner"
PASSWORD = f"{OWNER}-password"  # the password conftest gives the users it creates
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")

# Everything a task can read of the worker that started it, gathered into its result.
ATTACK = r"""
{
  echo "== cmdline"; tr '\0' ' ' < /proc/$PPID/cmdline; echo
  echo "== environ"; tr '\0' '\n' < /proc/$PPID/environ
  echo "== credentials"; cat "$WORKER_CREDENTIALS"
  echo "== manager"; cat "$XDG_CACHE_HOME/mitosis/manager/workers.json"
  echo "== own environment"; env
} > "$MITO_RESULT_DIR/loot.txt" 2>&1
"""


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """One coordinator (SQLite): what a task can read of its worker does not depend on the database."""
    running = start_platform(tmp_path / "platform")
    running.add_user(OWNER)
    yield running
    running.stop()


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    """The unprivileged account the tests hand tasks (or a worker) to: switching needs root (and
    the tests start workers through setpriv)."""
    if os.geteuid() != 0:
        pytest.skip("running tasks or a worker as another account needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no `nobody` account")


def result_files(platform: Platform, task: str) -> dict[str, str]:
    info = platform.wait_task(task, user=OWNER)
    assert info["result"] == {"exit_status": 0, "msg": None}, info
    platform.mito("get", "artifact", task, "result", "-o", "result.tgz", user=OWNER)
    with tarfile.open(platform.home / "result.tgz") as tar:
        return {
            member.name.removeprefix("result/"): tar.extractfile(member).read().decode(errors="replace")  # type: ignore[union-attr]
            for member in tar.getmembers() if member.isfile()
        }


def attack(platform: Platform, credentials: Path) -> str:
    """Run ATTACK on the owner's worker (its credentials file at ``credentials``); what it read."""
    task = submit(platform, OWNER, task_spec={"args": ["sh", "-c", ATTACK], "envs": {"WORKER_CREDENTIALS": str(credentials)}})
    return result_files(platform, task)["loot.txt"]


def assert_no_owner_secrets(platform: Platform, loot: str) -> None:
    assert PASSWORD not in loot
    for token in set(JWT.findall(loot)):  # a user token is one that a user route accepts
        assert http("GET", f"{platform.url}/auth", token=token).status == 401, f"a user token leaked:\n{loot}"


def test_a_task_reads_no_password_or_user_token_of_the_worker(platform: Platform) -> None:
    # the password both as a flag and in the environment; the task runs as the worker's own account
    platform.start_worker("-p", PASSWORD, user=OWNER)
    loot = attack(platform, platform.home / "worker-0.credentials")
    assert_no_owner_secrets(platform, loot)
    assert "mito_lab worker" in loot and "-p ***" in loot  # it did read its worker's command line
    assert not (platform.home / "worker-0.credentials").exists()  # the worker saved no token


def test_a_task_of_a_managed_worker_reads_no_password(platform: Platform) -> None:
    # `mito manager` records the options of the workers it spawns, where their tasks can read them
    credentials = platform.home / "managed.credentials"
    try:
        spawned = manager(platform, "spawn", "1", "-c", platform.url, "-u", OWNER, "-p", PASSWORD, "--credential-path", str(credentials))
        assert spawned.returncode == 0, spawned.stdout + spawned.stderr
        loot = attack(platform, credentials)
        status = manager(platform, "status").stdout
    finally:
        manager(platform, "kill", "--force")
    assert_no_owner_secrets(platform, loot + status)
    assert '"***"' in loot.partition("== manager")[2] and "-p ***" in status  # it did read the manager's records


def test_the_workers_own_account_cannot_read_its_environment_or_memory(platform: Platform, nobody: pwd.struct_passwd) -> None:
    # A worker owned by an unprivileged account, whose task runs as that same account. (As root,
    # any process may read any other: CAP_SYS_PTRACE.) CAP_DAC_READ_SEARCH only lets that account
    # read this test's Python and files, which live in root's directories.
    cache = platform.home / "cache" / "mitosis"
    cache.mkdir(parents=True)
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    as_nobody = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                 "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    platform.start_worker("-p", PASSWORD, "--credential-path", str(cache / "credentials"), user=OWNER, wrapper=as_nobody)
    probe = r"""
    id -u
    tr '\0' ' ' < /proc/$PPID/cmdline; echo
    for file in environ mem maps; do
      if (exec 3< /proc/$PPID/$file) 2>/dev/null; then echo "$file: opened"; else echo "$file: refused"; fi
    done
    """
    task = submit(platform, OWNER, task_spec={"args": ["sh", "-c", f'{{ {probe} }} > "$MITO_RESULT_DIR/probe.txt" 2>&1']})
    uid, command, *opened = result_files(platform, task)["probe.txt"].splitlines()
    assert uid == str(nobody.pw_uid) and "mito_lab worker" in command  # the same account, its worker
    assert opened == ["environ: refused", "mem: refused", "maps: refused"]


@pytest.fixture
def root_only_file() -> Iterator[Path]:
    """A file that only root may read, in a directory every account can traverse."""
    descriptor, name = tempfile.mkstemp(prefix="mito-root-only-")  # mode 0600, owned by root
    os.write(descriptor, b"root's secret\n")
    os.close(descriptor)
    yield Path(name)
    os.unlink(name)


def test_tasks_run_as_the_task_user(platform: Platform, nobody: pwd.struct_passwd, root_only_file: Path) -> None:
    # the worker in root's group, as a supplementary group too (as root logins are), which its tasks must not keep
    platform.start_worker("-p", PASSWORD, "--task-user", "nobody", user=OWNER, wrapper=("setpriv", "--groups=0"))
    upload = platform.api("POST", f"/groups/{OWNER}/attachments", {"key": "input.txt", "content_length": 6}, user=OWNER).json
    assert http("PUT", upload["url"], raw=b"input\n", headers={"Content-Type": "application/octet-stream"}).status == 200
    resource = {"remote_file": {"Attachment": {"key": "input.txt"}}, "local_path": "data/input.txt"}
    script = r"""
    id -u > "$MITO_RESULT_DIR/uid"
    id -G > "$MITO_RESULT_DIR/groups"
    stat -c %u "$MITO_RESULT_DIR" "$MITO_EXEC_DIR" "$MITO_RESOURCE_DIR" "$MITO_RESOURCE_DIR/data" "$MITO_RESOURCE_DIR/data/input.txt" \
      . "${MITO_NEW_TASK%/*}" > "$MITO_RESULT_DIR/owners"
    echo "$HOME $USER" > "$MITO_RESULT_DIR/home"
    cat "$ROOT_ONLY" > "$MITO_RESULT_DIR/stolen" 2>&1 || echo refused >> "$MITO_RESULT_DIR/stolen"
    echo '{"labels": ["downstream"], "task_spec": {"args": ["true"]}}' > "$MITO_NEW_TASK"
    """
    task = submit(platform, OWNER, task_spec={"args": ["sh", "-c", script], "envs": {"ROOT_ONLY": str(root_only_file)}, "resources": [resource]})
    files = result_files(platform, task)
    assert files["uid"] == f"{nobody.pw_uid}\n"
    assert set(files["groups"].split()) == {str(gid) for gid in os.getgrouplist("nobody", nobody.pw_gid)}  # none of root's
    assert files["owners"].split() == [str(nobody.pw_uid)] * 7  # its folders (and the one its new task goes in), the fetched resource
    assert files["home"] == f"{nobody.pw_dir} nobody\n"
    assert "root's secret" not in files["stolen"] and files["stolen"].endswith("refused\n")
    query = platform.api("POST", "/tasks/query", {"labels": ["downstream"], "count": True}, user=OWNER).json
    assert query["count"] == 1  # the worker read the downstream task the account wrote
    assert_no_owner_secrets(platform, attack(platform, platform.home / "worker-0.credentials"))


def test_task_user_needs_a_known_account(platform: Platform) -> None:
    unknown = platform.start_worker("-p", PASSWORD, "--task-user", "mito-no-such-account", user=OWNER)
    assert unknown.wait(60) == 2
    log = (platform.home / "worker-0.log").read_text()
    assert "the worker must be started as root" in log if os.geteuid() != 0 else "no such account" in log
