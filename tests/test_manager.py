"""``mito manager``: spawns, lists and stops only the workers it started."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import Platform, isolated_env


def manager(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mito_lab", "manager", *args], env=platform.env(), capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, cwd=platform.home)


def test_spawn_status_kill(platform: Platform) -> None:
    # a bystander "mito worker" this manager did not start: it must survive `manager kill`
    bystander = subprocess.Popen([sys.executable, "-m", "mito_lab", "worker", "-c", platform.url, "-u", "mitosis_admin",
                                  "-p", "mitosis_admin", "--credential-path", str(platform.home / "bystander.credentials"),
                                  "--heartbeat-interval", "2s"],
                                 env=isolated_env(platform.home / "elsewhere"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    platform.workers.append(bystander)
    try:
        spawned_and_stopped(platform, bystander)
    finally:
        manager(platform, "kill", "--force")  # whatever happened, no spawned worker outlives the test


def spawned_and_stopped(platform: Platform, bystander: subprocess.Popen[bytes]) -> None:
    spawned = manager(platform, "spawn", "2", "-c", platform.url, "-u", "mitosis_admin", "-p", "mitosis_admin",
                      "--credential-path", str(platform.home / "managed.credentials"), "--labels", "managed",
                      "--heartbeat-interval", "2s")  # both share one credential file, as spawned workers do
    assert spawned.returncode == 0, spawned.stderr
    assert "2 workers running" in spawned.stdout
    deadline = time.monotonic() + 30
    while platform.api("POST", "/workers/query", {"labels": ["managed"], "count": True}).json["count"] < 2:
        assert time.monotonic() < deadline, "the managed workers did not register"
        time.sleep(0.2)
    shown = manager(platform, "status").stdout
    assert shown.strip().endswith("Total: 2") and "--labels managed" in shown

    killed = manager(platform, "kill")
    assert killed.returncode == 0 and "Stopped 2 workers" in killed.stdout
    assert platform.api("POST", "/workers/query", {"labels": ["managed"], "count": True}).json["count"] == 0  # they unregistered
    assert manager(platform, "status").stdout.strip() == "Total: 0"
    assert bystander.poll() is None  # never killed by name


def test_spawn_reports_workers_that_exit_at_once(platform: Platform) -> None:
    try:
        failed = manager(platform, "spawn", "1", "-c", platform.url, "-u", "nobody", "-p", "wrong",
                         "--credential-path", str(platform.home / "nobody.credentials"))
        assert failed.returncode == 1 and "exited at once" in failed.stdout
        assert manager(platform, "spawn", "0").stderr.startswith("warning: nothing to spawn")
    finally:
        manager(platform, "kill", "--force")
