"""The README's first tour, run as written (``mito`` on a platform the way ``mito up`` gives one:
a coordinator and a worker of the admin's group; ``MITO_COORDINATOR`` stands for its address)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import Platform
from mito_lab.testing import wait_until

README = Path(__file__).parent.parent / "README.md"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def tour() -> list[str]:
    text = README.read_text()
    block = text[text.index("## A first tour"):]
    block = block[block.index("```sh\n") + len("```sh\n"):]
    return [line for line in block[:block.index("```")].splitlines() if line and not line.startswith("#")]


def test_the_first_tour_runs_as_written(sqlite_platform: Platform) -> None:
    platform = sqlite_platform
    platform.start_worker()
    env = platform.env(MITO_COORDINATOR=platform.url)
    mito = f"{sys.executable} -m mito_lab"
    first: str | None = None
    background = []
    try:
        for line in tour():
            command = line.split("  #")[0].replace("<UUID>", first or "<UUID>")
            command = re.sub(r"^mito ", f"{mito} ", command)
            if command.startswith(f"{mito} worker "):  # it serves until stopped
                background.append(subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, cwd=platform.home,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                continue
            done = subprocess.run(["bash", "-c", command], env=env, cwd=platform.home, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if first is None and "submit" in command:
                first = UUID.search(done.stdout).group(0)  # type: ignore[union-attr]
                platform.wait_task(first)  # the platform's worker runs it before its artifact is asked for
        assert (platform.home / "result.tar.gz").is_file()
        trained = platform.api("POST", "/tasks/query", {"group_name": "lab"}).json["tasks"]
        assert [sorted(task["labels"]) for task in trained] == [["lr=0.1", "sweep"]]
        info = platform.wait_task(trained[0]["uuid"], timeout=120)
        assert info["result"] == {"exit_status": 0, "msg": None}
        assert platform.mito("get", "logs", trained[0]["uuid"]).stdout.strip() == "training, lr=0.1"
    finally:
        for process in background:
            process.terminate()
            process.wait(timeout=30)
    wait_until(lambda: all(p.poll() is not None for p in background), "the tour's worker to stop")
