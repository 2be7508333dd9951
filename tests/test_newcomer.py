"""What a newcomer meets first: the saved session, the addresses they type, and one clear line
for every mistake (issue 20)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ADMIN, Platform


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
