"""Papermill sweeps over the real experiment notebook on two live workers: the grid, a failing
combination (which cell, which error), results as a DataFrame, retry, cancel, and re-opening the
sweep from a new client, the CLI and the magic."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from conftest import ADMIN, Platform, adopt_env, start_platform
from mito_lab import Client, MitoError, Sweep
from mito_lab.sweeps import expand, record

EXPERIMENT = Path(__file__).parent.parent / "notebooks" / "experiment.ipynb"
LONG_NAME = "learning-rates-by-seeds-for-the-paper"  # longer than a widget's label showed


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
    sweep = Sweep.launch(client, EXPERIMENT, {"lr": [0.1, 0.01], "seed": [1, 2, 3]}, name=LONG_NAME, labels=["paper"])
    bar = sweep.progress()
    assert sum(bar.counts().values()) == 6 and bar.counts()["Succeeded"] + bar.counts()["Failed"] < 6
    sweep.wait(timeout=240)
    # when wait() returns, its live bar shows the same final counts (no lag behind the event stream)
    assert bar.counts() == sweep.counts() == {"Succeeded": 5, "Failed": 1, "Running": 0, "Waiting": 0}
    shown = bar._bundle()
    assert shown["text/plain"] == f"sweep {LONG_NAME}: 6/6 ended · 5 succeeded · 1 failed · 0 running · 0 waiting"
    assert f">{LONG_NAME}</code>" in shown["text/html"]  # the name in full
    shares = re.findall(r'title="(\d+) (\w+)" style="width:([\d.]+)%;background:(#\w+)"', shown["text/html"])
    assert shares == [("5", "succeeded", "83.3333", "#43a047"), ("1", "failed", "16.6667", "#c62828")]  # red: the failed sixth only
    assert sweep.progress()._bundle() == shown  # a bar made now starts where the first one ended
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
    assert len(client.tasks(labels=["paper", f"mito-sweep:{LONG_NAME}"])) == 6

    # a new client (a kernel restart) re-opens it by its label, with the same results
    with Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials") as again:
        reopened = Sweep.reopen(again, f"mito-sweep:{LONG_NAME}")
        assert reopened.results().drop(columns=["notebook"]).equals(results.drop(columns=["notebook"]))
        listed = Sweep.listing(again)
        assert listed[["sweep", "notebook", "runs", "finished", "failed"]].values.tolist() == [[LONG_NAME, "experiment.ipynb", 6, 6, 1]]
        with pytest.raises(MitoError, match="no sweep named 'nothing'"):
            Sweep.reopen(again, "nothing")

    failed_uuid = results.iloc[2]["uuid"]
    retried = sweep.retry_failed(timeout="x2", priority=3)  # the sweep's timeout is 1h
    ended = retried[0].wait(timeout=120)  # type: ignore[union-attr]
    assert len(retried) == 1 and ended.result.exit_status == 1 and (ended.timeout, ended.priority) == (7200, 3)
    again = sweep.results()
    assert len(sweep.tasks()) == 7 and again.iloc[2]["uuid"] == str(retried[0].uuid) and again.iloc[2]["replaces"] == failed_uuid
    history = sweep.results(history=True)
    assert len(history) == 7 and history[history["run"] == 2]["uuid"].tolist() == [failed_uuid, str(retried[0].uuid)]
    with pytest.raises(ValueError, match="x2, x1.5"):
        sweep.retry_failed(timeout="x-1")
    with pytest.raises(MitoError, match=f"already has a sweep named '{LONG_NAME}'"):
        Sweep.launch(client, EXPERIMENT, {"lr": [0.1]}, name=LONG_NAME)


def test_cancel_a_waiting_sweep_and_the_cli(lab: tuple[Platform, Client]) -> None:
    platform, client = lab
    waiting = Sweep.launch(client, EXPERIMENT, [{"lr": 0.01, "seed": 1}, {"lr": 0.01, "seed": 2}], name="later", tags=["nobody-has-this"])
    assert waiting.counts() == {"Succeeded": 0, "Failed": 0, "Running": 0, "Waiting": 2}
    assert waiting.cancel() == 2
    results = waiting.wait(timeout=30).results()
    assert list(results["state"]) == ["Cancelled", "Cancelled"] and list(results["error"]) == ["UserCancellation"] * 2

    done = platform.mito("sweep", str(EXPERIMENT), "-p", "lr", "0.01", "-p", "seed", "1,2", "-n", "from-cli")
    assert done.stdout.strip() == f"Submitted sweep from-cli to group {ADMIN[0]}: 2 runs (label mito-sweep:from-cli)"
    assert list(Sweep.reopen(client, "from-cli").wait(timeout=120).results()["exit_status"]) == [0, 0]
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
