"""The Celery peer's worker app and task, for ``celery -A celery_app worker``: benchmarks/run.py
starts that worker, gives it the broker and result backend on the command line, and sends it
``run_true`` by name. Imported only by that worker, where Celery (the ``bench`` extra) is installed."""

import workload
from celery import Celery

app = Celery("celery_app")
app.conf.broker_connection_retry_on_startup = True  # the default, said aloud: Celery 5 warns otherwise
run_true = app.task(name="run_true")(workload.run_true)
