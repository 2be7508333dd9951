"""The ``mito`` command line as people and scripts use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Platform, isolated_env
from test_end_to_end import submitted_uuid


def mito(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mito_lab", *args], env=isolated_env(home), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=home)


def test_help_lists_the_seed_guide_options(tmp_path: Path) -> None:
    coordinator = mito("coordinator", "--help", home=tmp_path).stdout
    for flag in ("--bind", "--config", "--db", "--s3", "--s3-access-key", "--s3-secret-key", "--redis",
                 "--redis-worker-password", "--redis-client-password", "--admin-user", "--admin-password",
                 "--access-token-private-path", "--access-token-public-path", "--access-token-expires-in",
                 "--heartbeat-timeout", "--log-path", "--file-log"):
        assert flag in coordinator
    worker = mito("worker", "--help", home=tmp_path).stdout
    for flag in ("--coordinator", "--polling-interval", "--heartbeat-interval", "--credential-path", "--user",
                 "--password", "--groups", "--tags", "--log-path", "--file-log", "--lifetime"):
        assert flag in worker
    client = mito("client", "--help", home=tmp_path).stdout
    for flag in ("--config", "--coordinator", "--credential-path", "--user", "--password"):
        assert flag in client
    submit = mito("client", "submit", "--help", home=tmp_path).stdout
    for flag in ("--group", "--tags", "--labels", "--timeout", "--priority", "--envs", "--terminal", "--watch", "[default: 10min]"):
        assert flag in submit
    create_user = mito("client", "create", "user", "--help", home=tmp_path).stdout
    assert "--username" in create_user and "--password" in create_user and "--admin" in create_user
    assert mito("--version", home=tmp_path).stdout.startswith("mito ")


def test_errors_are_one_clear_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    usage = mito("client", "submit", "-p", "high", "--", "true", home=tmp_path)
    assert usage.returncode == 2 and "invalid int value: 'high'" in usage.stderr and "Traceback" not in usage.stderr
    unreachable = mito("client", "-c", "http://127.0.0.1:9", "-u", "a", "-p", "b", "auth", home=tmp_path)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: cannot reach") and "Traceback" not in unreachable.stderr
    no_login = mito("client", "-c", "http://127.0.0.1:9", "auth", home=tmp_path)
    assert no_login.returncode == 1 and "Traceback" not in no_login.stderr
    bad_config = mito("worker", "--heartbeat-interval", "often", home=tmp_path)
    assert bad_config.returncode == 2 and "heartbeat_interval" in bad_config.stderr and "Traceback" not in bad_config.stderr


def test_credentials_file_is_reused_and_bad_passwords_refused(platform: Platform) -> None:
    assert platform.mito("auth").stdout.strip() == "mitosis_admin"
    credentials = Path(platform.env()["XDG_CONFIG_HOME"]) / "mitosis" / "credentials"
    assert credentials.read_text().startswith("mitosis_admin:")
    assert credentials.stat().st_mode & 0o777 == 0o600
    again = subprocess.run([sys.executable, "-m", "mito_lab", "client", "-c", platform.url, "auth"], env=platform.env(),
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "mitosis_admin"
    platform.add_user("dana")
    wrong = platform.mito("auth", user="dana", password="not-it", check=False)
    assert wrong.returncode == 1 and wrong.stderr.strip() == "error: Authentication error: Wrong credentials"


def test_seed_guide_examples(platform: Platform) -> None:
    """Every example command of the seed guides, exactly as written there (after `mito client`)."""
    platform.start_worker("--groups", "mitosis_admin")
    assert platform.mito("create", "user", "-u", "new_user", "-p", "new_password").returncode == 0
    platform.mito("create", "user", "-u", "test_user_name", "-p", "test_user_password")
    platform.mito("create", "group", "test_group")
    platform.mito("create", "group", "another_group")
    hello = submitted_uuid(platform.mito("submit", "--", "echo", "hello").stdout)
    tagged = submitted_uuid(platform.mito("submit", "-g", "test_group", "-t", "wireless,4g", "-l", "mobile,video",
                                          "-e", "TEST_KEY=1,TEST_VAL=2", "--", "echo", "hello").stdout)
    task = platform.mito("get", "task", tagged).stdout
    assert "wireless, 4g" in task and "mobile, video" in task and "test_group" in task
    spec = platform.api("GET", f"/tasks/{tagged}").json["info"]["spec"]
    assert spec["envs"] == {"TEST_KEY": "1", "TEST_VAL": "2"}
    assert tagged in platform.mito("get", "tasks", "-g", "test_group", "-l", "mobile").stdout
    platform.wait_task(hello)
    # as written in the guide, without -g: the user's own group, where no task has that label
    assert platform.mito("get", "tasks", "-l", "mobile").stdout.strip() == "No tasks in group mitosis_admin"

    # artifacts and attachments
    (platform.home / "local.tar.gz").write_bytes(b"not really a tarball")
    platform.mito("upload", "artifact", hello, "result", "local.tar.gz")
    assert "Downloaded result" in platform.mito("get", "artifact", hello, "result").stdout
    assert (platform.home / "result.tar.gz").read_bytes() == b"not really a tarball"
    platform.mito("upload", "attachment", "-g", "test_group", "local.tar.gz", "attachment_key")
    platform.mito("upload", "attachment", "local.tar.gz")  # the current user's group, keyed by file name
    (platform.home / "local.tar.gz").unlink()
    platform.mito("get", "attachment", "test_group", "attachment_key")
    assert (platform.home / "attachment_key").read_bytes() == b"not really a tarball"
    assert "size 20 B" in platform.mito("get", "attachment-meta", "mitosis_admin", "local.tar.gz").stdout
    assert "attachment_key" in platform.mito("get", "attachments", "-g", "test_group").stdout

    # groups and workers
    assert "test_group" in platform.mito("get", "groups").stdout
    assert "members:    mitosis_admin (Admin)" in platform.mito("get", "group", "test_group").stdout
    worker = platform.api("POST", "/workers/query", {}).json["workers"][0]["worker_id"]
    assert worker in platform.mito("get", "workers").stdout
    assert "state:      Normal" in platform.mito("get", "worker", worker).stdout
    platform.mito("manage", "worker", worker, "update-tags", "wired", "file")
    platform.mito("manage", "worker", worker, "update-roles", "test_group:admin", "another_group:write")
    roles = platform.api("GET", f"/workers/{worker}").json
    assert roles["info"]["tags"] == ["wired", "file"] and roles["groups"]["another_group"] == "Write"
    platform.mito("manage", "worker", worker, "remove-roles", "another_group")
    assert "another_group" not in platform.api("GET", f"/workers/{worker}").json["groups"]

    # tasks: change a task that has not started, then cancel one
    waiting = submitted_uuid(platform.mito("submit", "-t", "nowhere", "--", "echo", "hello").stdout)
    platform.mito("manage", "task", waiting, "change", "--terminal", "--", "echo", "world")
    changed = platform.api("GET", f"/tasks/{waiting}").json["info"]["spec"]
    assert changed["args"] == ["echo", "world"] and changed["terminal_output"] is True
    platform.mito("manage", "task", waiting, "update-labels", "relabelled")
    platform.mito("manage", "task", waiting, "cancel")
    assert platform.api("GET", f"/tasks/{waiting}").json["info"]["result"]["msg"] == "UserCancellation"
    platform.mito("manage", "group", "test_group", "update-user", "test_user_name:read")
    assert platform.api("GET", "/groups/test_group").json["users_in_group"]["test_user_name"] == "Read"

    # and the worker is stopped last, as in the guide
    platform.mito("manage", "worker", worker, "cancel")
    assert platform.api("GET", f"/workers/{worker}").status == 404
    missing = platform.mito("get", "artifact", tagged, "exec-log", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_json_output_and_offline_commands(platform: Platform) -> None:
    task = submitted_uuid(platform.mito("submit", "-l", "j", "--", "true").stdout)
    listed = json.loads(platform.mito("--json", "get", "tasks", "-l", "j").stdout)
    assert listed["count"] == 1 and listed["tasks"][0]["uuid"] == task
    assert json.loads(platform.mito("--json", "get", "groups").stdout) == {"mitosis_admin": "Admin"}
    helped = subprocess.run([sys.executable, "-m", "mito_lab", "client", "-c", "http://127.0.0.1:9", "help", "manage", "worker"],
                            env=platform.env(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert helped.returncode == 0 and "update-roles" in helped.stdout  # no login needed for help
