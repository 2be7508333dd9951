"""The dashboard seen in a real browser: JupyterLab on loopback, Debian's Chromium driven by
Playwright. A notebook opens the dashboard, 2,000 tasks run while it is open, and the page must
show them: the final counts, the progress bar, a task's row found by the search, the timeline, the
durations and the workers. Screenshots are kept in ``test-artifacts/dashboard/`` at the top of the
repository (CI keeps that folder; it is ignored by git)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import Platform, login_env, require_service, start_platform
from mito_lab.testing import CHROMIUM, jupyterlab, launch_chromium, run_notebook_in_page

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "dashboard"
TASKS = 2000
CELLS = ["%load_ext mito_lab\n%mito connect", "board = %mito dashboard\nboard"]


@contextmanager
def lab_with(tmp_path: Path, cells: list[str]) -> Iterator[tuple[Platform, str]]:
    """A platform with two workers, and JupyterLab serving a notebook of ``cells``."""
    if not CHROMIUM.exists():
        require_service("Debian's Chromium is not installed (apt-get install chromium)")
    platform: Platform = start_platform(tmp_path / "platform")
    env = platform.env(**login_env(platform), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter"))
    try:
        with jupyterlab(tmp_path / "notebooks", cells, env, tmp_path / "jupyterlab.log") as url:
            for _ in range(2):
                platform.start_worker("--slots", "3")
            yield platform, url
    finally:
        platform.stop()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Platform, str]]:
    """JupyterLab serving a notebook that opens the dashboard."""
    with lab_with(tmp_path, CELLS) as served:
        yield served


@pytest.mark.timeout(300)
def test_the_dashboard_shows_two_thousand_tasks_in_chromium(lab: tuple[Platform, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    platform, url = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            run_notebook_in_page(page, url)
            board = page.locator(".mito-dash").first
            expect(board.locator(".md-live")).to_have_text("● live", timeout=90_000)

            talker = platform.api("POST", "/tasks", {"task_spec": {"args": ["seq", "1", "400"]}, "labels": ["talker"]}).json["uuid"]
            batch = [{"task_spec": {"args": ["true"]}, "labels": ["browser", f"n{index}"]} for index in range(TASKS - 1)]
            answer = platform.api("POST", "/tasks/submit", {"tasks": batch})
            assert answer.status == 200, answer.body
            last = answer.json["results"][-1]["Ok"]["uuid"]
            expect(board.locator(".md-shown")).to_have_text(f"{TASKS} tasks", timeout=30_000)  # every row, before they all ran
            page.screenshot(path=str(ARTIFACTS / "running.png"))

            finished = board.locator('.md-chip[data-state="Finished"] .md-count')
            expect(finished).to_have_text(str(TASKS), timeout=150_000)
            expect(board.locator(".md-progress-text")).to_have_text(f"{TASKS}/{TASKS} · {TASKS} done · 0 failed · 0 running · 0 waiting")
            done_share = board.locator(".md-seg-done").evaluate("bar => bar.offsetWidth / bar.parentElement.offsetWidth")
            assert done_share == pytest.approx(1.0), "the progress bar is all done"
            for state in ("Pending", "Ready", "Running", "Cancelled"):  # the whole group is counted, none left waiting
                expect(board.locator(f'.md-chip[data-state="{state}"] .md-count')).to_have_text("0")
            page.screenshot(path=str(ARTIFACTS / "finished.png"))

            board.locator(".md-search").fill(last)  # the last task submitted, found by its uuid
            row = board.locator(f'.md-row[data-uuid="{last}"]')
            expect(row.locator(".md-state")).to_have_text("Finished")
            expect(board.locator(".md-shown")).to_have_text(f"1 of {TASKS} tasks shown")
            assert row.locator('button[data-act="cancel"]').is_disabled()  # an ended task cannot be cancelled...
            assert row.locator('button[data-act="result"]').is_disabled()  # ...and `true` left no result
            row.locator('button[data-act="copy"]').click()
            expect(board.locator(".md-status")).to_contain_text(last)

            board.locator(".md-search").fill("talker")  # its output, in the log view, scrolled to the newest line
            board.locator(f'.md-row[data-uuid="{talker}"] button[data-act="logs"]').click()
            log = board.locator(".md-log-text")
            expect(log).to_contain_text("\n400")
            assert log.evaluate("view => view.scrollHeight - view.scrollTop - view.clientHeight") <= 2
            page.screenshot(path=str(ARTIFACTS / "logs.png"))

            board.locator(".md-search").fill("")
            board.locator('.md-h[data-key="id"]').click()  # sorted by number, oldest first
            expect(board.locator(".md-row").first.locator(".md-c").first).to_have_text("1")

            for tab, expected in (("timeline", re.compile(rf"^{TASKS} tasks on 2 workers")), ("durations", re.compile(rf"^run time of {TASKS} tasks")),
                                  ("workers", re.compile("busy fraction"))):
                board.locator(f'.md-tab[data-tab="{tab}"]').click()
                expect(board.locator(f'.md-pane[data-pane="{tab}"] .md-note').first).to_have_text(expected)
                page.screenshot(path=str(ARTIFACTS / f"{tab}.png"))
            expect(board.locator(".md-worker-table tr")).to_have_count(3)  # a header and the two workers
            assert page.get_by_text("IOPub message rate exceeded").count() == 0
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()


@pytest.mark.timeout(300)
def test_a_saved_notebook_opened_again_shows_snapshots_not_placeholders(tmp_path: Path) -> None:
    """Saved, its kernel shut down and opened again (a new kernel that never drew these widgets),
    the notebook shows the dashboard's last snapshot and the task's card, and none of
    JupyterLab's placeholders for widgets it cannot draw ("Loading widget...", "model not found")."""
    from playwright.sync_api import expect, sync_playwright

    cells = [*CELLS, "import mito_lab\nmito_lab.Client().submit(['true'], labels=['saved']).wait()"]
    with lab_with(tmp_path, cells) as (platform, url), sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            run_notebook_in_page(page, url)
            board = page.locator(".mito-dash").first
            expect(board.locator('.md-chip[data-state="Finished"] .md-count')).to_have_text("1", timeout=90_000)
            expect(page.locator(".jp-Cell").nth(2).get_by_text("Finished")).to_be_visible(timeout=60_000)  # the card wait() returned
            expect(page.locator(".mito-snapshot")).to_be_hidden()  # the live panel is drawn: its snapshot gives way
            page.wait_for_timeout(6_000)  # the snapshot is brought up to date once tasks are quiet for 5 s
            page.locator(".jp-Notebook").click()
            page.keyboard.press("Control+s")
            expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=10_000)
            page.get_by_role("menuitem", name="Kernel", exact=True).click()
            page.get_by_text("Shut Down Kernel", exact=True).click()
            expect(page.locator("#jp-main-statusbar").get_by_text("No Kernel")).to_be_visible(timeout=30_000)

            page.reload()
            expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
            snapshot = page.locator(".mito-snapshot")
            expect(snapshot).to_be_visible(timeout=60_000)
            expect(snapshot).to_contain_text("Finished 1")
            page.wait_for_timeout(3_000)  # time for JupyterLab to give up on the widgets
            page.screenshot(path=str(ARTIFACTS / "reopened.png"), full_page=True)
            for placeholder in ("Loading widget...", "model not found"):
                assert page.get_by_text(placeholder).filter(visible=True).count() == 0, f"{placeholder!r} is shown"
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "reopened-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
