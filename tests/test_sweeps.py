"""Papermill sweeps over the real experiment notebook on two live workers: the grid, a failing
combination (which cell, which error), results as a DataFrame, retry, cancel, and re-opening the
sweep from a new client, the CLI and the magic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from conftest import ADMIN, Platform, adopt_env, start_platform
from mito_lab import Client, MitoError
from mito_lab.sweeps import expand, record
from mito_lab.testing import wait_until

EXPERIMENT = Path(__file__).parent.parent / "notebooks" / "experiment.ipynb"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Platform, Client]]:
    """A platform with two workers (the sweep logic is the client's: one database is enough)."""
    platform = start_platform(tmp_path / "platform")
    try:
        adopt_env(platform, monkeypatch)
        monkeypatch.chdir(tmp_path)
        platform.start_worker()
        platform.start_worker()
        with Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
            yield platform, client
    finally:
        platform.stop()


def test_a_grid_sweep_with_a_failing_run(lab: tuple[Platform, Client], tmp_path: Path) -> None:
    platform, client = lab
    sweep = client.sweep(EXPERIMENT, {"lr": [0.1, 0.01], "seed": [1, 2, 3]}, name="grid", labels=["paper"])
    bar = sweep.progress()
    assert bar.bar.max == 6 and bar.bar.value < 6
    sweep.wait(timeout=240)
    wait_until(lambda: bar.bar.value == 6, "the widget to count every run (it follows the event stream)", interval=0.05)
    assert bar.bar.value == 6 and bar.bar.bar_style == "danger" and "5 succeeded · 1 failed" in bar.summary.value
    results = sweep.results()
    assert list(results[["lr", "seed"]].itertuples(index=False, name=None)) == [
        (0.1, 1), (0.1, 2), (0.1, 3), (0.01, 1), (0.01, 2), (0.01, 3)]
    assert {"run", "uuid", "state", "exit_status", "duration", "final_loss", "best_loss", "notebook", "failed_cell", "error"} <= set(results.columns)
    assert list(results["exit_status"]) == [0, 0, 1, 0, 0, 0]
    diverged = results.iloc[2]
    assert diverged["error"].startswith("FloatingPointError: training diverged") and diverged["failed_cell"] == 4
    assert pd.isna(diverged["final_loss"])
    fine = results.drop(index=2)
    assert fine["error"].isna().all() and (fine["final_loss"] < 1e-3).all()
    assert all(Path(p).is_file() for p in results["notebook"])  # the executed notebooks, the failed one too
    assert results["duration"].dtype.kind == "m" and (results["duration"] > pd.Timedelta(0)).all()
    # what each configuration cost: a kernel's start-up alone is a good fraction of a CPU second and tens of MB
    assert (results["cpu_s"] > 0.1).all() and (results["max_rss"] > 20_000_000).all()
    assert results.groupby("lr")["max_rss"].max().index.tolist() == [0.01, 0.1]
    assert list(sweep.failed()["run"]) == [2]

    # one upload for the notebook, six tasks through one batch, labelled for the sweep
    assert list(client.attachments()["key"].str.endswith("/experiment.ipynb")) == [True]
    assert len(client.tasks(labels=["paper", "mito-sweep:grid"])) == 6

    # a new client (a kernel restart) re-opens it by its label, with the same results
    with Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials") as again:
        reopened = again.sweep_by_label("mito-sweep:grid")
        assert reopened.results().drop(columns=["notebook"]).equals(results.drop(columns=["notebook"]))
        listed = again.sweeps()
        assert listed[["sweep", "notebook", "runs", "finished", "failed"]].values.tolist() == [["grid", "experiment.ipynb", 6, 6, 1]]
        with pytest.raises(MitoError, match="no sweep named 'nothing'"):
            again.sweep_by_label("nothing")

    retried = sweep.retry_failed()
    assert len(retried) == 1 and retried[0].wait(timeout=120).result.exit_status == 1  # type: ignore[union-attr]
    assert len(sweep.tasks()) == 7 and sweep.results().iloc[2]["uuid"] == str(retried[0].uuid)
    with pytest.raises(MitoError, match="already has a sweep named 'grid'"):
        client.sweep(EXPERIMENT, {"lr": [0.1]}, name="grid")


def test_cancel_a_waiting_sweep_and_the_cli(lab: tuple[Platform, Client]) -> None:
    platform, client = lab
    waiting = client.sweep(EXPERIMENT, [{"lr": 0.01, "seed": 1}, {"lr": 0.01, "seed": 2}], name="later", tags=["nobody-has-this"])
    assert waiting.counts() == {"Ready": 2}
    assert waiting.cancel() == 2
    results = waiting.wait(timeout=30).results()
    assert list(results["state"]) == ["Cancelled", "Cancelled"] and list(results["error"]) == ["UserCancellation"] * 2

    done = platform.mito("sweep", str(EXPERIMENT), "-p", "lr", "0.01", "-p", "seed", "1,2", "-n", "from-cli")
    assert done.stdout.strip() == f"Submitted sweep from-cli to group {ADMIN[0]}: 2 runs (label mito-sweep:from-cli)"
    assert list(client.sweep_by_label("from-cli").wait(timeout=120).results()["exit_status"]) == [0, 0]
    refused = platform.mito("sweep", str(EXPERIMENT), "-p", "lr", "0.1", "-p", "lr", "0.2", check=False)
    assert refused.returncode == 2 and "given twice" in refused.stderr


def test_grids_and_records_outside_a_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert expand({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert expand([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    for bad in ({"a": []}, {"a": "xy"}, [], {"a": [object()]}):
        with pytest.raises(ValueError):
            expand(bad)  # type: ignore[arg-type]
    monkeypatch.delenv("MITO_RECORD_PATH", raising=False)
    assert record("loss", 0.5) == 0.5  # outside a sweep: kept in memory, nothing written
    with pytest.raises(TypeError, match="JSON-serialisable"):
        record("model", object())
    monkeypatch.setenv("MITO_RECORD_PATH", str(tmp_path / "records.json"))
    record("accuracy", [0.9, 0.95])
    assert '"accuracy": [' in (tmp_path / "records.json").read_text()
