"""The Celery peer's app and task, for ``celery -A celery_app worker`` (benchmarks/run.py starts
that worker and gives it the broker and result backend on the command line). Imported only where
Celery is installed: it is the optional ``bench`` extra."""

import workload
from celery import Celery

app = Celery("celery_app")
app.conf.broker_connection_retry_on_startup = True  # the default, said aloud: Celery 5 warns otherwise
run_true = app.task(name="run_true")(workload.run_true)
