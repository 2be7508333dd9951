"""Logging for the long-running modes: console always, a file on request (reference 8)."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from mito_lab.config import cache_dir

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(component: str, name: str, file_log: bool, log_path: Path | None, prefix: str = "") -> None:
    """Console at INFO (``MITO_LOG_LEVEL`` overrides); with ``file_log`` also a daily-rotated file
    under ``$XDG_CACHE_HOME/mitosis/<component>/``, or exactly ``log_path`` when given."""
    level = os.environ.get("MITO_LOG_LEVEL", "INFO").upper()
    formatter = logging.Formatter(prefix + FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path))
    elif file_log:
        directory = cache_dir() / component
        directory.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.TimedRotatingFileHandler(directory / f"{name}.log", when="midnight"))
    root = logging.getLogger()
    root.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("tornado.access", "sqlalchemy", "alembic", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
