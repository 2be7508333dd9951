"""One task of the throughput workload: run ``true``. mito_lab's tasks run the same command;
``multiprocessing.Pool``, dask.distributed and Celery run this function, so every system in the
comparison does the same work."""

import subprocess


def run_true(_: int) -> int:
    return subprocess.run(["true"], check=False).returncode
