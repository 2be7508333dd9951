"""The example notebooks in ``notebooks/`` run top to bottom against a live local platform, as a
reader would run them after ``mito up``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import Platform, adopt_env, login_env, start_platform
from mito_lab.client.frames import MISSING

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    platform = start_platform(tmp_path / "platform")
    try:
        platform.start_worker()
        platform.start_worker()
        adopt_env(platform, monkeypatch, **login_env(platform))
        yield platform
    finally:
        platform.stop()


def run_notebook(name: str, folder: Path) -> nbformat.NotebookNode:
    """Execute a copy of ``notebooks/`` (outputs never land in the source tree); fails on any error."""
    shutil.copytree(NOTEBOOKS, folder)
    notebook = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return notebook


def results(notebook: nbformat.NotebookNode) -> list[str]:
    return [output.data.get("text/plain", "") for cell in notebook.cells for output in cell.get("outputs", [])
            if output.output_type == "execute_result"]


@pytest.mark.timeout(600)
def test_quickstart(lab: Platform, tmp_path: Path) -> None:
    shown = results(run_notebook("quickstart", tmp_path / "notebooks"))
    assert "('Finished', 0)" in shown and "'42\\n'" in shown


@pytest.mark.timeout(600)
def test_dashboard(lab: Platform, tmp_path: Path) -> None:
    notebook = run_notebook("dashboard", tmp_path / "notebooks")
    assert "(['Finished', 'Finished', 'Finished'], 3)" in results(notebook)


@pytest.mark.timeout(600)
def test_sweep(lab: Platform, tmp_path: Path) -> None:
    notebook = run_notebook("sweep", tmp_path / "notebooks")
    table = next(output.data["text/html"] for cell in notebook.cells for output in cell.get("outputs", [])
                 if output.output_type == "execute_result" and "final_loss" in output.data.get("text/html", ""))
    assert table.count("<tr>") == 6 and table.count("FloatingPointError") == 1  # six runs, one diverged
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    tables = [output.data["text/html"] for cell in notebook.cells for output in cell.get("outputs", [])
              if output.output_type == "execute_result" and "text/html" in output.data]
    costs = next(table for table in tables if "max_rss" in table and "cpu_efficiency" in table)
    assert costs.count("<tr>") == 6 and MISSING not in costs  # every run was measured
    history = next(table for table in tables if "replaces" in table)
    assert history.count("<tr>") == 7 and history.count("FloatingPointError") == 2  # six runs and a retry, which failed alike
    extended = next(table for table in tables if "cached_from" in table)
    # nine runs: the five that succeeded came from the cache; the failed one and the three new ones
    # ran (no cached_from), and the failed one failed again (no final_loss)
    assert extended.count("<tr>") == 9 and extended.count(MISSING) == 4 + 1
