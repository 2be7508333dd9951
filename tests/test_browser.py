"""The dashboard seen in a real browser: JupyterLab on loopback, Debian's Chromium driven by
Playwright, ``notebooks/dashboard.ipynb`` run from the Run menu. The tasks table must render and a
task's state must change on screen. A screenshot is kept in ``test-artifacts/``."""

from __future__ import annotations

import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Platform, free_port, login_env, require_service, start_platform, stop_process
from mito_lab.testing import spawn

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


@pytest.fixture
def lab_url(tmp_path: Path) -> Iterator[str]:
    """A platform with a worker, and JupyterLab serving a copy of ``notebooks/``."""
    if not CHROMIUM.exists():
        require_service("Debian's Chromium is not installed (apt-get install chromium)")
    platform: Platform = start_platform(tmp_path / "platform")
    folder = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, folder)
    port, token = free_port(), secrets.token_hex(16)
    env = platform.env(**login_env(platform), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter"))
    lab = spawn([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                 f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False", "--allow-root"],
                tmp_path / "jupyterlab.log", env, cwd=folder)
    try:
        platform.start_worker()
        yield f"http://127.0.0.1:{port}/lab/tree/dashboard.ipynb?token={token}"
    finally:
        stop_process(lab)
        platform.stop()


@pytest.mark.timeout(300)
def test_the_dashboard_renders_and_follows_a_task_in_chromium(lab_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.monotonic() + 60
            while True:  # JupyterLab takes a moment to listen
                try:
                    page.goto(lab_url, timeout=10_000)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
            # the kernel has started and is idle (the status bar says so once it really is)
            expect(page.locator("#jp-main-statusbar").get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=120_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            expect(page.locator(".jp-CodeCell .jp-InputPrompt").first).to_have_text(re.compile(r"\[(\*|\d+)\]:"), timeout=30_000)
            board = page.locator(".widget-tab").first
            expect(board).to_be_visible(timeout=90_000)  # the dashboard's tabs rendered
            rows = board.locator(".mito-tasks")  # not the filter buttons "Ready 0", "Running 0"
            waiting = rows.get_by_text(re.compile(r"^(Ready|Running)( ·.*)?$")).first
            expect(waiting).to_be_visible(timeout=90_000)  # a task seen in a row before it ran...
            expect(board.get_by_text("Finished 4")).to_be_visible(timeout=120_000)  # ...and then Finished
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
