"""The ``mito`` command line as people and scripts use it."""

from __future__ import annotations

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
    """The guide's commands of this slice, exactly as written there."""
    platform.start_worker("--groups", "mitosis_admin")
    platform.mito("create", "user", "-u", "test_user_name", "-p", "test_user_password")
    platform.mito("create", "group", "test_group")
    hello = submitted_uuid(platform.mito("submit", "--", "echo", "hello").stdout)
    tagged = submitted_uuid(platform.mito("submit", "-g", "test_group", "-t", "wireless,4g", "-l", "mobile,video",
                                          "-e", "TEST_KEY=1,TEST_VAL=2", "--", "echo", "hello").stdout)
    task = platform.mito("get", "task", tagged).stdout
    assert "wireless, 4g" in task and "mobile, video" in task and "test_group" in task
    spec = platform.api("GET", f"/tasks/{tagged}").json["info"]["spec"]
    assert spec["envs"] == {"TEST_KEY": "1", "TEST_VAL": "2"}
    assert tagged in platform.mito("get", "tasks", "-g", "test_group", "-l", "mobile").stdout
    platform.wait_task(hello)
    platform.mito("submit", "--", "sh", "-c", 'echo hi > "$MITO_RESULT_DIR/hi"')
    done = platform.api("POST", "/tasks/query", {"limit": 1}).json["tasks"][0]["uuid"]
    platform.wait_task(done)
    assert "Downloaded result" in platform.mito("get", "artifact", done, "result").stdout
    assert (platform.home / "result.tar.gz").stat().st_size > 0
    missing = platform.mito("get", "artifact", hello, "result", check=False)  # echo wrote no result files
    assert missing.returncode == 1 and "not found" in missing.stderr
